#!/usr/bin/env bash
# Debian packages the test suite needs. Idempotent; installs only what is missing.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if ((${#need[@]})); then
    if [ "$(id -u)" != 0 ]; then echo "system-deps: missing ${need[*]}; run as root or install them" >&2; exit 1; fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
