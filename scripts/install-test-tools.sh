#!/usr/bin/env bash
# Installs the Debian tools some tests drive: chromium for the report's browser tests
# (tests/support/browser.py drives it headless over the DevTools protocol) and Lua 5.1 for the
# Argo CD health check's test cases (Argo CD runs health checks in a Lua 5.1 VM).
# Idempotent and quiet: installs nothing when every tool is there.
set -euo pipefail

declare -A PACKAGE=([chromium]=chromium [lua5.1]=lua5.1)
missing=()
for tool in "${!PACKAGE[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${PACKAGE[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-test-tools.sh: run as root to install ${missing[*]}" >&2; exit 1; }
    SUDO=(sudo)
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "install-test-tools.sh: installing ${missing[*]}"
if ! { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
       && "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
       >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "install-test-tools.sh: apt-get failed installing ${missing[*]}" >&2
    exit 1
fi
for tool in "${!PACKAGE[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "install-test-tools.sh: $tool still missing after install" >&2; exit 1; }
done
