#!/usr/bin/env bash
# Installs from Debian's packages what the full test suite needs, when any
# of it is missing. `make test` runs it; .ci/run runs it with --required.
#
#   scripts/test-deps.sh             install what is missing when root (or
#                                    with sudo); otherwise say what to install
#                                    and go on: the tests that need it skip.
#   scripts/test-deps.sh --required  fail when anything cannot be installed.
set -euo pipefail

# haproxy: the proxy under test. iproute2 (ip, tc), iptables (ebtables) and
# iputils-ping: the network-namespace lab. python3-yaml: the cloud-init peers
# script. dpkg-dev: building the .deb. shellcheck: the deploy scripts.
# systemd (systemd-analyze: checks the unit and expands its syscall groups)
# and python3-seccomp: deploy's TestAgentUnderUnit, which runs the agent
# with the unit's privileges and seccomp filters without systemd as PID 1.
PACKAGES=(haproxy iproute2 iptables iputils-ping python3 python3-yaml python3-seccomp systemd dpkg-dev shellcheck ca-certificates git make)

required=0
case "${1:-}" in
--required) required=1 ;;
"") ;;
*)
	echo "usage: $0 [--required]" >&2
	exit 2
	;;
esac

missing=()
for p in "${PACKAGES[@]}"; do
	status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	if [ "$status" != "install ok installed" ]; then
		missing+=("$p")
	fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" != 0 ]; then
	if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		SUDO="sudo"
	else
		echo "test dependencies missing: ${missing[*]}" >&2
		echo "install them with:  sudo apt-get install -y ${missing[*]}" >&2
		if [ $required = 1 ]; then exit 1; fi
		echo "going on: the tests that need them will be skipped" >&2
		exit 0
	fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "test dependencies missing and there is no apt-get: ${missing[*]}" >&2
	if [ $required = 1 ]; then exit 1; fi
	exit 0
fi

echo "installing test dependencies from Debian's packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packaged HAProxy service is not ours: the tests run their own masters.
if [[ " ${missing[*]} " == *" haproxy "* ]]; then
	$SUDO systemctl disable --now haproxy >/dev/null 2>&1 || $SUDO service haproxy stop >/dev/null 2>&1 || true
fi
