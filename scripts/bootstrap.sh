#!/usr/bin/env bash
# Idempotent set-up for `make test` / `make up` on a fresh machine:
#   the venv and `pip install -e .[dev]` (again only when pyproject.toml changes),
#   the Debian packages the embedded stack needs (apt-get update first, only when one is missing).
# On a warm machine this takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
# chromium (+ a font) for the browser tests of the embedded stack's pages; gcc/g++ for the CGO
# build of otel-desktop-viewer
APT_PACKAGES=(bubblewrap prometheus prometheus-alertmanager chromium fonts-dejavu-core gcc g++)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# --- Debian packages ---------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  say "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Python venv -------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating the virtualenv in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.coo-installed"
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing COO and its dependencies (pip install -e .[dev])"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi

# --- Go-built tools: the OpenTelemetry Collector, Jaeger and otel-desktop-viewer (cached outside the repo by manifest
# hash; a first build takes many minutes and says so, later calls take a fraction of a second) ---
if [ "${COO_SKIP_TOOL_BUILD:-}" = "" ]; then
  bash scripts/build-tools.sh all >&2
fi
