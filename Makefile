# drawbridge — run `make help` for the targets.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
BIN := bin/drawbridge
HAPROXY ?= haproxy

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build bin/drawbridge with the version stamped in
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/drawbridge

.PHONY: haproxy
haproxy: ## Install HAProxy from Debian's packages when it is missing (root), or say how
	@if command -v $(HAPROXY) >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing haproxy from Debian's packages"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null; \
	else \
		echo "HAProxy is not installed. Install it with:  sudo apt-get install -y haproxy"; exit 1; \
	fi

.PHONY: run
run: haproxy build ## Build and start one dev agent on 127.0.0.1:9000 (data in ./drawbridge-data)
	./$(BIN) agent --dev

.PHONY: test
test: test-deps k8s-testbin ## Vet, then run every test with the race detector (root for namespace tests)
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...

.PHONY: test-short
test-short: ## The inner loop: unit and in-process tests, no end-to-end processes (-short)
	$(GO) test -short -count=1 ./...

.PHONY: test-deps
test-deps: ## Install what the full test suite needs from Debian's packages, when missing (root)
	@scripts/test-deps.sh

.PHONY: k8s-testbin
k8s-testbin: ## Build kube-apiserver and etcd for the controller's integration tests (cached outside the repo)
	@scripts/k8s-testbin.sh >/dev/null || { \
		if [ "$$DRAWBRIDGE_TEST_FULL" = 1 ]; then exit 1; fi; \
		echo "kube-apiserver and etcd could not be built: the Kubernetes integration tests will skip"; }

.PHONY: bench
bench: build ## Run the benchmarks and print the figures
	$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 ./fsm ./haproxy ./cluster ./internal/agent
	$(GO) run ./scripts/bench -bin $(BIN)

.PHONY: bench-scale
bench-scale: haproxy build ## 1k/5k/10k routes on one node, old path beside the dynamic range (a few minutes)
	$(GO) run ./scripts/bench -bin $(BIN) -mode scale

.PHONY: bench-longlived
bench-longlived: haproxy build ## 2,000 routes, 12 changes with long-lived connections open: HAProxy processes and memory per path
	$(GO) run ./scripts/bench -bin $(BIN) -mode longlived

.PHONY: fuzz
fuzz: ## Fuzz the renderer for a minute
	$(GO) test -run '^$$' -fuzz FuzzRenderEscapes -fuzztime 60s ./haproxy

.PHONY: chaos
chaos: ## Kill the leader of a 3-node cluster under load, 10 runs, each history checked with porcupine
	DRAWBRIDGE_CHAOS_RUNS=$${DRAWBRIDGE_CHAOS_RUNS:-10} $(GO) test -count=1 -timeout 30m -run 'TestE2EClusterLeaderKillLinearizable' -v ./internal/e2e

.PHONY: lint
lint: ## gofmt, go vet and shellcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	shellcheck .ci/run $$(git ls-files '*.sh')

.PHONY: check-repo
check-repo: ## Fail on go mod tidy drift or a tracked file over 1 MB
	GO=$(GO) scripts/check-repo.sh

.PHONY: clean
clean: ## Remove build output and the dev data directory
	rm -rf bin dist drawbridge-data drawbridge-cluster

.PHONY: cluster
cluster: haproxy build ## Start three local nodes secured with a CA, node certificates and a gossip key (HTTPS API 9000/9010/9020, frontends on 127.0.1.1-3)
	./scripts/cluster.sh

.PHONY: cluster-stop
cluster-stop: ## Stop the HAProxies that `make cluster` left serving
	./scripts/cluster.sh stop

IMAGE ?= ghcr.io/drawbridge-lb/drawbridge
DOCKER ?= docker

.PHONY: image
image: ## Build the container image $(IMAGE):$(VERSION) (needs a Docker engine)
	$(DOCKER) build --build-arg VERSION=$(VERSION) -t $(IMAGE):$(VERSION) .

# Packaging: static binaries for the edge nodes, and the Debian package.
DIST ?= dist
DIST_ARCHES ?= amd64 arm64
# Edge nodes run the agent, not the Kubernetes controller (it runs in the
# cluster, from the image): without client-go the binary is a third the size.
# DIST_TAGS= builds the controller in too.
DIST_TAGS ?= nocontroller
NFPM ?= $(GO) run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2
# A Debian version starts with a digit: v1.2.3 -> 1.2.3, v1.2.3-4-gabc1234 ->
# 1.2.3.4.gabc1234 (sorts after 1.2.3), untagged abc1234-dirty ->
# 0.0.0~dev.abc1234.dirty. Override with DEB_VERSION=...
DEB_VERSION ?= $(shell echo '$(VERSION)' | sed -E 's/^v([0-9]+\.[0-9]+)/\1/; /^[0-9]+\.[0-9]+/!s/^/0.0.0~dev./; s/-/./g')

.PHONY: dist
dist: ## Build static linux/amd64 and linux/arm64 binaries into dist/
	@mkdir -p $(DIST)
	@set -e; for arch in $(DIST_ARCHES); do \
		echo "$(DIST)/drawbridge_linux_$$arch ($(VERSION))"; \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -tags '$(DIST_TAGS)' -ldflags '$(LDFLAGS)' \
			-o $(DIST)/drawbridge_linux_$$arch ./cmd/drawbridge; \
	done

.PHONY: deb
deb: dist ## Build the Debian packages into dist/ (nfpm, deploy/nfpm.yaml)
	@set -e; for arch in $(DIST_ARCHES); do \
		DRAWBRIDGE_VERSION='$(DEB_VERSION)' DRAWBRIDGE_ARCH=$$arch \
		DRAWBRIDGE_BINARY=$(DIST)/drawbridge_linux_$$arch \
		$(NFPM) pkg --packager deb --config deploy/nfpm.yaml --target $(DIST)/; \
	done

.PHONY: bench-failover
bench-failover: haproxy build ## Floating-IP outage seen by a client, unplanned and planned, beside keepalived when installed (root)
	$(GO) run ./scripts/bench-failover -bin $(BIN)
