#!/usr/bin/env bash
# Builds pinned Kubernetes components from the Go module proxy and caches them by version.
#
#   hack/k8s-binaries.sh [component ...]   (default: kube-apiserver)
#
# Prints the cache directory holding the requested binaries (plus a link to Debian's etcd),
# which is what envtest wants in KUBEBUILDER_ASSETS. Idempotent: a cached binary is never
# rebuilt. Nothing is downloaded from the internet; modules come from the Go module proxy.
#
# Components: kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.31.4}"
CACHE="${TRELLIS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trellis}"
OUT="$CACHE/k8s/$K8S_VERSION"
components=("$@")
[ ${#components[@]} -gt 0 ] || components=(kube-apiserver)

log() { printf 'k8s-binaries: %s\n' "$*" >&2; }

declare -A pkg=(
  [kube-apiserver]="k8s.io/kubernetes/cmd/kube-apiserver/app|NewAPIServerCommand()"
  [kube-controller-manager]="k8s.io/kubernetes/cmd/kube-controller-manager/app|NewControllerManagerCommand()"
  [kube-scheduler]="k8s.io/kubernetes/cmd/kube-scheduler/app|NewSchedulerCommand()"
  [kubelet]="k8s.io/kubernetes/cmd/kubelet/app|NewKubeletCommand()"
  [kube-proxy]="k8s.io/kubernetes/cmd/kube-proxy/app|NewProxyCommand()"
  [kubectl]="k8s.io/kubectl/pkg/cmd|NewDefaultKubectlCommand()"
)

missing=()
for c in "${components[@]}"; do
  [ -n "${pkg[$c]:-}" ] || { log "unknown component $c (known: ${!pkg[*]})"; exit 2; }
  [ -x "$OUT/$c" ] || missing+=("$c")
done

ensure_etcd() {
  if [ ! -x /usr/bin/etcd ]; then
    log "installing Debian's etcd-server"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null; }
  fi
  ln -sf /usr/bin/etcd "$OUT/etcd"
}

mkdir -p "$OUT"
if [ ${#missing[@]} -eq 0 ]; then
  ensure_etcd
  echo "$OUT"
  exit 0
fi

work="$CACHE/k8s/build-$K8S_VERSION"
mkdir -p "$work"
cd "$work"
log "building ${missing[*]} $K8S_VERSION from the Go module proxy in $work (minutes when cold)"

# The module: k8s.io/kubernetes plus every staging module it replaces locally, at the
# matching v0.x version.
gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
minor="v0.${K8S_VERSION#v1.}"
{
  echo "module trellis.local/k8sbuild"
  echo
  echo "go 1.22.0"
  echo
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo
  echo "replace ("
  sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$gomod" | while read -r m; do
    echo "	$m => $m $minor"
  done
  echo ")"
} > go.mod

for c in "${missing[@]}"; do
  IFS='|' read -r imp ctor <<<"${pkg[$c]}"
  mkdir -p "cmd/$c"
  if [ "$c" = kubectl ]; then
    # kubectl prints its own errors (as upstream's main does).
    cat > "cmd/$c/main.go" <<GO
package main

import (
	"os"

	"k8s.io/component-base/cli"
	app "$imp"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	if err := cli.RunNoErrOutput(app.$ctor); err != nil {
		util.CheckErr(err)
	}
	os.Exit(0)
}
GO
    continue
  fi
  cat > "cmd/$c/main.go" <<GO
package main

import (
	"os"

	"k8s.io/component-base/cli"
	app "$imp"
)

func main() {
	os.Exit(cli.Run(app.$ctor))
}
GO
done

GOFLAGS=-mod=mod go mod tidy >&2
minor_num="${K8S_VERSION#v1.}"; minor_num="${minor_num%%.*}"
ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor_num -X $p.gitTreeState=clean"
done
for c in "${missing[@]}"; do
  CGO_ENABLED=0 go build -trimpath -ldflags "$ld" -o "$OUT/$c.tmp" "./cmd/$c" >&2
  mv "$OUT/$c.tmp" "$OUT/$c"
  log "built $OUT/$c"
done
ensure_etcd
echo "$OUT"
