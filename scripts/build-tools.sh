#!/usr/bin/env bash
# Build COO's embedded observability binaries, cached outside the repository.
#
#   scripts/build-tools.sh [otelcol|jaeger|viewer|all]
#                                                    build what is missing, print the paths
#   scripts/build-tools.sh --print-path otelcol|jaeger|viewer
#                                                    print one binary's path (building it first if needed)
#   scripts/build-tools.sh --cached-path otelcol|jaeger|viewer
#                                                    print the path only if already built; exit 3 if not
#
# Binaries:
#   otelcol  the OpenTelemetry Collector built by the OpenTelemetry Collector Builder (OCB)
#            from observability/otelcol/builder-config.yaml
#            -> $CACHE/otelcol-<sha256(builder-config.yaml + go version):12>/otelcol-coo
#   jaeger   Jaeger v2 (cmd/jaeger, an OpenTelemetry Collector distribution)
#            -> $CACHE/jaeger-<sha256(pinned module version + commit + go version):12>/jaeger
#   viewer   otel-desktop-viewer (the embedded stack's trace, log and metric UI; CGO, DuckDB)
#            -> $CACHE/viewer-<sha256(pinned module version + go version):12>/otel-desktop-viewer
# with CACHE=${COO_TOOLS_CACHE:-$HOME/.cache/coo/tools}. Go modules and build cache are
# shared under $CACHE/go, so a rebuild after a manifest change is incremental.
#
# Builds happen in a temporary directory under $CACHE and the finished binary's directory
# is renamed into place, so an interrupted build never leaves a half-written binary; a lock
# per tool keeps concurrent invocations from building the same thing twice.
# Progress goes to stderr; stdout carries only paths.
set -euo pipefail

# ---- pins -------------------------------------------------------------------------------
# OCB must be the same release as the core components in builder-config.yaml.
OCB_VERSION=v0.159.0

# Jaeger v2 lives in the module github.com/jaegertracing/jaeger, whose path has no /v2, so
# its v2.x.y tags are not valid module versions: `go install ...@v2.x.y` is rejected. Each
# v2 release commit is instead reachable as a v1 tag (v1.76.0 is the v2.13.0 release commit)
# or a pseudo-version. The Go module proxy reachable here serves none of the pseudo-versions
# of the v2.14+ release commits (403 "This module version is not available"), so we pin the
# newest release it does serve, v1.76.0 == v2.13.0 (commit 63b27e1810a7). That module's
# go.mod carries a replace directive, which `go install pkg@version` refuses, so the binary
# is built from a throw-away wrapper module that requires it (and repeats its replace).
# To move to a newer release: set JAEGER_VERSION to its pseudo-version
# (v1.76.1-0.<UTC commit time>-<12 hex>, e.g. v1.76.1-0.20260102022529-05a74f27aedb for v2.14.0)
# once the proxy serves it; from v2.14 on the go.mod has no replace and `go install` works too.
JAEGER_MODULE=github.com/jaegertracing/jaeger
JAEGER_VERSION=v1.76.0
JAEGER_RELEASE=v2.13.0
JAEGER_COMMIT=63b27e1810a710ac54dc4522da0538e540bdc545
JAEGER_COMMIT_DATE=2025-12-03T16:07:08Z
JAEGER_REPLACES=("github.com/Shopify/sarama=github.com/Shopify/sarama@v1.33.0")

# otel-desktop-viewer (Apache-2.0): a local OTLP viewer with a trace waterfall, search, logs and
# metrics, the embedded stack's browser UI. `go install ...@v0.4.1` is refused here (the proxy does not
# serve the module's version list), so it is built from a wrapper module that requires it, with CGO
# (DuckDB's prebuilt static bindings; needs a C/C++ compiler). It is a collector distribution of its
# own (collector v0.157), so it runs as its own process and our collector sends it a copy over OTLP.
VIEWER_MODULE=github.com/CtrlSpice/otel-desktop-viewer
VIEWER_VERSION=v0.4.1

