#!/usr/bin/env bash
# Regenerate the Python code of the bus contracts:
#   proto/coo/v1/*.proto  ->  services/coo/v1/*_pb2.py and *_pb2.pyi
#
# Usage (from anywhere):  bash scripts/gen_proto.sh [OUT_ROOT]
#   OUT_ROOT  directory that receives coo/v1/... (default: services; relative
#             paths are taken from the repository root). The
#             contract test passes a temporary directory to check staleness.
#   PYTHON    interpreter with grpcio-tools and mypy-protobuf
#             (default: .venv/bin/python).
#
# Uses protoc from grpcio-tools and the mypy-protobuf plugin; buf is not needed.
# Output is deterministic: the same inputs and tool versions give the same bytes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-.venv/bin/python}"
OUT_ROOT="${1:-services}"
PROTO_DIR="proto"
PKG_DIR="coo/v1"

if ! "$PYTHON" -c 'import grpc_tools.protoc, mypy_protobuf' 2>/dev/null; then
  echo "gen_proto: $PYTHON lacks grpcio-tools or mypy-protobuf; run: $PYTHON -m pip install -e '.[dev]'" >&2
  exit 1
fi

# protoc-gen-mypy sits next to the interpreter (venv bin dir).
BIN_DIR="$("$PYTHON" -c 'import os, sys; print(os.path.dirname(os.path.abspath(sys.executable)))')"
PLUGIN="$BIN_DIR/protoc-gen-mypy"
if [[ ! -x "$PLUGIN" ]]; then
  PLUGIN="$(command -v protoc-gen-mypy || true)"
fi
if [[ -z "$PLUGIN" || ! -x "$PLUGIN" ]]; then
  echo "gen_proto: protoc-gen-mypy not found (install mypy-protobuf)" >&2
  exit 1
fi

# Sorted, relative to proto/ so that imports read `coo.v1.xxx_pb2`.
mapfile -t PROTOS < <(cd "$PROTO_DIR" && LC_ALL=C find "$PKG_DIR" -maxdepth 1 -name '*.proto' -type f | LC_ALL=C sort)
if [[ ${#PROTOS[@]} -eq 0 ]]; then
  echo "gen_proto: no .proto files under $PROTO_DIR/$PKG_DIR" >&2
  exit 1
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# grpc_tools.protoc adds its bundled well-known types (google/protobuf/*.proto) to the include path.
"$PYTHON" -m grpc_tools.protoc \
  -I "$PROTO_DIR" \
  --plugin=protoc-gen-mypy="$PLUGIN" \
  --python_out="$TMP" \
  --mypy_out="$TMP" \
  --mypy_opt=quiet \
  "${PROTOS[@]}"

# Replace the generated files (and only those), so a removed .proto leaves nothing behind.
mkdir -p "$OUT_ROOT/$PKG_DIR"
find "$OUT_ROOT/$PKG_DIR" -maxdepth 1 -type f \( -name '*_pb2.py' -o -name '*_pb2.pyi' \) -delete
cp "$TMP/$PKG_DIR"/*_pb2.py "$TMP/$PKG_DIR"/*_pb2.pyi "$OUT_ROOT/$PKG_DIR/"
echo "gen_proto: generated ${#PROTOS[@]} files into $OUT_ROOT/$PKG_DIR"
