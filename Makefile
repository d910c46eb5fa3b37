# Trellis: a sidecar service mesh for Kubernetes.
# `make help` lists the targets. The two you need: `make demo` and `make test`.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GO        ?= go
TOOL      := $(GO) tool -modfile=hack/tools/go.mod
LDFLAGS   := -s -w -X github.com/trellis-mesh/trellis/internal/version.Version=$(VERSION)
BINARIES  := mesh trellis-controlplane trellis-proxy
CRD_DIR   := charts/trellis/crds
RBAC_DIR  := charts/trellis/generated
# The Kubernetes version envtest's kube-apiserver is built at (see hack/k8s-binaries.sh).
K8S_VERSION ?= v1.31.4
export K8S_VERSION

##@ Build

.PHONY: build
build: ## Build bin/mesh, bin/trellis-controlplane and bin/trellis-proxy (static binaries).
	@mkdir -p bin
	@for b in $(BINARIES); do \
	  CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/$$b ./cmd/$$b; \
	  echo "built bin/$$b"; \
	done

.PHONY: images
images: build ## Build the trellis/controlplane, trellis/proxy and trellis/demo images as tarballs in bin/images/, without Docker.
	@mkdir -p bin/images
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/trellis-demo ./examples/apps/demo
	$(GO) run ./hack/imagebuild --name trellis/demo:$(VERSION) --version $(VERSION) \
	  --binary bin/trellis-demo --entrypoint /trellis-demo --user 10001 --out bin/images/demo.tar
	$(GO) run ./hack/imagebuild --name trellis/controlplane:$(VERSION) --version $(VERSION) \
	  --binary bin/trellis-controlplane --user 65532 --out bin/images/controlplane.tar
	$(GO) run ./hack/imagebuild --name trellis/proxy:$(VERSION) --version $(VERSION) \
	  --binary bin/trellis-proxy --user 1337 --out bin/images/proxy.tar

.PHONY: generate
generate: ## Generate protobuf code, deepcopy code, the CRDs (into the chart) and the RBAC role from markers.
	hack/gen-proto.sh
	$(TOOL) controller-gen object:headerFile=hack/boilerplate.go.txt paths=./api/...
	$(TOOL) controller-gen crd paths=./api/... output:crd:artifacts:config=$(CRD_DIR)
	$(TOOL) controller-gen rbac:roleName=trellis-controlplane paths=./... output:rbac:artifacts:config=$(RBAC_DIR)

##@ Checks

.PHONY: verify
verify: generate ## Regenerate, tidy and format, then fail if anything changed.
	$(GO) mod tidy
	cd hack/tools && $(GO) mod tidy
	gofmt -s -w $$(git ls-files '*.go') 
	@if [ -n "$$(git status --porcelain)" ]; then \
	  echo "verify: the tree changed after generate/tidy/gofmt; commit these:"; \
	  git status --porcelain; git --no-pager diff --stat; exit 1; \
	fi
	@echo "verify: clean"

.PHONY: lint
lint: ## go vet and staticcheck (pinned in hack/tools/go.mod).
	$(GO) vet ./...
	$(TOOL) staticcheck ./...

##@ Tests

.PHONY: envtest-assets
envtest-assets: ## Build (once, cached) kube-apiserver $(K8S_VERSION) and link Debian's etcd for envtest.
	@hack/k8s-binaries.sh kube-apiserver >/dev/null

.PHONY: test
test: envtest-assets ## Unit, golden and envtest (real kube-apiserver + etcd) tests. What CI runs.
	$(GO) vet ./...
	KUBEBUILDER_ASSETS="$$(hack/k8s-binaries.sh kube-apiserver)" TRELLIS_REQUIRE_ENVTEST=1 \
	  TRELLIS_REQUIRE_NETNS=$$([ "$$(id -u)" = 0 ] && echo 1) $(GO) test -count=1 ./...

.PHONY: test-e2e
test-e2e: ## End-to-end suite on a real single-node cluster (arrives with issue 6).
	@echo "test-e2e: not built yet. It will start a local cluster (hack/cluster), install the chart,"
	@echo "deploy examples/ and assert on real traffic (issue 6)."; exit 2

##@ Benchmarks (not tests: nothing here asserts on time)

.PHONY: bench
bench: ## Data-plane benchmark against nginx, HAProxy and a direct connection (arrives with issue 7).
	@echo "bench: not built yet. It will drive fortio at a fixed rate through a Trellis sidecar pair,"
	@echo "an nginx pair, an HAProxy pair and a direct connection, and write test/bench/results/ (issue 7)."; exit 2

.PHONY: bench-controlplane
bench-controlplane: ## Control-plane propagation at scale (arrives with issue 7).
	@echo "bench-controlplane: not built yet (issue 7)."; exit 2

##@ Run

.PHONY: demo
demo: ## The mesh on a local cluster with the demo app (arrives with issue 6).
	@echo "demo: not built yet. It will start a local single-node cluster, build and load the images,"
	@echo "install the chart, deploy examples/ and show the split, identities and metrics (issue 6)."; exit 2

.PHONY: clean
clean: ## Remove build output (the Kubernetes binary cache in ~/.cache/trellis is kept).
	rm -rf bin

.PHONY: help
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} \
	  /^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)
