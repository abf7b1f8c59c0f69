#!/usr/bin/env bash
# Tools the test suite needs beyond Python, idempotent (installs only what is missing):
# promtool (Debian's prometheus package), to check the alert rules in deploy/prometheus;
# kafkajs and Ajv from npm (tests/js), to read the subscriber topics as a Node service does.
set -euo pipefail
cd "$(dirname "$0")/../.."

js_modules() {
  command -v npm >/dev/null || { echo "tools: node and npm are needed for tests/js (Debian: nodejs npm)" >&2; exit 1; }
  local lock=tests/js/package-lock.json installed=tests/js/node_modules/.package-lock.json
  if [ ! -f "$installed" ] || [ "$lock" -nt "$installed" ]; then
    echo "tools: installing tests/js (kafkajs, ajv) from $lock"
    (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
  fi
}
js_modules

if command -v promtool >/dev/null; then exit 0; fi
if ! command -v apt-get >/dev/null; then
  echo "tools: promtool not found and apt-get is not available; install Prometheus' promtool and retry" >&2; exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "tools: promtool not found; run as root or install Debian's prometheus package" >&2; exit 1; }
  SUDO=sudo
fi
echo "tools: installing promtool (Debian package prometheus)"
# Only the binaries are wanted: keep the package's service from starting.
policy=/usr/sbin/policy-rc.d
made_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null; $SUDO chmod +x "$policy"; made_policy=1
fi
trap '[ -n "$made_policy" ] && $SUDO rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null || true
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null || { echo "tools: prometheus installed but promtool is not on PATH" >&2; exit 1; }
