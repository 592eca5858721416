variable "name" {
  type        = string
  description = "Name of this drawbridge cluster: prefix of every resource name (droplets are NAME-edge-1, NAME-edge-2, NAME-witness), the DigitalOcean tag the nodes find each other by, and the gossip label that keeps clusters apart."
  default     = "drawbridge"

  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$", var.name))
    error_message = "name must be 1-40 characters of a-z, 0-9 and '-', starting with a letter and not ending with '-'."
  }
}

variable "region" {
  type        = string
  description = "DigitalOcean region slug for every node and the reserved IP (a reserved IP only moves between droplets of its own region), e.g. fra1, ams3, nyc3."

  validation {
    condition     = can(regex("^[a-z]{3}[0-9]$", var.region))
    error_message = "region must be a DigitalOcean region slug such as fra1, ams3 or nyc3."
  }
}

variable "size" {
  type        = string
  description = "Droplet size slug of the edge nodes (they run HAProxy and carry all route traffic)."
  default     = "s-1vcpu-1gb"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]*$", var.size))
    error_message = "size must be a DigitalOcean size slug such as s-1vcpu-1gb."
  }
}

variable "witness_size" {
  type        = string
  description = "Droplet size slug of the witness, a raft voter that carries no traffic: the smallest size is enough."
  default     = "s-1vcpu-512mb-10gb"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]*$", var.witness_size))
    error_message = "witness_size must be a DigitalOcean size slug such as s-1vcpu-512mb-10gb."
  }
}

variable "image" {
  type        = string
  description = "Droplet image: a Debian slug (the nodes are set up with apt and a .deb), or the numeric id of a Debian-based snapshot."
  default     = "debian-12-x64"

  validation {
    condition     = startswith(var.image, "debian-") || can(regex("^[0-9]+$", var.image))
    error_message = "image must be a Debian image slug (debian-12-x64) or a numeric snapshot id."
  }
}

variable "edge_count" {
  type        = number
  description = "Number of edge nodes (HAProxy + agent; any of them can hold the reserved IP)."
  default     = 2

  validation {
    condition     = var.edge_count >= 2 && var.edge_count <= 5 && floor(var.edge_count) == var.edge_count
    error_message = "edge_count must be a whole number from 2 to 5."
  }
}

variable "witness" {
  type        = bool
  description = "Add a witness: a third raft voter (no HAProxy, never holds the IP) so writes stay available when one edge node of a pair dies. Without it a pair keeps serving on one node, but writes answer 503 until both are back."
  default     = true
}

variable "ssh_keys" {
  type        = list(string)
  description = "IDs or fingerprints of SSH keys already in the DigitalOcean account, installed for root on every node."

  validation {
    condition     = length(var.ssh_keys) > 0
    error_message = "ssh_keys needs at least one key: without one DigitalOcean mails a root password instead."
  }
}

variable "ssh_allowed_cidrs" {
  type        = list(string)
  description = "Source CIDRs allowed to reach SSH (22/tcp) on the nodes' public addresses. Empty closes SSH."
  default     = []

  validation {
    condition     = alltrue([for c in var.ssh_allowed_cidrs : can(cidrhost(c, 0))])
    error_message = "ssh_allowed_cidrs must hold CIDRs such as 203.0.113.7/32."
  }
}

variable "webhook_allowed_cidrs" {
  type        = list(string)
  description = "Source CIDRs allowed to call the API (webhook, REST, metrics) on port 9000: the egress addresses of the clusters whose pods register routes, and your own. The API speaks plain HTTP unless you give the nodes a certificate, so keep this list tight."

  validation {
    condition     = length(var.webhook_allowed_cidrs) > 0 && alltrue([for c in var.webhook_allowed_cidrs : can(cidrhost(c, 0))])
    error_message = "webhook_allowed_cidrs must hold at least one CIDR such as 198.51.100.0/24."
  }
}