# First-build times measured on a 2-core machine (both at once, on a busy machine: 14 and 11
# min), for the progress message. With warm Go caches (an edited manifest) a rebuild takes ~10 s.
OTELCOL_MINUTES="10-15"
JAEGER_MINUTES="8-12"
VIEWER_MINUTES="2-4"
# ------------------------------------------------------------------------------------------

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MANIFEST="$ROOT/observability/otelcol/builder-config.yaml"
CACHE=${COO_TOOLS_CACHE:-$HOME/.cache/coo/tools}

log() { printf '%s\n' "$*" >&2; }
die() { printf 'build-tools: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

need_go() {
    command -v go >/dev/null 2>&1 \
        || die "Go is not on PATH; install Go >= 1.24 (the Debian package golang-go, or go.dev/dl) and retry"
    GOVERSION=$(go env GOVERSION)
}

short_hash() { sha256sum | cut -c1-12; }

otelcol_dir() {
    local h
    h=$({ cat "$MANIFEST"; printf '%s\n' "$GOVERSION"; } | short_hash)
    printf '%s/otelcol-%s' "$CACHE" "$h"
}

jaeger_dir() {
    local h
    h=$(printf '%s\n' "$JAEGER_MODULE@$JAEGER_VERSION" "$JAEGER_COMMIT" "${JAEGER_REPLACES[@]}" "$GOVERSION" | short_hash)
    printf '%s/jaeger-%s' "$CACHE" "$h"
}

viewer_dir() {
    local h
    h=$(printf '%s\n' "$VIEWER_MODULE@$VIEWER_VERSION" "cgo" "$GOVERSION" | short_hash)
    printf '%s/viewer-%s' "$CACHE" "$h"
}

binary_path() {
    case $1 in
        otelcol) printf '%s/otelcol-coo' "$(otelcol_dir)" ;;
        jaeger) printf '%s/jaeger' "$(jaeger_dir)" ;;
        viewer) printf '%s/otel-desktop-viewer' "$(viewer_dir)" ;;
        *) usage ;;
    esac
}

go_env() {
    # A shared module and build cache under the tools cache: rebuilds are incremental and
    # `rm -rf $CACHE` removes everything (-modcacherw keeps the module cache deletable).
    export GOMODCACHE="$CACHE/go/mod"
    export GOCACHE="$CACHE/go/build"
    export GOFLAGS="-trimpath -p=2 -modcacherw -buildvcs=false"
    export CGO_ENABLED=0
    export GOTOOLCHAIN=local
    export GOWORK=off
}

