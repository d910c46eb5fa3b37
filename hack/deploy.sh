#!/usr/bin/env bash
# hack/deploy.sh: put the mesh and the demo app on the cluster $KUBECONFIG points at.
# Used by `make demo` and `make test-e2e`; safe to run again (it converges, it does not
# start over).
#
#   1. load the images built by `make images` (bin/images/*.tar) into the cluster:
#        the project's local cluster (hack/cluster.sh): imported into its containerd;
#        kind (TRELLIS_LOAD=kind, KIND_CLUSTER): `kind load image-archive`;
#        anything else (TRELLIS_LOAD=none): you push them yourself, to IMAGE_REGISTRY;
#   2. `bin/mesh install` the chart with those images (upgrades an existing release);
#   3. the example app (examples/shop) with its TrafficSplit, policies and MeshConfig;
#   4. wait until every Deployment is available and the smoke Job has completed.
#
# Environment:
#   KUBECONFIG        the cluster (required)
#   VERSION           the image tag (`make` passes the same one it built)
#   IMAGE_REGISTRY    registry prefix for the images, e.g. ghcr.io/me (default: none)
#   PULL_POLICY       imagePullPolicy for every image (default IfNotPresent)
#   TRELLIS_LOAD      cluster | kind | none (default: cluster when hack/cluster.sh runs
#                     the cluster KUBECONFIG points at, else none)
set -euo pipefail
cd "$(dirname "$0")/.."
# kubectl: the pinned one hack/k8s-binaries.sh builds and caches (the cluster's own version).
PATH="$(hack/k8s-binaries.sh kubectl):$PATH"

: "${KUBECONFIG:?KUBECONFIG must point at the cluster (make demo sets it)}"
: "${VERSION:?VERSION must be the image tag make images built}"
IMAGE_REGISTRY="${IMAGE_REGISTRY:-}"
PULL_POLICY="${PULL_POLICY:-IfNotPresent}"
MESH_NS=trellis-system
APP_NS=shop

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
prefix() { if [ -n "$IMAGE_REGISTRY" ]; then echo "${IMAGE_REGISTRY%/}/$1"; else echo "$1"; fi; }

if [ -z "${TRELLIS_LOAD:-}" ]; then
  TRELLIS_LOAD=none
  if hack/cluster.sh status >/dev/null 2>&1 && [ "$(realpath "$KUBECONFIG")" = "$(realpath "$(hack/cluster.sh kubeconfig)")" ]; then
    TRELLIS_LOAD=cluster
  fi
fi

for img in bin/images/controlplane.tar bin/images/proxy.tar bin/images/demo.tar; do
  [ -f "$img" ] || { echo "deploy: $img is missing: run make images first" >&2; exit 1; }
done

case "$TRELLIS_LOAD" in
  cluster) log "loading the images into the local cluster"; hack/cluster.sh load bin/images/*.tar ;;
  kind) log "loading the images into kind"; for t in bin/images/*.tar; do kind load image-archive "$t" --name "${KIND_CLUSTER:-kind}"; done ;;
  none) log "not loading images: the cluster must pull $(prefix trellis/proxy):$VERSION and the others itself" ;;
  *) echo "deploy: TRELLIS_LOAD=$TRELLIS_LOAD: want cluster, kind or none" >&2; exit 1 ;;
esac

log "installing the mesh (bin/mesh install)"
bin/mesh install --namespace "$MESH_NS" --wait --timeout 5m \
  --set "image.registry=$IMAGE_REGISTRY" \
  --set "image.tag=$VERSION" \
  --set "image.pullPolicy=$PULL_POLICY"

log "deploying the demo app (examples/shop)"
overlay="$(mktemp -d)"
trap 'rm -rf "$overlay"' EXIT
cat >"$overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- $(realpath --relative-to="$overlay" examples/shop)
images:
- name: trellis/demo
  newName: $(prefix trellis/demo)
  newTag: "$VERSION"
patches:
- target: {kind: Deployment}
  patch: '[{"op": "replace", "path": "/spec/template/spec/containers/0/imagePullPolicy", "value": "$PULL_POLICY"}]'
- target: {kind: Job}
  patch: '[{"op": "replace", "path": "/spec/template/spec/containers/0/imagePullPolicy", "value": "$PULL_POLICY"}]'
EOF
# Pods created before the injector answered (an earlier, failed run) have no sidecar:
# restart their Deployments so the webhook sees them.
uninjected="$(kubectl -n "$APP_NS" get pods -l 'app,!job-name' -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.metadata.labels.app}{" "}{.metadata.annotations.trellis\.dev/status}{"\n"}{end}' | awk 'NF==1 {print $1}' | sort -u)"
for app in $uninjected; do
  log "pods of $app have no sidecar: restarting them"
  kubectl -n "$APP_NS" rollout restart deploy -l "app=$app" >/dev/null
done
# Pods older than the mesh's CA (the mesh was uninstalled and installed again, which makes a
# new CA) trust the old root: their sidecars can reach neither the control plane nor the
# new pods. Restart them too.
ca_created="$(kubectl -n "$MESH_NS" get secret trellis-ca -o jsonpath='{.metadata.creationTimestamp}' 2>/dev/null || true)"
if [ -n "$ca_created" ]; then
  stale="$(kubectl -n "$APP_NS" get pods -l 'app,!job-name' -o jsonpath='{range .items[*]}{.metadata.labels.app}{" "}{.metadata.creationTimestamp}{"\n"}{end}' |
    awk -v ca="$ca_created" '$2 < ca {print $1}' | sort -u)"
  for app in $stale; do
    log "pods of $app predate the mesh's CA ($ca_created): restarting them"
    kubectl -n "$APP_NS" rollout restart deploy -l "app=$app" >/dev/null
  done
fi

# A Job's pod template cannot change: a new image means a new Job.
kubectl -n "$APP_NS" delete job smoke --ignore-not-found >/dev/null 2>&1 || true
kubectl apply --server-side --force-conflicts --field-manager=trellis-demo -k "$overlay" >/dev/null

log "waiting for the demo app"
for d in $(kubectl -n "$APP_NS" get deploy -o name); do
  kubectl -n "$APP_NS" rollout status "$d" --timeout=5m >/dev/null
done
kubectl -n "$APP_NS" wait --for=condition=complete job/smoke --timeout=5m >/dev/null
log "the mesh and the demo app are up"
