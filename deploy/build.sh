#!/usr/bin/env bash
# Configures (once) and builds engram with Ninja. Usage: deploy/build.sh [preset] [ninja targets...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
preset="${1:-default}"
shift || true
dir="$root/build"
[ "$preset" != "default" ] && dir="$root/build-$preset"  # the binaryDir of each preset in CMakePresets.json
export CCACHE_DIR="${CCACHE_DIR:-$root/.cache/ccache}"
export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
# Paths relative to the checkout, so clones and worktrees share cache entries; the sloppiness lets
# ccache cache translation units that use the precompiled header.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$root}"
export CCACHE_SLOPPINESS="${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}"
if [ ! -f "$dir/build.ninja" ]; then
  cmake --preset "$preset" -S "$root" >/dev/null
fi
cmake --build "$dir" -- "$@"
