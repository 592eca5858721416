#!/usr/bin/python3
"""drawbridge-peers: fill in this droplet's cluster addresses.

Terraform cannot write the nodes' private addresses into their own user data
(DigitalOcean assigns them when the droplets are created, and each droplet
would depend on the others: a cycle). So every node finds them at first boot:

  * its own VPC address from the droplet metadata service;
  * its peers from the DigitalOcean API: the droplets carrying the cluster's
    tag in the cluster's VPC, waiting until --expect servers (itself
    included) are there, or --timeout passes;
  * or, with --peers IP,IP (the witness, which holds no DigitalOcean token),
    its peers as given: Terraform creates the witness after the edges and
    passes their VPC addresses. No token is read and the API is never asked.

It then sets, in the agent's config file:

  join              the peers' gossip addresses (VPC address:gossip port)
  raft.addr         VPC address:raft port    (raft and gossip listen on the
  gossip.addr       VPC address:gossip port   VPC only; the API on every address)
  raft.advertise, gossip.advertise, api.advertise (http(s)://VPC address:API port)

and rewrites the file atomically, keeping its mode and owner. The ports come
from the file (defaults 9000/9001/9002). Run it again (as root) after a node
was replaced to refresh the join list; the agent reads it at its next start.

The API token is read from --token-file and sent only in the Authorization
header; it never reaches stdout, stderr or a command line.
"""

import argparse
import ipaddress
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

DEFAULT_PORTS = {"api": 9000, "raft": 9001, "gossip": 9002}


class Fatal(Exception):
    """An error that waiting will not fix (bad token, bad config)."""


def log(msg):
    print("drawbridge-peers: " + msg, file=sys.stderr, flush=True)


