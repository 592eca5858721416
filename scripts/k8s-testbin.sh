#!/usr/bin/env bash
# Builds the kube-apiserver and etcd that the Kubernetes controller's
# integration tests run, from the Go module proxy, into a cache outside the
# repository so that every clone on this machine (and CI on it) reuses them.
#
#   scripts/k8s-testbin.sh          build what is missing, print the directory
#   scripts/k8s-testbin.sh --dir    print the directory only (builds nothing)
#
# The directory is $DRAWBRIDGE_K8S_TESTBIN when set, otherwise
# ${XDG_CACHE_HOME:-$HOME/.cache}/drawbridge/k8s-testbin/<versions>. The
# tests look in the same place (internal/k8s/k8stest). A cold build takes a
# few minutes on two cores; a cached one returns at once.
set -euo pipefail

KUBERNETES_VERSION=v1.32.13
STAGING_VERSION=v0.32.13
ETCD_VERSION=v3.5.21

dir="${DRAWBRIDGE_K8S_TESTBIN:-${XDG_CACHE_HOME:-$HOME/.cache}/drawbridge/k8s-testbin/kubernetes-${KUBERNETES_VERSION}-etcd-${ETCD_VERSION}}"

case "${1:-}" in
--dir)
	echo "$dir"
	exit 0
	;;
"") ;;
*)
	echo "usage: $0 [--dir]" >&2
	exit 2
	;;
esac

export PATH="/usr/local/go/bin:$PATH"
GO="${GO:-go}"

ok() { # binary answers --version
	[ -x "$1" ] && "$1" --version >/dev/null 2>&1
}

if ok "$dir/kube-apiserver" && ok "$dir/etcd"; then
	echo "$dir"
	exit 0
fi

mkdir -p "$dir"
# One build at a time per cache: a second caller waits, then finds it built.
exec 9>"$dir/.lock"
flock 9
if ok "$dir/kube-apiserver" && ok "$dir/etcd"; then
	echo "$dir"
	exit 0
fi

work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod
export CGO_ENABLED=0

build_etcd() {
	local m="$work/etcd"
	mkdir -p "$m"
	cat >"$m/main.go" <<'EOF'
// Command etcd is etcd's server, built for drawbridge's integration tests.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
	(
		cd "$m"
		"$GO" mod init drawbridge-testbin/etcd >/dev/null 2>&1
		"$GO" get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" >/dev/null
		"$GO" mod tidy >/dev/null
		"$GO" build -trimpath -ldflags '-s -w' -o "$dir/etcd.new" .
	)
	mv "$dir/etcd.new" "$dir/etcd"
}

build_apiserver() {
	local m="$work/apiserver"
	mkdir -p "$m"
	cat >"$m/main.go" <<'EOF'
// Command kube-apiserver pins the module graph for building Kubernetes'
// API server; the binary itself is built from k8s.io/kubernetes/cmd/kube-apiserver.
package main

import _ "k8s.io/kubernetes/cmd/kube-apiserver/app"

func main() {}
EOF
	(
		cd "$m"
		"$GO" mod init drawbridge-testbin/apiserver >/dev/null 2>&1
		# k8s.io/kubernetes requires its staging modules at v0.0.0 and
		# replaces them with local directories; a module that requires it
		# must name their published versions instead.
		"$GO" mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" >"$work/k8s.json"
		gomod=$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p' "$work/k8s.json")
		[ -f "$gomod" ] || {
			echo "k8s-testbin: no go.mod for k8s.io/kubernetes@${KUBERNETES_VERSION}" >&2
			exit 1
		}
		staging=$(awk '/^replace \(/{r=1;next} r&&/^\)/{r=0} r&&$1~/^k8s\.io\//&&$3~/^\.\/staging/{print $1}' "$gomod" | sort -u)
		[ -n "$staging" ] || {
			echo "k8s-testbin: found no staging modules in $gomod" >&2
			exit 1
		}
		{
			echo "require k8s.io/kubernetes ${KUBERNETES_VERSION}"
			for s in $staging; do echo "replace $s => $s ${STAGING_VERSION}"; done
		} >>go.mod
		"$GO" mod tidy >/dev/null
		"$GO" build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=${KUBERNETES_VERSION} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=32" -o "$dir/kube-apiserver.new" k8s.io/kubernetes/cmd/kube-apiserver
	)
	mv "$dir/kube-apiserver.new" "$dir/kube-apiserver"
}

start=$(date +%s)
if ! ok "$dir/etcd"; then
	echo "k8s-testbin: building etcd ${ETCD_VERSION} into $dir" >&2
	build_etcd
fi
if ! ok "$dir/kube-apiserver"; then
	echo "k8s-testbin: building kube-apiserver ${KUBERNETES_VERSION} into $dir (a few minutes)" >&2
	build_apiserver
fi
echo "k8s-testbin: built in $(($(date +%s) - start)) s" >&2
echo "$dir"
