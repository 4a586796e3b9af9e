#!/bin/bash
# output_bad_test.sh MPIEXEC MOEPACK OUTDIR - the output directory under bad input and faults (2 ranks).
#  1. output.dir holding another model's result (another shape: the seed alone does not change a
#     fingerprint): exit 11 naming its index.json, nothing touched; --fresh replaces it with this job's;
#  2. a full disk while the shards are written (a 1.5 MiB tmpfs as output.dir; skipped without mount
#     rights): exit 6 naming the shard and the system error; no index.json, no temporary file, every
#     shard under its final name complete (h5dump reads it); the next run with room finishes and equals
#     an uninterrupted run; a full disk while the quantize stage writes its units: exit 6 naming one;
#  3. kill -9 while index.json is written (after the temporary file, before the rename) and right after
#     the first shard is committed: no index.json; resumed: identical to an uninterrupted run;
#  4. a damaged shard (truncated) after a finished run: noticed (note), written again: identical;
#  5. export of a damaged shard (one byte changed): exit 5 naming it; into a non-empty directory: exit 2;
#  6. a malformed index.json in output.dir: exit 5 naming it, unless --fresh.
# Every mpiexec runs under `timeout`.
set -u
MPIEXEC=$1 BIN=$2 OUT=$3
rm -rf "$OUT"
mkdir -p "$OUT"
fail() { echo "FAIL: $*" >&2; exit 1; }
"$BIN" synth --arch qwen2_moe --out "$OUT/model" --layers 2 --experts 4 --ffn 48 --vocab 4096 --n-seq 8 \
    --seq-len 32 --seed 21 >/dev/null || fail "synth"
"$BIN" synth --arch qwen2_moe --out "$OUT/model2" --layers 2 --experts 4 --ffn 32 --vocab 4096 --n-seq 8 \
    --seq-len 32 --seed 22 >/dev/null || fail "synth 2"

# run MODEL CKPT OUTPUT [args]: exit status; log in $CKPT.log
run() {
    local model=$1 ck=$2 o=$3
    shift 3
    timeout -k 10 120 "$MPIEXEC" --oversubscribe -n 2 "$BIN" run --quiet --set model.path="$OUT/$model" \
        --set calibration.tokens="$OUT/$model/tokens.h5" --set checkpoint.dir="$ck" --set output.dir="$o" \
        --set output.shard_bytes=1048576 "$@" >"${LOG:-$ck.log}" 2>&1
}
complete_shards() { # every shard under its final name is a whole HDF5 file
    for s in "$1"/moepack-*-of-*.h5; do
        [ -e "$s" ] || continue
        h5dump -H "$s" >/dev/null 2>&1 || fail "$s is not a complete HDF5 file"
    done
}

run model "$OUT/ref" "$OUT/ref.out" || fail "reference run: $(cat "$OUT/ref.log")"
nref=$(ls "$OUT/ref.out"/moepack-*.h5 | wc -l)
[ "$nref" -ge 3 ] || fail "reference: $nref shards, expected >= 3"

# 1. another model's result
cp -r "$OUT/ref.out" "$OUT/other.out"
run model2 "$OUT/m2" "$OUT/other.out"
st=$?
[ $st = 11 ] || fail "another job's output: exit $st, expected 11: $(cat "$OUT/m2.log")"
grep -q "output.dir $OUT/other.out holds the result of another job ($OUT/other.out/index.json" "$OUT/m2.log" ||
    fail "unclear message: $(cat "$OUT/m2.log")"
