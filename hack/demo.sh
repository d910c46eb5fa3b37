#!/usr/bin/env bash
# hack/demo.sh: what `make demo` runs after `make images`.
#
#   1. a cluster: the one $KUBECONFIG reaches if any (kind, a real cluster), else the
#      project's local single-node cluster (hack/cluster.sh up);
#   2. the mesh and the demo app (hack/deploy.sh);
#   3. traffic from the frontend to the backend, and the proof: the pods with their
#      sidecars, the SPIFFE identities each side saw, the observed split against the
#      configured one, and what to try next.
#
# Running it again is fast and changes nothing that works.
set -euo pipefail
cd "$(dirname "$0")/.."
# kubectl: the pinned one hack/k8s-binaries.sh builds and caches (the cluster's own version).
PATH="$(hack/k8s-binaries.sh kubectl):$PATH"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
need() {
  command -v "$1" >/dev/null 2>&1 && return
  log "installing $2 (Debian package)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null
  }
}
need jq jq

if [ -n "${KUBECONFIG:-}" ] && kubectl version --request-timeout=5s >/dev/null 2>&1; then
  log "using the cluster KUBECONFIG=$KUBECONFIG reaches"
else
  log "starting the local cluster (hack/cluster.sh up)"
  hack/cluster.sh up >&2
  KUBECONFIG="$(hack/cluster.sh kubeconfig)"
  export KUBECONFIG
fi

hack/deploy.sh

# A ready frontend pod that is not on its way out (a rollout may still be removing old ones).
frontend="$(kubectl -n shop get pods -l app=frontend -o json | jq -r '[.items[]
  | select(.metadata.deletionTimestamp == null and .status.phase == "Running")
  | select(any(.status.conditions[]?; .type == "Ready" and .status == "True"))][0].metadata.name // empty')"
[ -n "$frontend" ] || { echo "demo: no ready frontend pod in namespace shop" >&2; exit 1; }
log "sending 1000 requests from the frontend to the backend Service"
result="$(kubectl -n shop exec "$frontend" -c app -- /trellis-demo get --url http://backend:8080/ --n 1000 --concurrency 4)"

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
bold "Pods in namespace shop (the sidecar, trellis-proxy, runs as a native sidecar init container):"
kubectl -n shop get pods -o custom-columns='POD:.metadata.name,STATUS:.status.phase,SIDECAR:.spec.initContainers[?(@.name=="trellis-proxy")].name,CONTAINERS:.spec.containers[*].name'

bold "Identities, proven by mTLS between the sidecars:"
echo "$result" | jq -r '"  the backend saw the caller as:        \(.peerIdentities | join(", "))",
                        "  the frontend verified the backend as: \(.upstreamIdentities | join(", "))"'

bold "TrafficSplit shop/backend-canary: configured vs observed over $(echo "$result" | jq .requests) requests:"
configured="$(kubectl -n shop get trafficsplit backend-canary -o json)"
jq -rn --argjson split "$configured" --argjson r "$result" '
  ($split.spec.backends | map(.weight) | add) as $total
  | $split.spec.backends[]
  | (.service | sub("^backend-"; "")) as $v
  | "  \(.service): configured \(100 * .weight / $total | floor)%, observed \((100 * ($r.versions[$v] // 0) / $r.requests * 10 | round) / 10)%"'
echo "$result" | jq -r '"  status codes: \(.statuses | to_entries | map("\(.key)×\(.value)") | join(", "))"'

bold "Next:"
cat <<EOF
  export KUBECONFIG=$KUBECONFIG
  export PATH=$(hack/k8s-binaries.sh kubectl):$PWD/bin:\$PATH   # kubectl $(kubectl version --client -o json | jq -r .clientVersion.gitVersion) and mesh
  kubectl -n shop exec deploy/frontend -c app -- /trellis-demo get --url http://backend:8080/ --n 200
  kubectl -n shop patch trafficsplit backend-canary --type=merge -p '{"spec":{"backends":[{"service":"backend-v1","weight":50},{"service":"backend-v2","weight":50}]}}'
  kubectl -n shop exec deploy/echo -c app -- /trellis-demo get --url http://backend:8080/ --n 5   # denied: 403
  kubectl -n trellis-system logs deploy/trellis-controlplane
  make test-e2e            # the end-to-end suite on this cluster
  hack/cluster.sh down     # remove the local cluster and everything it set up
EOF
