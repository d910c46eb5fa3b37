# Trellis: a sidecar service mesh for Kubernetes.
# `make help` lists the targets. The two you need: `make demo` and `make test`.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Computed once per make run (:=), so that the images, bin/mesh and the tag passed to the
# scripts agree even when a commit lands while make runs.
ifeq ($(origin VERSION),undefined)
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
endif
GO        ?= go
TOOL      := $(GO) tool -modfile=hack/tools/go.mod
LDFLAGS   := -s -w -X github.com/trellis-mesh/trellis/internal/version.Version=$(VERSION)
BINARIES  := mesh trellis-controlplane trellis-proxy
CRD_DIR   := charts/trellis/crds
RBAC_DIR  := charts/trellis/generated
# The Kubernetes version envtest's kube-apiserver is built at (see hack/k8s-binaries.sh).
K8S_VERSION ?= v1.31.4
export K8S_VERSION
# Which cluster make test-e2e uses: "current" (the one KUBECONFIG reaches, else the local
# one) or "local" (always hack/cluster.sh's; make test uses this, so it never touches a
# cluster of yours).
E2E_CLUSTER ?= current

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
lint: chart-lint ## go vet (also of the e2e suite), staticcheck and helm lint (pinned in hack/tools/go.mod).
	$(GO) vet ./...
	$(GO) vet -tags e2e ./test/e2e/
	$(TOOL) staticcheck ./...
	$(TOOL) staticcheck -tags e2e ./test/e2e/

.PHONY: chart-lint
chart-lint: ## helm lint --strict the chart (pinned helm CLI).
	$(TOOL) helm lint --strict charts/trellis

##@ Tests

.PHONY: envtest-assets
envtest-assets: ## Build (once, cached) kube-apiserver $(K8S_VERSION) and link Debian's etcd for envtest.
	@hack/k8s-binaries.sh kube-apiserver >/dev/null

.PHONY: test
test: test-unit ## Everything: unit, golden, envtest, network-namespace and (as root) the e2e suite. What CI runs.
	@if [ "$$(id -u)" != 0 ]; then \
	  echo "test: SKIPPED the e2e suite: it runs a local cluster, which needs root (run make test-e2e as root)"; \
	elif [ "$${E2E:-1}" = 0 ]; then \
	  echo "test: SKIPPED the e2e suite: E2E=0"; \
	else \
	  $(MAKE) --no-print-directory test-e2e E2E_CLUSTER=local VERSION=$(VERSION); \
	fi

.PHONY: test-unit
test-unit: envtest-assets ## Unit, golden, envtest (real kube-apiserver + etcd) and network-namespace tests; no cluster.
	$(GO) vet ./...
	KUBEBUILDER_ASSETS="$$(hack/k8s-binaries.sh kube-apiserver)" TRELLIS_REQUIRE_ENVTEST=1 \
	  TRELLIS_REQUIRE_NETNS=$$([ "$$(id -u)" = 0 ] && echo 1) $(GO) test -count=1 ./...

.PHONY: test-e2e
test-e2e: images ## End-to-end suite: real traffic on a real single-node cluster (hack/cluster.sh), chart installed by mesh install.
	VERSION=$(VERSION) E2E_CLUSTER=$(E2E_CLUSTER) hack/e2e.sh

##@ Benchmarks (not tests: nothing here asserts on time)

.PHONY: bench
bench: ## Data plane: the Trellis pair vs nginx and HAProxy pairs and a direct connection, fortio and ghz (root; ~9 min); writes test/bench/results/dataplane-*.md.
	GO=$(GO) test/bench/run.sh $(BENCH_FLAGS)

.PHONY: bench-controlplane
bench-controlplane: build envtest-assets ## Control-plane propagation at scale (envtest, 2000 simulated proxies); writes test/bench/results/controlplane-*.md.
	KUBEBUILDER_ASSETS="$$(hack/k8s-binaries.sh kube-apiserver)" \
	  $(GO) run ./test/bench/controlplane --controlplane bin/trellis-controlplane $(BENCH_CONTROLPLANE_FLAGS)

##@ Run

.PHONY: demo
demo: images ## The mesh and the demo app on the cluster KUBECONFIG reaches, else on a local one (hack/cluster.sh).
	VERSION=$(VERSION) hack/demo.sh

.PHONY: cluster-up
cluster-up: ## Start the local single-node cluster (or check it); prints its kubeconfig.
	hack/cluster.sh up

.PHONY: cluster-down
cluster-down: ## Stop the local cluster and undo everything it set up on this machine.
	hack/cluster.sh down

.PHONY: clean
clean: ## Remove build output (the Kubernetes binary cache in ~/.cache/trellis is kept).
	rm -rf bin

.PHONY: help
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} \
	  /^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)
