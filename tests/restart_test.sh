#!/bin/bash
# restart_test.sh MPIEXEC MOEPACK OUTDIR [CRASHES] - the checkpoint store and the output under faults
# (CRASHES random kill points, 12 by default; the sanitizer build runs 6: the byte comparisons of the
# other six repeat the plain build's, and CI's 30 minutes were nearly used up).
#  1. kill -9 of a random rank at 12 random fault points (seeded), spread over
#     all stages (calibration, decomposition, measure, allocation, quantization and the output's shards
#     and index.json), then resume (sometimes after a second crash, and with another rank count): the
#     committed tree and the output directory equal an uninterrupted run's byte for byte;
#  2. SIGUSR1 and SIGTERM at a unit boundary and inside a unit, and --walltime (the resumed calibrations
#     load the hidden states of their last layer instead of replaying the forward pass):
#     exit status 12, and the resumed run equals the uninterrupted one;
#  3. a truncated unit and a corrupted unit are detected and recomputed (statistics files, one of them
#     the dense MLP's, and a quantized unit);
#  4. a full file system (small tmpfs) fails with exit 6 naming the file, and
#     so does a read-only one (leaving the store as it was); the directory of
#     another model is refused (exit 11) and left untouched.
# Killing between the stages and changed parameters: tests/stages_test.sh; the output under bad input:
# tests/output_bad_test.sh.
# Every mpiexec runs under `timeout`: a rank that dies must not leave the
# others hanging.
set -u
MPIEXEC=$1 BIN=$2 OUT=$3 CRASHES=${4:-12}
rm -rf "$OUT"
mkdir -p "$OUT"
fail() { echo "FAIL: $*" >&2; exit 1; }
"$BIN" synth --arch qwen2_moe --out "$OUT/model" --layers 4 --dense-layers 1 --experts 6 --ffn 48 --n-seq 12 \
    --seq-len 48 --seed 5 >/dev/null || fail "synth" # layer 0: a dense MLP (a unit of its own)
run() { # run NP CKPT [extra args...]; prints nothing, returns the exit status; the output goes to CKPT.out
    local np=$1 ck=$2
    shift 2
    timeout -k 10 120 "$MPIEXEC" --oversubscribe -n "$np" "$BIN" run --quiet --set model.path="$OUT/model" \
        --set calibration.tokens="$OUT/model/tokens.h5" --set checkpoint.dir="$ck" --set output.dir="$ck.out" \
        "$@" >"${LOG:-$ck.log}" 2>&1
}
same() {
    diff -r "$OUT/ref" "$1" >/dev/null || { diff -r "$OUT/ref" "$1" | head -5; fail "$1 differs from the reference"; }
    diff -r "$OUT/ref.out" "$1.out" >/dev/null || { diff -r "$OUT/ref.out" "$1.out" | head -5; fail "$1.out differs from the reference output"; }
}

run 2 "$OUT/ref" || fail "reference run: $(cat "$OUT/ref.log")"
[ -f "$OUT/ref/calib/layer0002/DONE" ] && [ -f "$OUT/ref/quant/layer0002/DONE" ] && [ -f "$OUT/ref.out/index.json" ] ||
    fail "reference incomplete"

# how many fault points each rank passes
MOEPACK_FAULT_TRACE=1 run 2 "$OUT/trace" || fail "trace run"
n0=$(grep -c "fault point rank 0" "$OUT/trace.log")
n1=$(grep -c "fault point rank 1" "$OUT/trace.log")
echo "fault points: rank 0: $n0, rank 1: $n1"
[ "$n0" -gt 10 ] && [ "$n1" -gt 10 ] || fail "too few fault points"

RANDOM=20261123
for i in $(seq 1 "$CRASHES"); do
    ck="$OUT/crash$i"
    r=$((RANDOM % 2))
    n=$([ $r = 0 ] && echo "$n0" || echo "$n1")
    p=$((1 + RANDOM % n))
    MOEPACK_FAULT=$r:$p run 2 "$ck"
    st=$?
    [ $st -ne 0 ] && [ $st -ne 124 ] || fail "crash run $i (rank $r, point $p) exited with $st"
    extra=""
    if [ $((i % 3)) = 0 ]; then # a second crash before the resume
        p2=$((1 + RANDOM % n0))
        MOEPACK_FAULT=0:$p2 run 2 "$ck"
        extra=", then rank 0 at point $p2"
    fi
    np=$([ $((i % 2)) = 0 ] && echo 3 || echo 2)
    run $np "$ck" || fail "resume $i: $(tail -3 "$ck.log")"
    same "$ck"
    echo "crash $i: SIGKILL of rank $r at point $p$extra, resumed with $np ranks: identical"
