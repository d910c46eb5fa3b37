#!/usr/bin/env bash
# The data-plane benchmark (`make bench`): the Trellis sidecar pair against an nginx pair, an
# HAProxy pair and a direct connection, in one run, interleaved round by round. See
# docs/performance.md ("Data plane") for the method and how to read the report.
#
#   test/bench/run.sh                 # the default run: 3 rounds × 30 s, saturation, gRPC (~9 min)
#   test/bench/run.sh --quick         # a smoke run of a minute or so
#   test/bench/run.sh --profile DIR   # also CPU and heap profiles of both sidecars, into DIR
#   test/bench/run.sh -- --rounds 5 --duration 60s --note "CI idle"   # flags for the harness
#
# Needs root (network namespaces, nftables). Installs what is missing: nginx and haproxy from
# Debian (apt-get), fortio and ghz pinned from the Go module proxy into $BENCH_CACHE/bin.
# Writes test/bench/results/dataplane-<date>.{md,json} and dataplane-latest.md.
# Everything it starts is stopped by PID and every namespace and bridge removed on exit,
# also when interrupted; the whole run stops by itself (--deadline, 15 min by default).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BENCH_CACHE="${BENCH_CACHE:-$HOME/.cache/trellis/bench}"
FORTIO_VERSION="v1.68.2" # newer releases do not install here
GHZ_VERSION="v0.120.0"
GO="${GO:-go}"

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

quick=0
profile_dir=""
harness_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --profile) profile_dir="${2:?--profile needs a directory}"; shift ;;
    --) shift; harness_args+=("$@"); break ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) harness_args+=("$1") ;;
  esac
  shift
done

[ "$(id -u)" = 0 ] || die "needs root: it makes network namespaces and nftables rules (sudo make bench)"

# --- tools -------------------------------------------------------------------------------
apt_install() {
  local missing=("$@")
  log "installing from Debian: ${missing[*]}"
  # Keep the packages' services from starting on the host (a container image usually has
  # this policy already; if not, it is in place for the install only).
  local policy_added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && policy_added=1
  fi
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; then
    apt-get update >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if [ "$policy_added" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v ip >/dev/null || need+=(iproute2)
{ command -v setpriv >/dev/null && command -v taskset >/dev/null; } || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi

BIN="$BENCH_CACHE/bin"
mkdir -p "$BIN"
go_tool() { # name module version
  local name="$1" module="$2" version="$3" stamp="$BIN/.$1.version"
  if [ -x "$BIN/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ]; then return; fi
  log "installing $module@$version into $BIN"
  (cd "$BENCH_CACHE" && GOBIN="$BIN" "$GO" install "$module@$version")
  echo "$version" >"$stamp"
}
go_tool fortio fortio.org/fortio "$FORTIO_VERSION"
go_tool ghz github.com/bojand/ghz/cmd/ghz "$GHZ_VERSION"

# --- build -------------------------------------------------------------------------------
WORK="$(mktemp -d /tmp/trellis-bench-XXXXXX)"
chmod 755 "$WORK" # the sidecars run as UID 1337
CLEANUP="$WORK/cleanup.sh"
harness_pid=""
on_exit() {
  local rc=$?
  if [ -n "$harness_pid" ] && kill -0 "$harness_pid" 2>/dev/null; then
    kill -TERM "$harness_pid" 2>/dev/null || true
    wait "$harness_pid" 2>/dev/null || true
  fi
  # What the harness could not undo itself (it was killed): processes by PID, namespaces, bridge.
  if [ -s "$CLEANUP" ]; then
    log "undoing what the harness left behind"
    tac "$CLEANUP" | grep -v '^#' | while read -r line; do bash -c "$line" || true; done
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

version="$(git -C "$ROOT" describe --tags --always --dirty 2>/dev/null || echo dev)"
log "building trellis-proxy ($version) and the harness"
proxy_pkg=./cmd/trellis-proxy
if [ -n "$profile_dir" ]; then proxy_pkg=./test/bench/proxyprof; fi
(cd "$ROOT" && CGO_ENABLED=0 "$GO" build -trimpath \
  -ldflags "-s -w -X github.com/trellis-mesh/trellis/internal/version.Version=$version" \
  -o "$WORK/trellis-proxy" "$proxy_pkg")
(cd "$ROOT" && "$GO" build -o "$WORK/dataplane" ./test/bench/dataplane)

args=(run --proxy "$WORK/trellis-proxy" --fortio "$BIN/fortio" --ghz "$BIN/ghz"
  --work-dir "$WORK/run" --cleanup-script "$CLEANUP" --results "$ROOT/test/bench/results" --deadline 15m)
if [ "$quick" = 1 ]; then
  args+=(--rounds 1 --duration 3s --warmup 1s --sat-duration 2s --grpc-duration 2s)
fi
if [ -n "$profile_dir" ]; then
  mkdir -p "$profile_dir"
  args+=(--profile-dir "$(cd "$profile_dir" && pwd)")
fi
# The harness stops itself at --deadline; timeout is the backstop.
timeout --signal=TERM --kill-after=60s 17m "$WORK/dataplane" "${args[@]}" "${harness_args[@]}" &
harness_pid=$!
wait "$harness_pid"
