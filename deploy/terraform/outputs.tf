output "reserved_ip" {
  description = "The public IP clients and DNS point at; the agents keep it on a healthy edge node."
  value       = digitalocean_reserved_ip.this.ip_address
}

output "api_url" {
  description = "Base URL of the drawbridge API through the reserved IP, over TLS (for DRAWBRIDGE_ADDR and the CLI's --addr, with --ca-file and the ca_cert output)."
  value       = "https://${digitalocean_reserved_ip.this.ip_address}:${local.api_port}"
}

output "webhook_url" {
  description = "The recipe-compatible webhook the sidecars post to, over TLS (verify it with the ca_cert output)."
  value       = "https://${digitalocean_reserved_ip.this.ip_address}:${local.api_port}/hooks/update-haproxy"
}

output "ca_cert" {
  description = "The cluster CA certificate (PEM, public): clients verify the API with it (terraform output -raw ca_cert > drawbridge-ca.pem)."
  value       = tls_self_signed_cert.ca.cert_pem
}

output "nodes" {
  description = "Every node by name: role, public and VPC (private) IPv4 address, droplet id."
  value = {
    for d in concat(
      [for e in digitalocean_droplet.edge : { droplet = e, role = "edge" }],
      [for w in digitalocean_droplet.witness : { droplet = w, role = "witness" }],
    ) :
    d.droplet.name => {
      role       = d.role
      public_ip  = d.droplet.ipv4_address
      private_ip = d.droplet.ipv4_address_private
      droplet_id = d.droplet.id
    }
  }
}

output "edge_public_ips" {
  description = "Public IPv4 addresses of the edge nodes, in order (edge-1 first)."
  value       = digitalocean_droplet.edge[*].ipv4_address
}

output "edge_private_ips" {
  description = "VPC addresses of the edge nodes, in order (edge-1 first)."
  value       = digitalocean_droplet.edge[*].ipv4_address_private
}

output "vpc_id" {
  description = "The cluster's VPC (drawbridge-peers --vpc, to refresh a node's join list)."
  value       = digitalocean_vpc.this.id
}

output "vpc_ip_range" {
  description = "The VPC's private range; raft and gossip are open to it only."
  value       = digitalocean_vpc.this.ip_range
}

output "api_token" {
  description = "The API token (terraform output -raw api_token). Every webhook and CLI call needs it."
  value       = random_password.api_token.result
  sensitive   = true
}