done

# the first decomposition point of each rank
dec0=$(grep "fault point rank 0" "$OUT/trace.log" | grep -n decompose | head -1 | cut -d: -f1)
dec1=$(grep "fault point rank 1" "$OUT/trace.log" | grep -n decompose | head -1 | cut -d: -f1)
[ -n "$dec0" ] && [ -n "$dec1" ] || fail "no decomposition fault points"
for sig in USR1 TERM; do
    for r in 0 1; do # calibration on rank 0, decomposition on rank 1, and the other way round
        ck="$OUT/sig$sig$r"
        if [ $sig = USR1 ]; then p=$([ $r = 0 ] && echo 5 || echo "$dec1"); else p=$([ $r = 0 ] && echo "$dec0" || echo 5); fi
        MOEPACK_FAULT=$r:$p MOEPACK_FAULT_SIGNAL=$sig run 2 "$ck"
        st=$?
        [ $st = 12 ] || fail "SIG$sig on rank $r at point $p: exit $st, expected 12: $(tail -3 "$ck.log")"
        grep -q "stopped in [a-z]* after layer" "$ck.log" || fail "no stop message: $(cat "$ck.log")"
        run 2 "$ck" || fail "resume after SIG$sig"
        same "$ck"
        echo "SIG$sig on rank $r at point $p: exit 12, resumed: identical"
    done
done

# an impossible --walltime: every run commits one new layer and stops (exit 12); rerunning the same
# command finishes: 4 layers in each of the stages that commit layers (calibrate, measure, allocate,
# quantize, validate; the dense MLP layer included) and 3 MoE layers in decompose = 23 stopped runs, then
# a 24th that completes
ck="$OUT/wall"
runs=0
hidden=0 # resumed calibrations that loaded the hidden-state checkpoint instead of replaying the forward pass
while :; do
    runs=$((runs + 1))
    [ $runs -le 30 ] || fail "--walltime: no progress after 30 runs"
    run 2 "$ck" --walltime 0.001
    st=$?
    grep -q "resumes from the hidden states after layer $((runs - 2)) (checkpoint)" "$ck.log" && hidden=$((hidden + 1))
    [ $st = 0 ] && break
    [ $st = 12 ] || fail "--walltime: exit $st, expected 12: $(tail -3 "$ck.log")"
done
layers=$(find "$ck" -name DONE | wc -l)
[ $runs = 24 ] && [ $layers = 23 ] || fail "--walltime: finished after $runs runs with $layers layers, expected 24 runs (one new layer per run)"
[ $hidden = 4 ] || fail "--walltime: $hidden resumed calibrations loaded the hidden-state checkpoint, expected 4"
same "$ck"
echo "--walltime: 4 resumed calibrations loaded the hidden states of their last layer, none replayed it"
echo "--walltime: $((runs - 1)) runs stopped with exit 12 after one new layer each, the ${runs}th finished: identical"

# windows of 2 sequences (the residual stream on a file) and a damaged hidden-state checkpoint: two runs
# stopped after one calibrated layer each (the second loads the first's hidden states), one byte of the
# states after layer 1 flipped: the third run refuses them before touching its own, replays the forward
# pass from the embeddings, and equals the reference; no file of the residual stream is left behind
ck="$OUT/hidden"
win="calibration.chunk_tokens=96"
run 2 "$ck" --set "$win" --walltime 0.001
[ $? = 12 ] || fail "windows: first run: $(tail -3 "$ck.log")"
run 2 "$ck" --set "$win" --walltime 0.001
[ $? = 12 ] || fail "windows: second run: $(tail -3 "$ck.log")"
grep -q "resumes from the hidden states after layer 0 (checkpoint)" "$ck.log" ||
    fail "windows: the hidden states after layer 0 were not loaded: $(cat "$ck.log")"
hf=$(ls "$ck"/calib/hidden/seq*.bin | head -1)
printf 'X' | dd of="$hf" bs=1 seek=1000 conv=notrunc 2>/dev/null
run 2 "$ck" --set "$win" || fail "windows: run over a damaged hidden-state checkpoint: $(cat "$ck.log")"
grep -q "not the intact hidden states after layer 1; replaying the forward pass" "$ck.log" ||
    fail "windows: damaged hidden states not reported: $(cat "$ck.log")"
[ -z "$(find "$ck" "$ck.out" -name '.scratch-*')" ] || fail "windows: a file of the residual stream or the token sample was left behind"
same "$ck"
echo "windows: hidden states loaded through the file of the residual stream; a damaged checkpoint refused, replayed: identical"

