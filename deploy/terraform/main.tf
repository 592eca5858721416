# drawbridge on DigitalOcean: edge droplets (and a witness) in their own VPC,
# one reserved IP that the agents move between the edges, a firewall, and
# generated secrets. See README.md in this directory.

locals {
  # The agent's own ports (DESIGN.md defaults). Raft and gossip are only ever
  # reachable from inside the VPC.
  api_port    = 9000
  raft_port   = 9001
  gossip_port = 9002
  ssh_port    = 22

  # The nodes find each other at first boot by this tag (within this VPC).
  cluster_tag  = var.name
  tags         = distinct(concat([local.cluster_tag], var.tags))
  server_count = var.edge_count + (var.witness ? 1 : 0)

  # The public route range minus SSH and the agent's ports, so no route rule
  # ever opens raft or gossip to the internet, whatever range is asked for.
  route_ranges = [for r in [
    { from = var.route_port_range.from, to = min(var.route_port_range.to, local.ssh_port - 1) },
    { from = max(var.route_port_range.from, local.ssh_port + 1), to = min(var.route_port_range.to, local.api_port - 1) },
    { from = max(var.route_port_range.from, local.gossip_port + 1), to = var.route_port_range.to },
  ] : r if r.from <= r.to]

  # The agents refuse routes outside the firewall's range (and on SSH): a
  # route the firewall would drop fails at registration, not in production.
  deny_ports = concat(
    [tostring(local.ssh_port)],
    var.route_port_range.from > 1 ? ["1-${var.route_port_range.from - 1}"] : [],
    var.route_port_range.to < 65535 ? ["${var.route_port_range.to + 1}-65535"] : [],
  )

  # Template variables every node shares; each node adds its name, role and
  # floating-IP priority.
  node_common = {
    server_count     = local.server_count
    cluster_tag      = local.cluster_tag
    vpc_id           = digitalocean_vpc.this.id
    gossip_label     = var.name
    api_port         = local.api_port
    raft_port        = local.raft_port
    gossip_port      = local.gossip_port
    api_token        = random_password.api_token.result
    gossip_key       = random_id.gossip_key.b64_std
    do_token         = var.do_token
    reserved_ip      = digitalocean_reserved_ip.this.ip_address
    deny_ports       = local.deny_ports
    log_level        = var.log_level
    package_url      = var.drawbridge_package_url
    package_sha256   = var.drawbridge_package_sha256
    peers_script     = file("${path.module}/files/drawbridge-peers.py")
    firstboot_script = file("${path.module}/files/drawbridge-firstboot.sh")
  }
}

resource "digitalocean_vpc" "this" {
  name     = "${var.name}-vpc"
  region   = var.region
  ip_range = var.vpc_ip_range
}

# The API token every webhook and CLI call presents (Authorization: Bearer,
# X-Drawbridge-Token or the legacy X-Funkypenguin-Token header).
resource "random_password" "api_token" {
  length  = 48
  special = false
}

# The memberlist encryption key: 32 random bytes, base64 (what
# `drawbridge keygen` prints).
resource "random_id" "gossip_key" {
  byte_length = 32
}

# The reserved IP is created unassigned, and Terraform never assigns it: the
# edge agents do (floating_ip.provider digitalocean). At first boot the best
# healthy edge by priority (edge-1) claims it; afterwards drawbridge moves it
# to a healthy node whenever its holder fails or stops.
#
# Why not digitalocean_reserved_ip_assignment with
# lifecycle { ignore_changes = [droplet_id] }: that resource's refresh drops
# it from the state as soon as the IP sits on another droplet, so the next
# `terraform apply` would create it again, i.e. move the IP back to edge-1
# (even onto a dead edge-1) behind an innocent-looking "1 to add". And setting
# droplet_id here would make the edges' user data (which names this address)
# depend on edge-1: a cycle. With no assignment in Terraform at all there is
# nothing to ignore and nothing that can fight the agents.
resource "digitalocean_reserved_ip" "this" {
  region = var.region
}