def http_get(url, token=None, timeout=10):
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", "Bearer " + token)
    req.add_header("Accept", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read().decode("utf-8")


def listen_port(cfg, section):
    """The port of cfg[section]["addr"] (":9001", "10.0.0.2:9001", "[::]:9001")."""
    addr = str((cfg.get(section) or {}).get("addr") or "")
    if not addr:
        return DEFAULT_PORTS[section]
    port = addr.rsplit(":", 1)[-1]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise Fatal("%s.addr %r has no valid port" % (section, addr))
    return int(port)


def host_port(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def self_identity(metadata_url, deadline):
    """This droplet's id and VPC address, from the metadata service."""
    while True:
        try:
            droplet_id = int(http_get(metadata_url + "/id").strip())
            ip = http_get(metadata_url + "/interfaces/private/0/ipv4/address").strip()
            if ip:
                return droplet_id, ip
            err = "no private interface yet"
        except (OSError, ValueError) as e:
            err = str(e)
        if time.time() > deadline:
            raise Fatal("metadata service %s: %s" % (metadata_url, err))
        log("waiting for the metadata service: " + err)
        time.sleep(3)


def list_peers(api_url, token, tag, vpc, self_id):
    """VPC addresses of the other droplets with the tag in the VPC, sorted."""
    peers = set()
    url = "%s/v2/droplets?%s" % (api_url, urllib.parse.urlencode({"tag_name": tag, "per_page": 200}))
    while url:
        try:
            body = json.loads(http_get(url, token))
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise Fatal("the DigitalOcean API refused the token (HTTP %d): it needs droplet read scope" % e.code)
            raise
        for d in body.get("droplets") or []:
            if d.get("id") == self_id or d.get("vpc_uuid") != vpc:
                continue
            for n in (d.get("networks") or {}).get("v4") or []:
                if n.get("type") == "private" and n.get("ip_address"):
                    peers.add(n["ip_address"])
        url = ((body.get("links") or {}).get("pages") or {}).get("next")
    return sorted(peers)


def wait_for_peers(args, token, self_id, deadline):
    want = args.expect - 1
    peers = []
    while True:
        try:
            peers = list_peers(args.api_url, token, args.tag, args.vpc, self_id)
            if len(peers) >= want:
                return peers
            why = "found %d of %d peers" % (len(peers), want)
        except (OSError, ValueError) as e:  # network, 429, 5xx, bad JSON
            why = "DigitalOcean API: %s" % e
        if time.time() > deadline:
            log("%s after %ds; going on with %s" % (why, args.timeout, peers or "none"))
            return peers
        log("waiting: " + why)
        # Never past the deadline: --timeout is the longest this waits.
        time.sleep(max(0.0, min(5.0, deadline - time.time())))


def fill(cfg, ip, peers, droplet_id=None):
    """Set join and the addresses in cfg (a dict loaded from the YAML file),
    and the droplet id the digitalocean provider needs: the agent never asks
    the metadata service itself, which only root may reach."""
    fip = cfg.get("floating_ip") or {}
    if droplet_id is not None and fip.get("provider") == "digitalocean":
        do = fip.get("digitalocean") or {}
        do["droplet_id"] = droplet_id
        fip["digitalocean"] = do
        cfg["floating_ip"] = fip
    ports = {s: listen_port(cfg, s) for s in DEFAULT_PORTS}
    api = cfg.setdefault("api", {}) or {}
    cfg["api"] = api
    scheme = "https" if api.get("tls_cert_file") else "http"
    api["advertise"] = "%s://%s" % (scheme, host_port(ip, ports["api"]))
    for section in ("raft", "gossip"):
        sub = cfg.get(section) or {}
        cfg[section] = sub
        sub["addr"] = host_port(ip, ports[section])
        sub["advertise"] = host_port(ip, ports[section])
    cfg["join"] = [host_port(p, ports["gossip"]) for p in peers]
    return cfg


def parse_peers(value):
    """The peers of --peers: a comma-separated list of IP addresses, each
    once, normalised. Anything else (a name, a port, an empty list) is an
    error: join must hold exactly what Terraform passed."""
    peers = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            ip = str(ipaddress.ip_address(item))
        except ValueError:
            raise Fatal("--peers: %r is not an IP address" % item)
        if ip not in peers:
            peers.append(ip)
    if not peers:
        raise Fatal("--peers names no address")
    return sorted(peers)


def write_atomic(path, cfg, source):
    st = os.stat(path)
    text = (
        "# Written by drawbridge-peers: join and the VPC addresses come from the\n"
        "# droplet metadata service and %s. Run drawbridge-peers\n"
        "# again to refresh them; other keys are kept.\n" % source
        + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)
    )
    fd, tmp = tempfile.mkstemp(prefix=".drawbridge-peers.", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, st.st_mode & 0o7777)
        if os.geteuid() == 0:
            os.chown(tmp, st.st_uid, st.st_gid)
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="/etc/drawbridge/drawbridge.yaml")
    p.add_argument("--token-file", default="/etc/drawbridge/do-token")
    p.add_argument("--tag", help="the cluster's droplet tag")
    p.add_argument("--vpc", help="the cluster's VPC id")
    p.add_argument("--expect", type=int, help="servers in the cluster, this one included")
    p.add_argument("--peers", help="the peers' VPC addresses, comma-separated: no token, no API")
    p.add_argument("--timeout", type=int, default=900, help="seconds to wait for the peers")
    p.add_argument("--api-url", default="https://api.digitalocean.com")
    p.add_argument("--metadata-url", default="http://169.254.169.254/metadata/v1")
    args = p.parse_args(argv)
    if args.peers is not None and (args.tag or args.vpc or args.expect):
        p.error("--peers replaces --tag, --vpc and --expect")
    if args.peers is None and not (args.tag and args.vpc and args.expect):
        p.error("either --peers, or --tag, --vpc and --expect are required")

    try:
        given = parse_peers(args.peers) if args.peers is not None else None
        token = None
        if given is None:
            with open(args.token_file) as f:
                token = f.read().strip()
            if not token:
                raise Fatal("%s is empty" % args.token_file)
        with open(args.config) as f:
            cfg = yaml.safe_load(f) or {}
        if not isinstance(cfg, dict):
            raise Fatal("%s is not a YAML mapping" % args.config)
        deadline = time.time() + args.timeout
        self_id, ip = self_identity(args.metadata_url.rstrip("/"), deadline)
        if given is not None:
            peers = [a for a in given if a != ip]
            source = "Terraform (--peers)"
        else:
            peers = wait_for_peers(args, token, self_id, deadline)
            source = "the DigitalOcean API"
        write_atomic(args.config, fill(cfg, ip, peers, self_id), source)
    except (Fatal, OSError, yaml.YAMLError) as e:
        log("error: %s" % e)
        return 1
    log("%s: this node %s (droplet %d), join %s" % (args.config, ip, self_id, ", ".join(cfg["join"]) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
