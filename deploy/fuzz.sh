#!/usr/bin/env bash
# Builds the libFuzzer targets (preset `fuzz`: clang, ASan + UBSan, only the targets and what they
# link, in build-fuzz/) and runs each for N seconds on a throw-away copy of its committed corpus, so
# the inputs libFuzzer adds never land in the repository. Fails when any target finds a crash, a
# sanitizer report or a broken property, and prints the path of the input that did it (kept under
# build-fuzz/artifacts/); make it a regression test by copying it into the target's corpus.
# Usage: deploy/fuzz.sh [seconds per target, default $FUZZ_SECONDS or 20] [target names...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds="${1:-${FUZZ_SECONDS:-20}}"
shift || true
dir="$root/build-fuzz"
export CCACHE_DIR="${CCACHE_DIR:-$root/.cache/ccache}"
export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$root}"
export CCACHE_SLOPPINESS="${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}"
if [ ! -f "$dir/build.ninja" ]; then
  cmake --preset fuzz -S "$root" >/dev/null
fi
cmake --build "$dir" --target fuzzers

work="$(mktemp -d "${TMPDIR:-/tmp}/engram-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

failed=()
ran=0
# fuzzers.txt: "<name> <executable> <corpus dir>" per line, written by the configure step.
while read -r name exe corpus; do
  [ -n "$name" ] || continue
  if [ $# -gt 0 ] && ! printf '%s\n' "$@" | grep -qx "$name"; then continue; fi
  ran=$((ran + 1))
  copy="$work/$name"
  artifacts="$dir/artifacts/$name"
  mkdir -p "$copy" "$artifacts"
  cp -r "$corpus/." "$copy/"
  before=$(find "$copy" -type f | wc -l)
  log="$work/$name.log"
  dict=()
  [ -f "$(dirname "$corpus")/../$name.dict" ] && dict=(-dict="$(dirname "$corpus")/../$name.dict")
  # -len_control=0: inputs may grow to max_len at once; libFuzzer's slow growth keeps short runs near
  # the seeds' sizes, where inserting one dictionary token already breaks the JSON.
  if "$exe" -max_total_time="$seconds" -max_len=4096 -len_control=0 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$artifacts/" "${dict[@]}" "$copy" >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    echo "fuzz $name: ${seconds} s, ${runs:-?} inputs, corpus $before -> $(find "$copy" -type f | wc -l) files, nothing found"
  else
    failed+=("$name")
    echo "fuzz $name: FAILED" >&2
    grep -E 'ERROR: |runtime error|property violated|Test unit written to|SUMMARY' "$log" | head -20 >&2 || true
    input=$(sed -n 's/.*Test unit written to //p' "$log" | tail -1)
    if [ -n "$input" ]; then
      echo "fuzz $name: crashing input: $input" >&2
      echo "  reproduce: $exe $input" >&2
    else
      tail -30 "$log" >&2
    fi
  fi
done <"$dir/fuzzers.txt"

if [ "$ran" -eq 0 ]; then
  echo "fuzz: no target matched: $*" >&2
  exit 2
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${#failed[@]} of $ran targets failed: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: $ran targets, ${seconds} s each: nothing found"