resource "digitalocean_droplet" "edge" {
  count = var.edge_count

  name              = "${var.name}-edge-${count.index + 1}"
  region            = var.region
  size              = var.size
  image             = var.image
  vpc_uuid          = digitalocean_vpc.this.id
  ssh_keys          = var.ssh_keys
  tags              = local.tags
  graceful_shutdown = true # the agent gets SIGTERM and hands the IP over

  user_data = templatefile("${path.module}/cloud-init.yaml.tftpl", merge(local.node_common, {
    node_name = "${var.name}-edge-${count.index + 1}"
    role      = "edge"
    # Higher wins when no healthy node holds the IP: edge-1, then edge-2, ...
    priority = 100 - count.index
  }))

  lifecycle {
    # Changing any of these would replace every node at once, and with them
    # the cluster's data. Roll nodes one at a time instead:
    # terraform apply -replace='digitalocean_droplet.edge[1]' (see README.md).
    ignore_changes = [user_data, image, ssh_keys]
  }
}

resource "digitalocean_droplet" "witness" {
  count = var.witness ? 1 : 0

  name              = "${var.name}-witness"
  region            = var.region
  size              = var.witness_size
  image             = var.image
  vpc_uuid          = digitalocean_vpc.this.id
  ssh_keys          = var.ssh_keys
  tags              = local.tags
  graceful_shutdown = true

  user_data = templatefile("${path.module}/cloud-init.yaml.tftpl", merge(local.node_common, {
    node_name = "${var.name}-witness"
    role      = "witness"
    priority  = 0
  }))

  lifecycle {
    ignore_changes = [user_data, image, ssh_keys]
  }
}

resource "digitalocean_firewall" "this" {
  name        = var.name
  droplet_ids = concat(digitalocean_droplet.edge[*].id, digitalocean_droplet.witness[*].id)

  # Routes: the public port range, minus SSH and the agent's ports.
  dynamic "inbound_rule" {
    for_each = local.route_ranges
    content {
      protocol         = "tcp"
      port_range       = inbound_rule.value.from == inbound_rule.value.to ? tostring(inbound_rule.value.from) : "${inbound_rule.value.from}-${inbound_rule.value.to}"
      source_addresses = var.route_allowed_cidrs
    }
  }

  # API (webhook, REST, metrics): the allowed callers, and the other nodes,
  # which forward writes to the leader over the VPC.
  inbound_rule {
    protocol         = "tcp"
    port_range       = tostring(local.api_port)
    source_addresses = concat(var.webhook_allowed_cidrs, [digitalocean_vpc.this.ip_range])
  }

  # Raft and gossip: inside the VPC only, never from the internet.
  inbound_rule {
    protocol         = "tcp"
    port_range       = tostring(local.raft_port)
    source_addresses = [digitalocean_vpc.this.ip_range]
  }
  inbound_rule {
    protocol         = "tcp"
    port_range       = tostring(local.gossip_port)
    source_addresses = [digitalocean_vpc.this.ip_range]
  }
  inbound_rule {
    protocol         = "udp"
    port_range       = tostring(local.gossip_port)
    source_addresses = [digitalocean_vpc.this.ip_range]
  }

  dynamic "inbound_rule" {
    for_each = length(var.ssh_allowed_cidrs) > 0 ? [var.ssh_allowed_cidrs] : []
    content {
      protocol         = "tcp"
      port_range       = tostring(local.ssh_port)
      source_addresses = inbound_rule.value
    }
  }

  # Ping and path-MTU discovery.
  inbound_rule {
    protocol         = "icmp"
    source_addresses = ["0.0.0.0/0", "::/0"]
  }

  # Backends can be anywhere; the nodes also need apt and the DigitalOcean API.
  outbound_rule {
    protocol              = "tcp"
    port_range            = "1-65535"
    destination_addresses = ["0.0.0.0/0", "::/0"]
  }
  outbound_rule {
    protocol              = "udp"
    port_range            = "1-65535"
    destination_addresses = ["0.0.0.0/0", "::/0"]
  }
  outbound_rule {
    protocol              = "icmp"
    destination_addresses = ["0.0.0.0/0", "::/0"]
  }
}
