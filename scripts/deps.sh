#!/bin/sh
# Install the Debian packages this fork needs to build and test CPython.
# Usage: scripts/deps.sh [--check]
#   --check   only print the apt-get command for what is missing; exit 1 if any
set -eu
PKGS="build-essential pkg-config ccache git patch xz-utils ca-certificates
      gdb libbz2-dev libffi-dev libgdbm-dev libgdbm-compat-dev liblzma-dev
      libncurses-dev libreadline-dev libsqlite3-dev libssl-dev tk-dev
      uuid-dev zlib1g-dev clang libclang-rt-dev"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
        missing="$missing $p"
done
[ -z "$missing" ] && exit 0
cmd="apt-get install -y --no-install-recommends$missing"
if [ "${1:-}" = "--check" ]; then
    echo "missing build dependencies; install them with:"
    echo "  apt-get update && $cmd"
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "missing build dependencies; as root, run:" >&2
    echo "  apt-get update && $cmd" >&2
    exit 1
fi
echo "installing build dependencies:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
$cmd >/dev/null || { echo "failed: apt-get update && $cmd" >&2; exit 1; }
