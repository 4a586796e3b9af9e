#!/bin/sh
# demo_test.sh MPIEXEC NP MOEPACK OUTDIR - run `moepack demo` (the README's first
# command) with NP ranks in a fresh OUTDIR; it must succeed, find every expected
# tensor, read every expert, calibrate, decompose, measure, allocate, quantize into
# the output, validate it on the held-out sequences, and print the expert digest, the baseline perplexity, the decomposition
# losses and the output's shard checksums (compared across rank counts by same_digest.sh).
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
# the compressed model: its summary, and the shards' checksums from index.json join the digest (compared across
# rank counts by same_digest.sh: the output's bytes do not depend on them)
grep -qE "^demo: compressed model in $OUT: [0-9]+ bytes .* bits/weight .*predicted loss" "$OUT.log" ||
    { echo "no summary of the compressed model" >&2; exit 1; }
[ -f "$OUT/index.json" ] || { echo "no index.json in $OUT" >&2; exit 1; }
shards() { sed -n 's/^\t*"xxh64":\t"\([0-9a-f]*\)".*/shard xxh64 \1/p' "$OUT/index.json"; }
shards >>"$OUT.digest"
# the validation on the held-out quarter of the sequences: its numbers join the digest too
grep -qE "^demo: validated on 1008 held-out tokens: perplexity [0-9.]+ -> [0-9.]+, KL [0-9.e+-]+ nats/token" "$OUT.log" ||
    { echo "no validation summary" >&2; exit 1; }
[ -f "$OUT/validation.json" ] || { echo "no validation.json in $OUT" >&2; exit 1; }
VPAT='^  perplexity original [0-9.]+, compressed [0-9.]+ .*top-1 agreement'
grep -E "$VPAT" "$OUT.log" >>"$OUT.digest" || { echo "no validation line" >&2; exit 1; }
grep -q "^shard xxh64" "$OUT.digest" || { echo "no shard checksums in $OUT/index.json" >&2; exit 1; }
# a second run reuses the model and gives the same digest, perplexity, losses and output
"$MPIEXEC" --oversubscribe -n "$NP" "$BIN" demo --out "$OUT" >"$OUT.log2" 2>&1
{ grep -E "$PAT" "$OUT.log2"; shards; grep -E "$VPAT" "$OUT.log2"; } | cmp - "$OUT.digest"
