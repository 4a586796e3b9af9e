#!/bin/sh
# fuzz.sh [seconds] - build the libFuzzer harnesses (fuzz/, clang, ASan + UBSan) into build-fuzz and
# run each one for `seconds` (default 20) on its seed corpus (fuzz/corpus/<name>, copied to
# build-fuzz/corpus/<name>, where new inputs go). Fails on any crash, sanitizer report, leak or
# timeout; the input that caused it is kept as build-fuzz/artifacts/<harness>-crash-... .
# Environment: FUZZ_ONLY="safetensors index" runs a subset; FUZZ_JOBS (default: nproc) for the
# build; FUZZ_NICE=1 runs the harnesses under nice -n 19.
set -eu
. "$(dirname "$0")/env.sh"
SECS=${1:-20}
B=$ROOT/build-fuzz
HARNESSES=${FUZZ_ONLY:-"safetensors index config job tokens"} # tokens_raw: by hand, see fuzz/fuzz_tokens_raw.c
if ! command -v clang >/dev/null 2>&1; then
    echo "fuzz.sh: clang not found (apt-get install clang); cannot build the harnesses" >&2
    exit 1
fi
echo "== build fuzz harnesses ($B)"
mkdir -p "$B"
CC=clang cmake -S "$ROOT" -B "$B" -DMOEPACK_FUZZ=ON -DMOEPACK_CUDA=OFF -DMOEPACK_WERROR=ON -DBUILD_TESTING=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$B/configure.log" 2>&1 || { cat "$B/configure.log" >&2; exit 1; }
targets=""
for h in $HARNESSES; do targets="$targets fuzz_$h"; done
# shellcheck disable=SC2086
cmake --build "$B" -j "${FUZZ_JOBS:-$JOBS}" --target $targets
mkdir -p "$B/artifacts"
NICE=""
[ "${FUZZ_NICE:-0}" = 1 ] && NICE="nice -n 19"
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export ASAN_OPTIONS=detect_leaks=1
export LSAN_OPTIONS=suppressions=$ROOT/fuzz/lsan.supp:print_suppressions=0
fail=0
printf '%-12s %10s %8s %8s %s\n' harness executions seconds exec/s result >"$B/fuzz-summary.txt"
for h in $HARNESSES; do
    mkdir -p "$B/corpus/$h"
    log=$B/fuzz_$h.log
    echo "== fuzz_$h for ${SECS}s"
    rc=0
    $NICE "$B/fuzz/fuzz_$h" -max_total_time="$SECS" -timeout=20 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 -close_fd_mask=1 -artifact_prefix="$B/artifacts/$h-" \
        "$B/corpus/$h" "$ROOT/fuzz/corpus/$h" >"$log" 2>&1 || rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    if [ "$rc" = 0 ]; then res=ok; else res="FAILED (exit $rc, see $log)"; fail=1; tail -40 "$log" >&2; fi
    printf '%-12s %10s %8s %8s %s\n' "$h" "${runs:-?}" "$SECS" "${rate:-?}" "$res" | tee -a "$B/fuzz-summary.txt"
done
[ "$fail" = 0 ] || { echo "fuzz.sh: a harness failed; crashing inputs are in $B/artifacts/" >&2; exit 1; }
echo "== fuzzing: no crashes ($B/fuzz-summary.txt)"
