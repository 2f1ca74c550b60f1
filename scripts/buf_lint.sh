#!/usr/bin/env bash
# Lint the bus contracts with buf, and check them for breaking changes.
#
# Usage (from anywhere):  bash scripts/buf_lint.sh
#   BUF_VERSION        buf release to use (default below).
#   COO_TOOLS_CACHE    where tools are cached, outside the repo
#                      (default: $HOME/.cache/coo/tools); buf lives in
#                      $COO_TOOLS_CACHE/buf-<version>/buf and is installed with
#                      `go install` only when missing.
#   COO_BUF_AGAINST    git ref to run `buf breaking` against (FILE rules), e.g.
#                      origin/main in CI. Default: HEAD, when HEAD has proto/buf.yaml
#                      (catches uncommitted breaking edits). "none" skips it.
#
# Code generation (scripts/gen_proto.sh) does not need buf.
set -euo pipefail

BUF_VERSION="${BUF_VERSION:-v1.75.0}"
CACHE="${COO_TOOLS_CACHE:-$HOME/.cache/coo/tools}"
BUF="$CACHE/buf-$BUF_VERSION/buf"

if [[ ! -x "$BUF" ]]; then
  if ! command -v go >/dev/null 2>&1; then
    echo "buf_lint: buf $BUF_VERSION is not in $CACHE and Go is not installed; install Go or put buf at $BUF" >&2
    exit 2
  fi
  echo "buf_lint: installing buf $BUF_VERSION into $BUF (go install, once)" >&2
  mkdir -p "$CACHE"
  STAGE="$(mktemp -d "$CACHE/.buf-$BUF_VERSION.XXXXXX")"
  trap 'rm -rf "$STAGE"' EXIT
  GOBIN="$STAGE" GOFLAGS="${GOFLAGS:-} -buildvcs=false" \
    go install "github.com/bufbuild/buf/cmd/buf@$BUF_VERSION"
  mkdir -p "$(dirname "$BUF")"
  mv -f "$STAGE/buf" "$BUF"   # atomic within the cache's file system
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

"$BUF" lint proto
echo "buf_lint: lint ok ($BUF_VERSION)"

AGAINST="${COO_BUF_AGAINST:-}"
if [[ -z "$AGAINST" ]]; then
  if git rev-parse --verify --quiet "HEAD:proto/buf.yaml" >/dev/null 2>&1; then
    AGAINST="HEAD"
  else
    AGAINST="none"
  fi
fi
if [[ "$AGAINST" != "none" ]]; then
  "$BUF" breaking proto --against ".git#ref=$AGAINST,subdir=proto"
  echo "buf_lint: no breaking changes against $AGAINST"
else
  echo "buf_lint: breaking check skipped (COO_BUF_AGAINST=none, or no committed proto/ to compare with)"
fi