diff -r "$OUT/ref.out" "$OUT/other.out" >/dev/null || fail "the other job's output was changed"
[ ! -e "$OUT/m2/job.json" ] || fail "the checkpoint was claimed although the output was refused"
echo "another model's output: exit 11 ($(grep -o 'holds the result of another job' "$OUT/m2.log")), untouched"
run model2 "$OUT/m2" "$OUT/other.out" --fresh || fail "--fresh: $(cat "$OUT/m2.log")"
grep -q "removed the previous result in $OUT/other.out" "$OUT/m2.log" || fail "--fresh: no note: $(cat "$OUT/m2.log")"
run model2 "$OUT/m2b" "$OUT/m2b.out" || fail "model2 direct run"
diff -r "$OUT/m2b.out" "$OUT/other.out" | grep -v "Only in $OUT/m2b.out: checkpoint" | grep -q . &&
    fail "--fresh result differs from a direct run"
echo "--fresh: replaced by this job's result, equal to a direct run"

# 2. a full disk during the shards
mkdir -p "$OUT/full"
if mount -t tmpfs -o size=1536k moepack-test "$OUT/full" 2>/dev/null; then
    run model "$OUT/fullck" "$OUT/full/out"
    st=$?
    log=$(cat "$OUT/fullck.log")
    left=$(ls -a "$OUT/full/out")
    complete_shards "$OUT/full/out"
    [ -e "$OUT/full/out/index.json" ] && idx=1 || idx=0
    umount "$OUT/full"
    [ $st = 6 ] || fail "full disk: exit $st, expected 6: $log"
    echo "$log" | grep -qE "moepack-0000[0-9]-of-0000[0-9].h5: cannot (write the shard|reserve [0-9]+ bytes).*No space left on device" ||
        fail "full disk: the message does not name the shard and the error: $log"
    echo "$left" | grep -q tmp && fail "full disk: temporary files left: $left"
    [ $idx = 0 ] || fail "full disk: index.json written"
    echo "full disk: exit 6 ($(echo "$log" | grep -oE 'moepack-[0-9]*-of-[0-9]*.h5: cannot [^:]*: No space left on device' | head -1)); no temporary file, no index.json, finished shards whole"
else # a file size limit would also stop Open MPI's shared-memory files: no simulation without mount rights
    echo "full disk: SKIPPED (no permission to mount a small tmpfs)"
fi
run model "$OUT/fullck" "$OUT/full/out" || fail "rerun after the full disk: $(cat "$OUT/fullck.log")"
diff -r "$OUT/ref.out" "$OUT/full/out" >/dev/null || fail "rerun after the full disk differs"
echo "full disk, then a rerun with room: identical to the reference"

# a full disk while the quantize stage writes its units (the checkpoint on a tmpfs with no room for them)
mkdir -p "$OUT/fullq"
if mount -t tmpfs -o size=$(($(du -sk --exclude=quant "$OUT/ref" | cut -f1) + 300))k moepack-test "$OUT/fullq" 2>/dev/null; then
    cp -r "$OUT/ref" "$OUT/fullq/ck" || fail "copy into the tmpfs"
    rm -rf "$OUT/fullq/ck/quant"
    LOG="$OUT/fullq.log" run model "$OUT/fullq/ck" "$OUT/fullq.out"
    st=$?
    log=$(cat "$OUT/fullq.log")
    tmps=$(find "$OUT/fullq/ck" -name '*.tmp*' | wc -l)
    umount "$OUT/fullq"
    [ $st = 6 ] || fail "full disk in quantize: exit $st, expected 6: $log"
    echo "$log" | grep -qE "quant/layer0000/(expert|base|shared)[0-9]*\.h5: .*No space left on device" ||
        fail "full disk in quantize: the message does not name the unit: $log"
    [ "$tmps" = 0 ] || fail "full disk in quantize: temporary files left"
    echo "full disk in quantize: exit 6 ($(echo "$log" | grep -oE '[a-z0-9]+\.h5: cannot [^:]*: No space left on device' | head -1)), no temporary file"
else
    echo "full disk in quantize: SKIPPED (no permission to mount a small tmpfs)"
fi

