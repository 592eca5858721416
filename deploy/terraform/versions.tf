terraform {
  required_version = ">= 1.5.0"

  required_providers {
    digitalocean = {
      source  = "digitalocean/digitalocean"
      version = "~> 2.40"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
    tls = {
      source  = "hashicorp/tls"
      version = "~> 4.0"
    }
  }
}

# The provider reads its own token from DIGITALOCEAN_TOKEN (a token that may
# create droplets, VPCs, firewalls and reserved IPs). The nodes get a second,
# narrower token: var.do_token.
provider "digitalocean" {}
