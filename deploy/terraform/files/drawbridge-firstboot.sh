#!/bin/bash
# drawbridge-firstboot: the last step of cloud-init on a drawbridge droplet.
#
#   drawbridge-firstboot --package-url URL [--package-sha256 HEX] \
#                        (--tag TAG --vpc VPC_ID --expect N | --peers IP,IP)
#
# An edge finds its peers through the DigitalOcean API (--tag, --vpc,
# --expect, with /etc/drawbridge/do-token); the witness, which holds no
# DigitalOcean token, is given them (--peers).
#
# Installs the drawbridge package (and with it the drawbridge user), hands the
# secrets cloud-init wrote to the drawbridge group, fills in this droplet's
# addresses and peers (drawbridge-peers), checks the config and starts the
# agent. Safe to run again. Prints no secret.
set -euo pipefail

package_url="" package_sha256="" tag="" vpc="" expect="" peers=""
while [ $# -gt 0 ]; do
	case "$1" in
	--package-url) package_url=$2 ;;
	--package-sha256) package_sha256=$2 ;;
	--tag) tag=$2 ;;
	--vpc) vpc=$2 ;;
	--expect) expect=$2 ;;
	--peers) peers=$2 ;;
	*)
		echo "drawbridge-firstboot: unknown argument $1" >&2
		exit 2
		;;
	esac
	shift 2
done
if [ -z "$package_url" ]; then
	echo "drawbridge-firstboot: --package-url is required" >&2
	exit 2
fi
if [ -n "$peers" ]; then
	if [ -n "$tag$vpc$expect" ]; then
		echo "drawbridge-firstboot: --peers replaces --tag, --vpc and --expect" >&2
		exit 2
	fi
elif [ -z "$tag" ] || [ -z "$vpc" ] || [ -z "$expect" ]; then
	echo "drawbridge-firstboot: --peers, or --tag, --vpc and --expect are required" >&2
	exit 2
fi

log() { echo "drawbridge-firstboot: $*" >&2; }

config=/etc/drawbridge/drawbridge.yaml
secrets=(/etc/drawbridge/token /etc/drawbridge/gossip.key /etc/drawbridge/do-token /etc/drawbridge/tls/node-key.pem)
export DEBIAN_FRONTEND=noninteractive

log "downloading the drawbridge package"
cache=/var/cache/drawbridge
install -d -m 0755 "$cache"
deb="$cache/drawbridge.deb"
curl --fail --silent --show-error --location --proto '=https' \
	--retry 10 --retry-delay 3 --retry-all-errors \
	--output "$deb.part" "$package_url"
if [ -n "$package_sha256" ]; then
	echo "$package_sha256  $deb.part" | sha256sum --check --quiet --strict -
else
	log "no --package-sha256 given: the package is not verified"
fi
mv "$deb.part" "$deb"

# --force-confold keeps the config cloud-init wrote; the package's sample
# lands beside it as drawbridge.yaml.dpkg-dist.
log "installing $(dpkg-deb --field "$deb" Package Version | tr '\n' ' ')"
apt-get install -y -q -o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-confdef "$deb"

# The agent runs its own HAProxy master; Debian's haproxy.service would only
# hold the stock config (and could hold ports routes need).
systemctl disable --now haproxy.service || true

for f in "${secrets[@]}"; do
	if [ -e "$f" ]; then
		chown root:drawbridge "$f"
		chmod 0640 "$f"
	fi
done

if [ -n "$peers" ]; then
	drawbridge-peers --config "$config" --peers "$peers"
else
	drawbridge-peers --config "$config" --token-file /etc/drawbridge/do-token \
		--tag "$tag" --vpc "$vpc" --expect "$expect"
fi

# From here on only root reaches the metadata service (its user data holds
# every secret cloud-init wrote); drawbridge-peers, above, was the last
# step that needed it, and it gave the agent its droplet id.
log "blocking the metadata service for every user but root"
systemctl daemon-reload
systemctl enable --now drawbridge-metadata-guard.service
# As the user the unit runs the agent as: every file the config names must
# be readable by it, not only by root.
runuser -u drawbridge -- drawbridge agent --check-config --config "$config"

systemctl enable drawbridge.service
systemctl restart drawbridge.service
log "drawbridge.service started; journalctl -u drawbridge -f follows it"
