#!/usr/bin/env bash
# System packages the test suite uses, from Debian: chromium (tests/test_app_browser.py drives it through Playwright
# for Python; never 'playwright install') and PostgreSQL (tests/test_index_postgres.py starts a throw-away server).
# Idempotent: installs only what is missing.
set -euo pipefail

need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
if [ ${#need[@]} -eq 0 ]; then
    echo "system packages present: $(/usr/bin/chromium --version 2>/dev/null), $(ls -d /usr/lib/postgresql/*/bin | head -1)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-system: need root (or sudo) to apt-get install ${need[*]}" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${need[@]}"
echo "installed: ${need[*]}"
