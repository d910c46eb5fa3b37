#!/usr/bin/env bash
# hack/e2e.sh: what `make test-e2e` runs after `make images`.
#
# Uses the cluster $KUBECONFIG reaches (unless E2E_CLUSTER=local, which `make test` sets),
# or else the project's local cluster: it starts it
# if it is down and, if this script started it, takes it down again at the end (set
# KEEP_CLUSTER=1 to keep it). Then deploys the mesh and the demo app (hack/deploy.sh) and
# runs the suite (go test -tags e2e ./test/e2e/).
set -euo pipefail
cd "$(dirname "$0")/.."
# kubectl: the pinned one hack/k8s-binaries.sh builds and caches (the cluster's own version).
PATH="$(hack/k8s-binaries.sh kubectl):$PATH"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
started=""
if [ "${E2E_CLUSTER:-current}" = current ] && [ -n "${KUBECONFIG:-}" ] && kubectl version --request-timeout=5s >/dev/null 2>&1; then
  log "e2e: using the cluster KUBECONFIG=$KUBECONFIG reaches"
else
  if ! hack/cluster.sh status >/dev/null 2>&1; then
    started=1
  fi
  hack/cluster.sh up >&2
  KUBECONFIG="$(hack/cluster.sh kubeconfig)"
  export KUBECONFIG
fi
diagnose() {
  log "e2e: failed; the cluster's state follows"
  kubectl get pods -A -o wide || true
  kubectl get events -A --sort-by=.lastTimestamp | tail -40 || true
  kubectl -n trellis-system logs deploy/trellis-controlplane --tail=80 || true
  for app in frontend backend; do
    kubectl -n shop logs -l "app=$app" -c trellis-proxy --tail=30 --prefix || true
  done
}
teardown() {
  rc=$?
  if [ "$rc" != 0 ]; then diagnose >&2; fi
  if [ -n "$started" ] && [ "${KEEP_CLUSTER:-}" != 1 ]; then
    log "e2e: taking down the cluster this run started (KEEP_CLUSTER=1 keeps it)"
    hack/cluster.sh down >&2 || rc=1
  fi
  exit "$rc"
}
trap teardown EXIT

start=$(date +%s)
hack/deploy.sh
log "e2e: deployed in $(($(date +%s) - start)) s; running the suite"
E2E_DEMO_IMAGE="${IMAGE_REGISTRY:+${IMAGE_REGISTRY%/}/}trellis/demo:$VERSION" \
  ${GO:-go} test -tags e2e -count=1 -timeout 30m -v ./test/e2e/ "$@"
