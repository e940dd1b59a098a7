#!/usr/bin/env bash
# Debian's Chromium for the browser tests (Playwright drives it; its own browser
# download is not used). Installs only when missing; needs root or sudo.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
"$(dirname "$0")/apt-install.sh" chromium
chromium --version