# Temporary directories of this process, removed on any exit.
TMPDIRS=()
cleanup() { local d; for d in "${TMPDIRS[@]}"; do rm -rf "$d"; done; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# new_tmp NAME: make a temporary directory in the cache (same file system as the final place,
# so the last rename is atomic) and set TMP to it. Not via $(...): that would record the
# directory for cleanup in a subshell only.
new_tmp() {
    TMP=$(mktemp -d "$CACHE/.tmp-$1.XXXXXX")
    TMPDIRS+=("$TMP")
}

# publish STAGE FINAL: rename a complete directory into place (atomic on one file system).
publish() {
    if ! mv -T "$1" "$2" 2>/dev/null; then
        [[ -d $2 ]] || die "could not move $1 to $2"
    fi
}

# module_dir MODULE@VERSION: where `go mod download` put the module (its own go.sum is there).
module_dir() {
    go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

# finish_build STAGE FINAL START WHAT: record how STAGE was built, move it into place, say so.
finish_build() {
    cp "$1/../src/go.mod" "$1/go.mod"
    {
        echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) with $GOVERSION"
        echo "$4"
        echo "seconds: $((SECONDS - $3))"
    } >"$1/BUILD-INFO"
    publish "$1" "$2"
    log "built ${4%%:*} in $((SECONDS - $3)) s"
}

ensure_ocb() {
    OCB="$CACHE/ocb-$OCB_VERSION/builder"
    [[ -x $OCB ]] && return 0
    log "installing the OpenTelemetry Collector Builder $OCB_VERSION…"
    local t
    new_tmp ocb
    t=$TMP
    GOBIN="$t/bin" go install "go.opentelemetry.io/collector/cmd/builder@$OCB_VERSION" >&2 \
        || die "go install go.opentelemetry.io/collector/cmd/builder@$OCB_VERSION failed"
    publish "$t/bin" "$CACHE/ocb-$OCB_VERSION"
}

build_otelcol() {
    local final bin t start
    final=$(otelcol_dir)
    bin="$final/otelcol-coo"
    [[ -x $bin ]] && return 0
    ensure_ocb
    if compgen -G "$CACHE/otelcol-*/otelcol-coo" >/dev/null; then
        log "building the OpenTelemetry Collector (manifest changed; Go caches are warm, ~1 min)…"
    else
        log "building the OpenTelemetry Collector (first time, ~$OTELCOL_MINUTES min on 2 cores)…"
    fi
    log "  manifest: $MANIFEST"
    log "  into:     $final"
    start=$SECONDS
    new_tmp otelcol
    t=$TMP
    mkdir -p "$t/stage"
    cp "$MANIFEST" "$t/stage/builder-config.yaml"
    "$OCB" --config="$t/stage/builder-config.yaml" --output-path="$t/src" >"$t/ocb.log" 2>&1 || {
        tail -n 60 "$t/ocb.log" >&2
        die "the collector build failed (full log above: last 60 lines)"
    }
    [[ -x $t/src/otelcol-coo ]] || die "OCB finished but produced no $t/src/otelcol-coo"
    "$t/src/otelcol-coo" --version >/dev/null || die "the built collector does not run"
    mv "$t/src/otelcol-coo" "$t/stage/otelcol-coo"
    cp "$t/src/go.mod" "$t/stage/go.mod"
    {
        echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) with $GOVERSION and OCB $OCB_VERSION"
        echo "seconds: $((SECONDS - start))"
    } >"$t/stage/BUILD-INFO"
    publish "$t/stage" "$final"
    log "built the collector in $((SECONDS - start)) s"
}

build_jaeger() {
    local final bin t start r pkg="$JAEGER_MODULE/cmd/jaeger" vpkg="$JAEGER_MODULE/internal/version"
    final=$(jaeger_dir)
    bin="$final/jaeger"
    [[ -x $bin ]] && return 0
    log "building Jaeger $JAEGER_RELEASE ($JAEGER_MODULE@$JAEGER_VERSION, first time, ~$JAEGER_MINUTES min on 2 cores)…"
    log "  into: $final"
    start=$SECONDS
    new_tmp jaeger
    t=$TMP
    mkdir -p "$t/src" "$t/stage"
    # (explicit && chaining: errexit does not apply inside a `( ... ) || ...` list)
    (
        cd "$t/src" &&
            go mod init coo.local/jaeger-build &&
            for r in "${JAEGER_REPLACES[@]}"; do go mod edit -replace="$r" || exit 1; done &&
            go mod edit -require="$JAEGER_MODULE@$JAEGER_VERSION" &&
            jdir=$(module_dir "$JAEGER_MODULE@$JAEGER_VERSION") &&
            [[ -f $jdir/go.sum ]] &&
            # Jaeger's own go.sum (its hashes were verified when the Jaeger module was): the
            # checksum database here does not answer for every one of its dependencies.
            cp "$jdir/go.sum" go.sum &&
            go get "$pkg@$JAEGER_VERSION" &&
            go build -o "$t/stage/jaeger" \
                -ldflags "-s -w -X $vpkg.latestVersion=$JAEGER_RELEASE -X $vpkg.commitSHA=$JAEGER_COMMIT -X $vpkg.date=$JAEGER_COMMIT_DATE" \
                "$pkg"
    ) >"$t/build.log" 2>&1 || {
        tail -n 60 "$t/build.log" >&2
        die "the Jaeger build failed (last 60 lines of its log above)"
    }
    "$t/stage/jaeger" --help >/dev/null 2>&1 || die "the built jaeger does not run"
    finish_build "$t/stage" "$final" "$start" "Jaeger: $JAEGER_RELEASE = $JAEGER_MODULE@$JAEGER_VERSION ($JAEGER_COMMIT)"
}