variable "route_allowed_cidrs" {
  type        = list(string)
  description = "Source CIDRs allowed to connect to the route ports (the services drawbridge exposes). Everyone by default."
  default     = ["0.0.0.0/0", "::/0"]

  validation {
    condition     = length(var.route_allowed_cidrs) > 0 && alltrue([for c in var.route_allowed_cidrs : can(cidrhost(c, 0))])
    error_message = "route_allowed_cidrs must hold at least one CIDR."
  }
}

variable "route_port_range" {
  type = object({
    from = number
    to   = number
  })
  description = "Public TCP ports routes may use, inclusive. The firewall opens them (except 22 and the agent's own 9000-9002, which stay closed), and the agents refuse routes outside the range, so a route is never accepted that the firewall would drop."
  default = {
    from = 1024
    to   = 65535
  }

  validation {
    condition = (
      var.route_port_range.from >= 1 && var.route_port_range.to <= 65535 &&
      var.route_port_range.from <= var.route_port_range.to &&
      floor(var.route_port_range.from) == var.route_port_range.from &&
      floor(var.route_port_range.to) == var.route_port_range.to
    )
    error_message = "route_port_range must be whole ports with 1 <= from <= to <= 65535."
  }

  validation {
    condition = !(
      (var.route_port_range.from == 22 && var.route_port_range.to == 22) ||
      (var.route_port_range.from >= 9000 && var.route_port_range.to <= 9002)
    )
    error_message = "route_port_range must include a port other than 22 and 9000-9002 (SSH and the agent's API, raft and gossip ports)."
  }
}

variable "drawbridge_package_url" {
  type        = string
  description = "HTTPS URL of the drawbridge .deb for linux/amd64 (make deb builds it), downloaded by every node at first boot."

  validation {
    condition     = can(regex("^https://[^\\s]+\\.deb(\\?[^\\s]*)?$", var.drawbridge_package_url))
    error_message = "drawbridge_package_url must be an https:// URL of a .deb file."
  }
}

variable "drawbridge_package_sha256" {
  type        = string
  description = "SHA-256 of the .deb (sha256sum output, 64 hex digits). When set, a node refuses a download that does not match. Strongly recommended."
  default     = ""

  validation {
    condition     = var.drawbridge_package_sha256 == "" || can(regex("^[0-9a-f]{64}$", var.drawbridge_package_sha256))
    error_message = "drawbridge_package_sha256 must be empty or 64 lowercase hex digits."
  }
}

variable "tags" {
  type        = list(string)
  description = "Extra DigitalOcean tags for every droplet (the cluster's own tag, var.name, is always added)."
  default     = []

  validation {
    condition     = alltrue([for t in var.tags : can(regex("^[A-Za-z0-9_:-]{1,255}$", t))])
    error_message = "tags may hold letters, digits, '_', ':' and '-' only, 255 at most each."
  }
}

variable "do_token" {
  type        = string
  description = "DigitalOcean API token the edge nodes use to move the reserved IP and to find their peers at first boot. Make it a custom-scoped token with reserved_ip:update, which brings the read scopes it requires (droplet:read, reserved_ip:read, actions:read, ...). It is written to /etc/drawbridge/do-token (0640 root:drawbridge) on every edge node; the witness never receives it."
  sensitive   = true

  validation {
    condition     = length(var.do_token) >= 20 && can(regex("^[A-Za-z0-9_]+$", var.do_token))
    error_message = "do_token must be a DigitalOcean API token (letters, digits and '_', at least 20 characters)."
  }
}

variable "vpc_ip_range" {
  type        = string
  description = "Private range of the cluster's VPC (e.g. 10.118.0.0/20). Null lets DigitalOcean pick one that does not overlap your other VPCs."
  default     = null

  validation {
    condition     = var.vpc_ip_range == null || can(cidrhost(var.vpc_ip_range, 0))
    error_message = "vpc_ip_range must be null or a CIDR such as 10.118.0.0/20."
  }
}

variable "log_level" {
  type        = string
  description = "Agent log level: debug, info, warn or error."
  default     = "info"

  validation {
    condition     = contains(["debug", "info", "warn", "error"], var.log_level)
    error_message = "log_level must be debug, info, warn or error."
  }
}
