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

  # The edges find each other (and the witness) at first boot by this tag
  # (within this VPC), through the DigitalOcean API. The witness holds no
  # DigitalOcean token: Terraform gives it the edges' VPC addresses instead.
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

  # Every node's name: its identity in the cluster and in its certificate.
  edge_names = [for i in range(var.edge_count) : "${var.name}-edge-${i + 1}"]
  node_names = concat(local.edge_names, var.witness ? ["${var.name}-witness"] : [])

  # Template variables every node shares; each node adds its name, role,
  # floating-IP priority, certificate, DigitalOcean token (edges only) and
  # peers (witness only).
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
    tls_ca_cert      = tls_self_signed_cert.ca.cert_pem
    vpc_ip_range     = digitalocean_vpc.this.ip_range
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

# Cluster trust (see "Security" in the top-level README): one CA per
# cluster and one certificate per node whose common name is the node's name.
# Raft runs mutual TLS and accepts a node only under the name its certificate
# proves; a follower forwards a client's token only to the API that proves
# the leader's name. The same certificate serves the node's HTTPS API and
# names the reserved IP, so sidecars and the CLI verify it with the CA
# (terraform output -raw ca_cert). The private keys are in the Terraform
# state, beside the API token and the gossip key: keep the state private.
resource "tls_private_key" "ca" {
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_self_signed_cert" "ca" {
  private_key_pem       = tls_private_key.ca.private_key_pem
  is_ca_certificate     = true
  validity_period_hours = 5 * 365 * 24
  allowed_uses          = ["cert_signing", "crl_signing", "digital_signature"]

  subject {
    common_name  = "${var.name} drawbridge cluster CA"
    organization = "drawbridge"
  }
}

resource "tls_private_key" "node" {
  for_each    = toset(local.node_names)
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_cert_request" "node" {
  for_each        = toset(local.node_names)
  private_key_pem = tls_private_key.node[each.key].private_key_pem
  dns_names       = [each.key, "localhost"]
  ip_addresses    = ["127.0.0.1", digitalocean_reserved_ip.this.ip_address]

  subject {
    common_name  = each.key
    organization = "drawbridge"
  }
}

# Node certificates live as long as the CA: the droplets ignore later
# changes of their user data, so a renewal is a file swap on the node
# (drawbridge tls cert create; the agent reloads both TLS pairs), see README.md.
resource "tls_locally_signed_cert" "node" {
  for_each              = toset(local.node_names)
  cert_request_pem      = tls_cert_request.node[each.key].cert_request_pem
  ca_private_key_pem    = tls_private_key.ca.private_key_pem
  ca_cert_pem           = tls_self_signed_cert.ca.cert_pem
  validity_period_hours = 5 * 365 * 24
  allowed_uses          = ["digital_signature", "key_encipherment", "server_auth", "client_auth"]
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
    node_name = local.edge_names[count.index]
    role      = "edge"
    # Higher wins when no healthy node holds the IP: edge-1, then edge-2, ...
    priority = 100 - count.index
    tls_cert = tls_locally_signed_cert.node[local.edge_names[count.index]].cert_pem
    tls_key  = tls_private_key.node[local.edge_names[count.index]].private_key_pem
    # The edges move the reserved IP and find their peers with it.
    do_token = var.do_token
    peers    = []
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
    tls_cert  = tls_locally_signed_cert.node["${var.name}-witness"].cert_pem
    tls_key   = tls_private_key.node["${var.name}-witness"].private_key_pem
    # The witness never holds the reserved IP, so it gets no DigitalOcean
    # token at all: it joins the edges at the VPC addresses Terraform knows
    # once they exist (so the witness is created after the edges; the edges
    # never refer to the witness, so there is no cycle). They find it
    # through the API by the cluster's tag.
    do_token = ""
    peers    = digitalocean_droplet.edge[*].ipv4_address_private
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
