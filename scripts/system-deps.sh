#!/usr/bin/env bash
# Debian packages the test suite needs (chromium for the browser tests, curl and jq for the README's walk-through),
# or those named as arguments (`make bench`: wrk). Idempotent, quiet and non-interactive; installs only what
# is missing. As root (CI) it installs; otherwise through `sudo -n` when that needs no password; failing
# both, CI fails here and a developer gets a warning (the tests that need them then skip or fail).
set -euo pipefail
wanted=("$@")
((${#wanted[@]})) || wanted=(chromium curl jq)
need=()
for package in "${wanted[@]}"; do
    command -v "$package" >/dev/null 2>&1 || need+=("$package")
done
((${#need[@]})) || exit 0
if [ "$(id -u)" = 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "system-deps: missing ${need[*]}; install them as root: apt-get install -y ${need[*]}" >&2
    [ -n "${CI:-}" ] && exit 1
    exit 0
fi
echo "system-deps: installing ${need[*]}" >&2
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
