#!/usr/bin/env bash
# The request-level IAM evaluator the policy tests use: @cloud-copilot/iam-simulate (pinned in
# tests/iam_simulate/package-lock.json), run with the machine's Node.js - Debian's nodejs and npm
# when missing (needs root or sudo).
set -euo pipefail
cd "$(dirname "$0")/../tests/iam_simulate"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
      echo "node and npm are missing and this user cannot install them: apt-get install nodejs npm" >&2
      exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q nodejs npm >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q nodejs npm >/dev/null
  }
fi
if [ ! -d node_modules/@cloud-copilot/iam-simulate ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --silent
fi
