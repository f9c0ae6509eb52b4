#!/usr/bin/env bash
# Create .venv and install volviz with everything it needs; idempotent (a second run is fast).
#   scripts/setup.sh          -> runtime dependencies
#   scripts/setup.sh --test   -> plus pytest, playwright and Debian's chromium for the browser tests
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
stamp=.venv/.volviz-installed
want="$(cat pyproject.toml | sha1sum | cut -c1-12)-${1:-run}"
if [ ! -f "$stamp" ] || ! grep -qx -- "$want" "$stamp"; then
    .venv/bin/python -m pip install -q --upgrade pip
    extras=""
    [ "${1:-}" = "--test" ] && extras="[test]"
    echo "[setup] installing volviz$extras and its dependencies (first time: a few minutes)"
    .venv/bin/python -m pip install -q -e ".$extras"
    echo "$want" > "$stamp"
fi
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "[setup] installing Debian chromium for the browser tests"
        (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null
    else
        echo "[setup] chromium not found and cannot apt-get it: browser tests will be skipped"
    fi
fi
