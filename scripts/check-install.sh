#!/usr/bin/env bash
# Check `make install` end to end, as a person building a custom interpreter
# would use it:
#   1. make install PREFIX=<a new temporary directory> (VARIANT=release
#      unless set; it builds the variant first if needed);
#   2. PREFIX/bin/python3 -m venv, with pip from the bundled wheel (offline);
#   3. a C extension calling PyTraceMalloc_Track(), built with
#      PREFIX/bin/python3.X-config --cflags --ldflags and put in the venv;
#   4. the venv's python -X tracemalloc=25 runs scripts/install-check/check.py:
#      the main interpreter and two isolated subinterpreters each trace their
#      own blocks and those the extension tracks.
# Everything runs outside the repository, in a temporary directory removed
# at the end (--keep keeps it).  Exits non-zero on the first failure.
#
# The build directory is configured for the prefix, so each new prefix
# re-runs configure; --prefix DIR installs into DIR instead (kept), which
# makes a second run with the same DIR quick.
#
# Usage: scripts/check-install.sh [--keep] [--prefix DIR] [--help]
set -euo pipefail

usage="usage: $0 [--keep] [--prefix DIR] [--help]"
keep= prefix=
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'
                   exit 0;;
        --keep) keep=1;;
        --prefix) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }
                  prefix=$(realpath -m "$2"); shift;;
        *) echo "$usage" >&2; exit 2;;
    esac
    shift
done

repo=$(cd "$(dirname "$0")/.." && pwd)
here=$repo/scripts/install-check
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tmfork-install.XXXXXX")
if [ -n "$keep" ]; then
    echo "keeping $tmp"
else
    trap 'rm -rf "$tmp"' EXIT
fi
prefix=${prefix:-$tmp/prefix}
# 3.13, from the base's version
ver=$(sed -n 's/^BASE_VERSION=\([0-9]*\.[0-9]*\).*/\1/p' "$repo/base.conf")
started=$(date +%s)
say() { echo "check-install: $* ($(( $(date +%s) - started ))s)"; }

say "make install PREFIX=$prefix"
make -C "$repo" --no-print-directory install PREFIX="$prefix"
for f in "bin/python$ver" bin/python3 "bin/python$ver-config" \
         "include/python$ver/Python.h" "lib/python$ver/os.py"; do
    [ -e "$prefix/$f" ] || { echo "FAIL: $prefix/$f is missing" >&2; exit 1; }
done

# The rest runs away from the build tree, with nothing of the caller's.
cd "$tmp"
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP PYTHONTRACEMALLOC
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1

say "venv (pip from the bundled wheel)"
"$prefix/bin/python3" -m venv v
v/bin/python -m pip --version

say "the C extension, built with python$ver-config"
config=$prefix/bin/python$ver-config
site=$(v/bin/python -c 'import sysconfig as s; print(s.get_path("platlib"))')
# shellcheck disable=SC2046  # the flags are words
cc -shared -fPIC $("$config" --cflags) "$here/tmtrack.c" \
    -o "$site/tmtrack$("$config" --extension-suffix)" $("$config" --ldflags)

say "tracemalloc in the venv"
cp "$here/check.py" .
v/bin/python -X tracemalloc=25 check.py "$repo"
say "install checked"