ck="$OUT/damaged"
cp -r "$OUT/ref" "$ck"
cp -r "$OUT/ref.out" "$ck.out"
truncate -s 100 "$ck/calib/layer0001/expert0003.h5"
printf 'X' | dd of="$ck/calib/layer0002/expert0000.h5" bs=1 seek=3000 conv=notrunc 2>/dev/null
truncate -s 100 "$ck/quant/layer0001/expert0002.h5"
truncate -s 100 "$ck/calib/layer0000/dense.h5"
run 2 "$ck" || fail "run over damaged units: $(cat "$ck.log")"
grep -q "damaged unit .*calib/layer0001/expert0003.h5" "$ck.log" || fail "truncated unit not reported: $(cat "$ck.log")"
grep -q "damaged unit .*calib/layer0002/expert0000.h5" "$ck.log" || fail "corrupted unit not reported"
grep -q "damaged unit .*quant/layer0001/expert0002.h5" "$ck.log" || fail "truncated quantized unit not reported"
grep -q "damaged unit .*calib/layer0000/dense.h5" "$ck.log" || fail "truncated dense MLP statistics not reported"
same "$ck"
echo "truncated + corrupted units (statistics, quantized): detected, recomputed, identical"

# a full checkpoint file system: a 640 KiB tmpfs (needs mount rights; skipped otherwise)
ck="$OUT/fullfs/ckpt"
mkdir -p "$OUT/fullfs"
if mount -t tmpfs -o size=640k moepack-test "$OUT/fullfs" 2>/dev/null; then
    LOG="$OUT/full.log" run 2 "$ck"
    st=$?
    grep -q "expert.*\.h5" "$OUT/full.log"
    named=$?
    log=$(cat "$OUT/full.log")
    umount "$OUT/fullfs"
    [ $st = 6 ] || fail "full file system: exit $st, expected 6: $log"
    [ $named = 0 ] || fail "full file system: the message does not name the file: $log"
    echo "full file system: exit 6 naming the file"
else
    echo "full file system: SKIPPED (no permission to mount a small tmpfs)"
fi
# a read-only checkpoint directory: the committed layers are kept, the first write fails cleanly
mkdir -p "$OUT/rofs"
if mount -t tmpfs -o size=$(($(du -sk "$OUT/ref" | cut -f1) + 4096))k moepack-test "$OUT/rofs" 2>/dev/null; then
    cp -r "$OUT/ref" "$OUT/rofs/ck"
    rm "$OUT/rofs/ck/calib/layer0002/DONE"
    mount -o remount,ro "$OUT/rofs"
    LOG="$OUT/ro.log" run 2 "$OUT/rofs/ck"
    st=$?
    log=$(cat "$OUT/ro.log")
    diff -r "$OUT/ref" "$OUT/rofs/ck" | grep -v "Only in $OUT/ref/calib/layer0002: DONE" | grep -q . && ro_changed=1 || ro_changed=0
    umount "$OUT/rofs"
    [ $st = 6 ] || fail "read-only checkpoint directory: exit $st, expected 6: $log"
    echo "$log" | grep -q "Read-only file system" || fail "read-only: unclear message: $log"
    [ $ro_changed = 0 ] || fail "read-only: the store changed"
    echo "read-only checkpoint directory: exit 6 ($(echo "$log" | head -1 | cut -c1-100)...), store unchanged"
else
    echo "read-only checkpoint directory: SKIPPED (no permission to mount a tmpfs)"
fi

ck="$OUT/other"
cp -r "$OUT/ref" "$ck"
"$BIN" synth --arch qwen2_moe --out "$OUT/model2" --layers 2 --experts 6 --ffn 48 --n-seq 12 --seq-len 48 \
    --seed 5 >/dev/null || fail "synth of the other model"
timeout -k 10 120 "$MPIEXEC" --oversubscribe -n 2 "$BIN" run --quiet --set model.path="$OUT/model2" \
    --set calibration.tokens="$OUT/model2/tokens.h5" --set checkpoint.dir="$ck" --set output.dir="$ck.out" >"$ck.log" 2>&1
st=$?
[ $st = 11 ] || fail "fingerprint mismatch: exit $st, expected 11"
grep -q "made by another job: the model differs" "$ck.log" || fail "mismatch not explained: $(cat "$ck.log")"
diff -r "$OUT/ref" "$ck" >/dev/null || fail "the other model's checkpoint was changed"
[ ! -e "$ck.out" ] || fail "an output was written for the refused job"
echo "another model's checkpoint: refused with exit 11, left untouched"
rm -rf "$OUT"
echo "restart test: all passed"
