#!/usr/bin/env bash
# What the browser tests need, installed only when missing (fast when already there):
#   - Debian's chromium (/usr/bin/chromium) through apt-get: needs root (or sudo) and Debian's mirrors;
#   - the playwright package in the virtualenv of PYTHON (it drives that chromium: no browser download,
#     never `playwright install`).
# Usage: scripts/ci_browser.sh PYTHON
set -euo pipefail
PYTHON=${1:?usage: scripts/ci_browser.sh PYTHON (the venv interpreter that runs the tests)}
PLAYWRIGHT_VERSION=1.65.2
CHROMIUM=/usr/bin/chromium

if [ ! -x "$CHROMIUM" ]; then
    SUDO=
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "ci_browser.sh: installing chromium needs root or sudo" >&2; exit 1; }
        SUDO=sudo
    fi
    echo "ci_browser.sh: installing Debian's chromium"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
fi
"$CHROMIUM" --version 2>/dev/null

if ! "$PYTHON" -c "import importlib.metadata as m, sys; sys.exit(m.version('playwright') != '$PLAYWRIGHT_VERSION')" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet --disable-pip-version-check "playwright==$PLAYWRIGHT_VERSION"
fi
"$PYTHON" -c "import importlib.metadata as m; print('playwright', m.version('playwright'))"
