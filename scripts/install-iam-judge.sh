#!/usr/bin/env bash
# The request-level IAM evaluator the policy tests use: @cloud-copilot/iam-simulate (pinned in
# tests/iam_simulate/package-lock.json), run with the machine's Node.js - Debian's nodejs and npm
# when missing (needs root or sudo).
set -euo pipefail
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  "$(dirname "$0")/apt-install.sh" nodejs npm
fi
cd "$(dirname "$0")/../tests/iam_simulate"
if [ ! -d node_modules/@cloud-copilot/iam-simulate ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --silent
fi
