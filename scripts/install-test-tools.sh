#!/usr/bin/env bash
# Installs the Debian tools some tests drive: chromium for the report's browser tests
# (tests/support/browser.py drives it headless over the DevTools protocol) and Lua 5.1 for the
# Argo CD health check's test cases (Argo CD runs health checks in a Lua 5.1 VM).
# Idempotent and quiet: installs nothing when every tool is there.
set -euo pipefail
source "$(dirname "$0")/apt-install.sh"

install_missing install-test-tools.sh "" chromium=chromium lua5.1=lua5.1
