#!/usr/bin/env bash
# Set-up of `make test-compose` (the Docker stack on a real engine), idempotent:
#
#   scripts/compose-setup.sh            install what is missing; print the docker-compose path
#   scripts/compose-setup.sh --check    exit 0 when everything is there already, 3 if not
#
# 1. Debian's packages docker.io (dockerd 20.10, containerd, runc; the package starts no daemon
#    here: the compose test starts its own, with its own data root and socket) and debootstrap
#    (the root file system of the test's stand-in images, tests/compose_standins.sh).
# 2. Docker Compose v5, built from the Go module proxy: `go install github.com/docker/compose/v5/cmd@V`
#    is refused because compose's go.mod has `exclude` directives, so a throw-away wrapper module
#    requires it and repeats them. Cached by version (and Go version) outside the repository:
#      $CACHE/compose-<sha256(version + excludes + go version):12>/docker-compose
#    with CACHE=${COO_TOOLS_CACHE:-$HOME/.cache/coo/tools} (the same cache as scripts/build-tools.sh).
#    A first build takes about a minute; later calls a fraction of a second.
# 3. The Debian root file system of the stand-in images (tests/compose_standins.sh --rootfs: debootstrap,
#    ~2 min the first time, then cached by its recipe in the same cache).
# Progress goes to stderr; stdout carries only the compose path.
set -euo pipefail

# ---- pins -------------------------------------------------------------------------------
# v5.6.0 is the newest compose whose go.mod accepts the Go toolchain here (1.26.8; v5.7.x asks
# for 1.26.10+ and GOTOOLCHAIN=local refuses to download another toolchain).
COMPOSE_MODULE=github.com/docker/compose/v5
COMPOSE_VERSION=v5.6.0
# the exclude directives of compose's own go.mod (a wrapper module must repeat them)
COMPOSE_EXCLUDES=(
    "github.com/davecgh/go-spew@v1.1.2-0.20180830191138-d8f796af33cc"
    "github.com/pmezard/go-difflib@v1.0.1-0.20181226105442-5d4384ee4fb2"
)
APT_PACKAGES=(docker.io debootstrap)
# ------------------------------------------------------------------------------------------

CACHE=${COO_TOOLS_CACHE:-$HOME/.cache/coo/tools}
log() { printf '%s\n' "$*" >&2; }
die() { printf 'compose-setup: %s\n' "$*" >&2; exit 1; }

missing_packages() {
    local pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || printf '%s\n' "$pkg"
    done
}

install_packages() {
    local missing sudo=""
    mapfile -t missing < <(missing_packages)
    ((${#missing[@]})) || return 0
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    log "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    # policy-rc.d (where the machine has one) keeps the package from starting a daemon; the
    # test never uses the system's engine anyway.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

compose_dir() {
    local h
    h=$(printf '%s\n' "$COMPOSE_MODULE@$COMPOSE_VERSION" "${COMPOSE_EXCLUDES[@]}" "$(go env GOVERSION)" \
        | sha256sum | cut -c1-12)
    printf '%s/compose-%s' "$CACHE" "$h"
}

build_compose() {
    local final=$1 t start
    start=$SECONDS
    log "building Docker Compose $COMPOSE_VERSION from the Go module proxy (first time, ~1-3 min)…"
    log "  into: $final"
    export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build"
    export GOFLAGS="-trimpath -p=2 -modcacherw -buildvcs=false" CGO_ENABLED=0 GOTOOLCHAIN=local GOWORK=off
    t=$(mktemp -d "$CACHE/.tmp-compose.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$t'" EXIT
    mkdir -p "$t/src" "$t/stage"
    (
        cd "$t/src" &&
            go mod init coo.local/compose-build &&
            for e in "${COMPOSE_EXCLUDES[@]}"; do go mod edit -exclude="$e" || exit 1; done &&
            go mod edit -require="$COMPOSE_MODULE@$COMPOSE_VERSION" &&
            cdir=$(go mod download -json "$COMPOSE_MODULE@$COMPOSE_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p') &&
            [[ -f $cdir/go.sum ]] &&
            # compose's own go.sum: its hashes were checked when the compose module was
            cp "$cdir/go.sum" go.sum &&
            go get "$COMPOSE_MODULE/cmd@$COMPOSE_VERSION" &&
            go build -o "$t/stage/docker-compose" \
                -ldflags "-s -w -X $COMPOSE_MODULE/internal.Version=$COMPOSE_VERSION" "$COMPOSE_MODULE/cmd"
    ) >"$t/build.log" 2>&1 || {
        tail -n 60 "$t/build.log" >&2
        die "the Docker Compose build failed (last 60 lines of its log above)"
    }
    "$t/stage/docker-compose" version >/dev/null || die "the built docker-compose does not run"
    {
        echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) with $(go env GOVERSION)"
        echo "compose: $COMPOSE_MODULE@$COMPOSE_VERSION"
        echo "seconds: $((SECONDS - start))"
    } >"$t/stage/BUILD-INFO"
    cp "$t/src/go.mod" "$t/stage/go.mod"
    mv -T "$t/stage" "$final" 2>/dev/null || [[ -d $final ]] || die "could not move the build to $final"
    log "built Docker Compose in $((SECONDS - start)) s"
}

ensure_compose() {
    command -v go >/dev/null 2>&1 || die "Go is not on PATH; install Go >= 1.24 and retry"
    local final bin lockfd
    final=$(compose_dir)
    bin="$final/docker-compose"
    if [[ ! -x $bin ]]; then
        mkdir -p "$CACHE"
        exec {lockfd}>"$CACHE/.lock-compose"
        flock "$lockfd"
        [[ -x $bin ]] || build_compose "$final"
        exec {lockfd}>&-
    fi
    printf '%s\n' "$bin"
}

case ${1:-} in
    --check)
        [[ -z $(missing_packages) ]] || exit 3
        command -v go >/dev/null 2>&1 && [[ -x $(compose_dir)/docker-compose ]] || exit 3
        compgen -G "$CACHE/rootfs-*.tar" >/dev/null || exit 3
        ;;
    "")
        install_packages
        bin=$(ensure_compose)
        bash "$(dirname "$0")/../tests/compose_standins.sh" --rootfs >/dev/null
        printf '%s\n' "$bin"
        ;;
    *) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