build_viewer() {
    local final bin t start
    final=$(viewer_dir)
    bin="$final/otel-desktop-viewer"
    [[ -x $bin ]] && return 0
    command -v "${CC:-cc}" >/dev/null 2>&1 && command -v "${CXX:-c++}" >/dev/null 2>&1 \
        || die "otel-desktop-viewer needs a C and C++ compiler for CGO (Debian: apt-get install gcc g++)"
    log "building otel-desktop-viewer $VIEWER_VERSION (first time, ~$VIEWER_MINUTES min on 2 cores)…"
    log "  into: $final"
    start=$SECONDS
    new_tmp viewer
    t=$TMP
    mkdir -p "$t/src" "$t/stage"
    (
        export CGO_ENABLED=1 &&
            cd "$t/src" &&
            go mod init coo.local/otel-desktop-viewer-build &&
            go mod edit -require="$VIEWER_MODULE@$VIEWER_VERSION" &&
            vdir=$(module_dir "$VIEWER_MODULE@$VIEWER_VERSION") &&
            [[ -f $vdir/go.sum ]] &&
            cp "$vdir/go.sum" go.sum &&
            go get "$VIEWER_MODULE@$VIEWER_VERSION" &&
            go build -o "$t/stage/otel-desktop-viewer" -ldflags "-s -w -X main.version=${VIEWER_VERSION#v}" \
                "$VIEWER_MODULE"
    ) >"$t/build.log" 2>&1 || {
        tail -n 60 "$t/build.log" >&2
        die "the otel-desktop-viewer build failed (last 60 lines of its log above)"
    }
    "$t/stage/otel-desktop-viewer" --version >/dev/null 2>&1 || die "the built otel-desktop-viewer does not run"
    finish_build "$t/stage" "$final" "$start" "otel-desktop-viewer: $VIEWER_MODULE@$VIEWER_VERSION"
}

# ensure TOOL: build if missing, under a per-tool lock (a second caller waits, then finds it).
ensure() {
    local tool=$1 bin
    bin=$(binary_path "$tool")
    [[ -x $bin ]] && return 0
    mkdir -p "$CACHE"
    go_env
    exec {lockfd}>"$CACHE/.lock-$tool"
    if ! flock -n "$lockfd"; then
        log "another build of $tool is under way; waiting for it…"
        flock "$lockfd"
    fi
    if [[ ! -x $bin ]]; then
        # Leftovers of a build that was killed (the lock is ours, so nobody is using them).
        rm -rf "$CACHE"/.tmp-"$tool".* 2>/dev/null || true
        "build_$tool"
    fi
    flock -u "$lockfd"
    exec {lockfd}>&-
}

main() {
    local mode=build tools=()
    case ${1:-all} in
        -h | --help) usage ;;
        --print-path) mode=print; shift; [[ $# -eq 1 ]] || usage; tools=("$1") ;;
        --cached-path) mode=cached; shift; [[ $# -eq 1 ]] || usage; tools=("$1") ;;
        all) tools=(otelcol jaeger viewer) ;;
        otelcol | jaeger | viewer) tools=("$1") ;;
        *) usage ;;
    esac
    [[ ${#tools[@]} -eq 1 && ${tools[0]} != otelcol && ${tools[0]} != jaeger && ${tools[0]} != viewer && $mode != build ]] && usage
    need_go
    local tool bin
    for tool in "${tools[@]}"; do
        bin=$(binary_path "$tool")
        if [[ $mode == cached ]]; then
            [[ -x $bin ]] || { log "$tool is not built yet (run scripts/build-tools.sh $tool)"; exit 3; }
        else
            ensure "$tool"
        fi
        printf '%s\n' "$bin"
    done
}

main "$@"
