#!/usr/bin/env bash
# Regenerates the Go code for the project's gRPC APIs (api/**/*.proto) with protoc and the
# protoc-gen-go / protoc-gen-go-grpc versions pinned in hack/tools/go.mod.
#
#   hack/gen-proto.sh
#
# The generated *.pb.go files are committed, so building Trellis never needs protoc; run this
# (or `make generate`) after changing a .proto file. Installs Debian's protobuf-compiler when
# protoc is missing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

log() { printf 'gen-proto: %s\n' "$*" >&2; }

if ! command -v protoc >/dev/null 2>&1; then
  log "protoc not found; installing Debian's protobuf-compiler"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null; }
fi

# Build the pinned plugins into a private directory so protoc finds exactly these versions.
bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
go build -modfile=hack/tools/go.mod -o "$bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
go build -modfile=hack/tools/go.mod -o "$bin/protoc-gen-go-grpc" google.golang.org/grpc/cmd/protoc-gen-go-grpc

mapfile -t protos < <(find api -name '*.proto' | sort)
[ ${#protos[@]} -gt 0 ] || { log "no .proto files under api/"; exit 0; }

PATH="$bin:$PATH" protoc \
  --proto_path=. \
  --go_out=. --go_opt=paths=source_relative \
  --go-grpc_out=. --go-grpc_opt=paths=source_relative \
  "${protos[@]}"
log "generated Go code for ${protos[*]} ($(protoc --version))"
