#!/bin/sh
# demo_test.sh MPIEXEC NP MOEPACK OUTDIR - run `moepack demo` (the README's first
# command) with NP ranks in a fresh OUTDIR; it must succeed, find every expected
# tensor, read every expert, calibrate, decompose, and print the expert digest,
# the baseline perplexity and the decomposition losses (compared across rank
# counts by same_digest.sh).
set -eu
MPIEXEC=$1 NP=$2 BIN=$3 OUT=$4
rm -rf "$OUT"
"$MPIEXEC" --oversubscribe -n "$NP" "$BIN" demo --out "$OUT" >"$OUT.log" 2>&1 || {
    cat "$OUT.log"
    echo "demo failed with $NP ranks" >&2
    exit 1
}
cat "$OUT.log"
grep -q "check           OK" "$OUT.log"
grep -q "read by $NP rank" "$OUT.log"
units=$(grep -cE '^ +[0-9]+ +[0-9]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9a-f]{16}$' "$OUT.log")
[ "$units" -eq 16 ] || { echo "expected 16 expert rows, got $units" >&2; exit 1; }
grep -q "^== calibrate" "$OUT.log"
[ -f "$OUT/checkpoint/calib/layer0001/DONE" ] && [ -f "$OUT/checkpoint/calib/STAGE" ] || { echo "no committed statistics" >&2; exit 1; }
grep -q "^== decompose" "$OUT.log"
[ -f "$OUT/checkpoint/decomp/layer0001/DONE" ] || { echo "no committed decomposition" >&2; exit 1; }
PAT='^(expert digest: [0-9a-f]{16}|calibrate: baseline perplexity .*| +[0-9]+ +[0-9]+ +[0-9.]+% +[0-9.]+% +[0-9.]+%)$'
grep -E "$PAT" "$OUT.log" >"$OUT.digest"
[ "$(wc -l <"$OUT.digest")" -eq 4 ] || { echo "digest, perplexity or decomposition losses missing" >&2; exit 1; }
# a second run reuses the model and gives the same digest, perplexity and losses
"$MPIEXEC" --oversubscribe -n "$NP" "$BIN" demo --out "$OUT" 2>&1 | grep -E "$PAT" | cmp - "$OUT.digest"