# 3. kill -9 during index.json and after the first shard
MOEPACK_FAULT_TRACE=1 run model "$OUT/trace" "$OUT/trace.out" || fail "trace run"
for where in "output: index.json written, not renamed" "output: shard committed"; do
    p=$(grep "fault point rank 0" "$OUT/trace.log" | grep -n "$where" | head -1 | cut -d: -f1)
    [ -n "$p" ] || fail "no fault point '$where'"
    ck="$OUT/kill$p"
    MOEPACK_FAULT=0:$p run model "$ck" "$ck.out"
    st=$?
    [ $st -ne 0 ] || fail "not killed at '$where'"
    [ ! -e "$ck.out/index.json" ] || fail "index.json present after a kill at '$where'"
    complete_shards "$ck.out"
    run model "$ck" "$ck.out" || fail "resume after '$where': $(cat "$ck.log")"
    diff -r "$OUT/ref.out" "$ck.out" >/dev/null || fail "resume after a kill at '$where' differs"
    echo "kill -9 at '$where' (rank 0, point $p): no index.json, shards whole; resumed: identical"
done

# 4. a damaged shard
cp -r "$OUT/ref" "$OUT/dmg" && cp -r "$OUT/ref.out" "$OUT/dmg.out"
truncate -s 5000 "$OUT/dmg.out/moepack-00002-of-$(printf %05d "$nref").h5"
run model "$OUT/dmg" "$OUT/dmg.out" || fail "run over a damaged shard: $(cat "$OUT/dmg.log")"
grep -q "note: output in $OUT/dmg.out: .*moepack-00002-of-.*missing or of another size; writing it again" "$OUT/dmg.log" ||
    fail "damaged shard not reported: $(cat "$OUT/dmg.log")"
diff -r "$OUT/ref.out" "$OUT/dmg.out" >/dev/null || fail "rewritten output differs"
echo "truncated shard: noticed, written again: identical"

# export: a damaged shard (same size, one byte changed) is refused before HDF5 reads it; a non-empty target
cp -r "$OUT/ref.out" "$OUT/ex.out"
printf 'X' | dd of="$OUT/ex.out/moepack-00002-of-$(printf %05d "$nref").h5" bs=1 seek=4000 conv=notrunc 2>/dev/null
"$BIN" export --in "$OUT/ex.out" --format safetensors --out "$OUT/ex.export" >"$OUT/ex.log" 2>&1
st=$?
[ $st = 5 ] || fail "export of a damaged shard: exit $st, expected 5: $(cat "$OUT/ex.log")"
grep -q "moepack-00002-of-.*h5: damaged (XXH64" "$OUT/ex.log" || fail "damaged shard not named: $(cat "$OUT/ex.log")"
[ ! -e "$OUT/ex.export" ] || [ -z "$(ls "$OUT/ex.export")" ] || fail "export of a damaged shard left files"
mkdir -p "$OUT/ex2" && touch "$OUT/ex2/something"
"$BIN" export --in "$OUT/ref.out" --format safetensors --out "$OUT/ex2" >"$OUT/ex.log" 2>&1
st=$?
[ $st = 2 ] && grep -q "exists and is not empty" "$OUT/ex.log" || fail "export into a non-empty directory: exit $st: $(cat "$OUT/ex.log")"
echo "export: a damaged shard refused (exit 5, named), a non-empty target refused (exit 2)"

# 6. a malformed index.json
mkdir -p "$OUT/bad.out" && echo '{"format": "moepack", "shards": [' >"$OUT/bad.out/index.json"
run model "$OUT/badck" "$OUT/bad.out"
st=$?
[ $st = 5 ] || fail "malformed index.json: exit $st, expected 5: $(cat "$OUT/badck.log")"
grep -q "$OUT/bad.out/index.json" "$OUT/badck.log" || fail "malformed index.json not named: $(cat "$OUT/badck.log")"
run model "$OUT/badck" "$OUT/bad.out" --fresh || fail "--fresh over a malformed index.json: $(cat "$OUT/badck.log")"
echo "malformed index.json: exit 5 naming it; --fresh replaces it"
rm -rf "$OUT"
echo "output bad-input test: all passed"
