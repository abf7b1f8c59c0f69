#!/usr/bin/env bash
# Tools the test suite needs beyond Python, idempotent (installs only what is missing):
# promtool (Debian's prometheus package), to check the alert rules in deploy/prometheus;
# buildah, podman and mmdebstrap (Debian), to build and run the container image here;
# docker-compose (Debian), to validate deploy/compose; kubectl (kustomize) must be there;
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

# Debian packages for the commands that are missing.
wanted=()
command -v promtool >/dev/null || wanted+=(prometheus)
command -v buildah >/dev/null || wanted+=(buildah)
command -v podman >/dev/null || wanted+=(podman)
command -v mmdebstrap >/dev/null || wanted+=(mmdebstrap)
command -v docker-compose >/dev/null || wanted+=(docker-compose)  # (client only: validates deploy/compose)
[ ${#wanted[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "tools: ${wanted[*]} not found and apt-get is not available; install them and retry" >&2; exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "tools: ${wanted[*]} not found; run as root or install those Debian packages" >&2; exit 1; }
  SUDO=sudo
fi
echo "tools: installing ${wanted[*]} (Debian packages)"
# Only the binaries are wanted: keep the packages' services from starting.
policy=/usr/sbin/policy-rc.d
made_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null; $SUDO chmod +x "$policy"; made_policy=1
fi
trap '[ -n "$made_policy" ] && $SUDO rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null || true
# (The container tools as Debian tested them here: with their recommended packages.)
for pkg in "${wanted[@]}"; do
  if [ "$pkg" = prometheus ]; then
    $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    $SUDO apt-get install -y -qq "$pkg" >/dev/null
  fi
done
for tool in promtool buildah podman mmdebstrap docker-compose kubectl; do
  command -v "$tool" >/dev/null || { echo "tools: installed, but $tool is not on PATH" >&2; exit 1; }
done
