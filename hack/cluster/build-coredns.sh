#!/usr/bin/env bash
# Builds CoreDNS from the Go module proxy and caches it by version.
#
#   hack/cluster/build-coredns.sh      prints the path of the cached coredns binary
#
# A small module requires github.com/coredns/coredns at COREDNS_VERSION and builds its main
# package static (CGO_ENABLED=0). Idempotent: a cached binary is never rebuilt. The cluster's
# Corefile (hack/cluster.sh) uses no `forward` plugin, so the binary having one is harmless.
set -euo pipefail

COREDNS_VERSION="${COREDNS_VERSION:-v1.11.3}"
CACHE="${TRELLIS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trellis}"
OUT="$CACHE/coredns/$COREDNS_VERSION"

if [ -x "$OUT/coredns" ]; then
  echo "$OUT/coredns"
  exit 0
fi

log() { printf 'build-coredns: %s\n' "$*" >&2; }
work="$CACHE/coredns/build-$COREDNS_VERSION"
mkdir -p "$work" "$OUT"
cd "$work"
log "building CoreDNS $COREDNS_VERSION from the Go module proxy in $work (about 2 minutes when cold)"
printf 'module trellis.local/corednsbuild\n\ngo 1.22\n' > go.mod
rm -f go.sum
GOFLAGS=-mod=mod go get "github.com/coredns/coredns@$COREDNS_VERSION" >&2
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath \
  -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" \
  -o "$OUT/coredns.tmp" github.com/coredns/coredns >&2
mv "$OUT/coredns.tmp" "$OUT/coredns"
log "built $OUT/coredns"
echo "$OUT/coredns"
