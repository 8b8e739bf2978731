#!/usr/bin/env bash
# Install Debian's chromium for the browser tests (tests/test_app_browser.py drive it through Playwright for Python).
# Idempotent: does nothing when /usr/bin/chromium is already there. Never runs 'playwright install'.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-browser: need root (or sudo) to apt-get install chromium" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium
/usr/bin/chromium --version
