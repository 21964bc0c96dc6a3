#!/usr/bin/env bash
# Installs Debian's chromium for the report's browser tests (tests/support/browser.py drives it headless
# over the DevTools protocol). Idempotent and quiet: does nothing when chromium is there.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-chromium.sh: run as root to install chromium" >&2; exit 1; }
    SUDO=(sudo)
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "install-chromium.sh: installing chromium"
if ! { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
       && "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "install-chromium.sh: apt-get failed installing chromium" >&2
    exit 1
fi
command -v chromium >/dev/null 2>&1 || { echo "install-chromium.sh: chromium still missing after install" >&2; exit 1; }
