#!/bin/bash
# stages_test.sh MPIEXEC MOEPACK OUTDIR - per-stage fingerprints and the stage table, from the command line.
#  1. a run with delta.fraction 0.5, then --fresh with 0.25 killed (kill -9) during calibration and resumed:
#     the result equals a direct run at 0.25 (the factors of rank 0.5 are not kept);
#  2. changing only delta.fraction keeps every calibration unit (same inode, mtime and checksum), says
#     which key changed, and recomputes the factors at the new rank;
#  3. changing calibration.min_tokens recomputes calibration and decomposition (not refused);
#     another model in the same directory is refused (exit 11) and the directory left untouched;
#  4. an error inside the decomposition (a NaN written into an expert after calibration) gives exit 10
#     and exactly the expected message: one prefix "layer 1 base gate: " (where), then the tensor and element;
#  5. a kill -9 exactly between the stages, resumed: identical to an uninterrupted run.
# Every mpiexec runs under `timeout`.
set -u
MPIEXEC=$1 BIN=$2 OUT=$3
rm -rf "$OUT"
mkdir -p "$OUT"
fail() { echo "FAIL: $*" >&2; exit 1; }
"$BIN" synth --arch mixtral --out "$OUT/model" --layers 2 --experts 4 --ffn 48 --n-seq 8 --seq-len 32 --seed 7 \
    >/dev/null || fail "synth"
run() { # run NP CKPT [extra args...]: output in $CK.log
    local np=$1 ck=$2
    shift 2
    timeout -k 10 120 "$MPIEXEC" --oversubscribe -n "$np" "$BIN" run --set model.path="$OUT/model" \
        --set calibration.tokens="$OUT/model/tokens.h5" --set checkpoint.dir="$ck" --set delta.solver=lapack \
        "$@" >"$ck.log" 2>&1
}
rank_of() { h5dump -a rank_gate "$1/decomp/layer0000/expert0000.h5" | sed -n 's/^ *(0): //p'; }
state() { # inode, mtime (ns) and checksum of every calibration file
    find "$1/calib" -type f | sort | while read -r f; do
        echo "$f $(stat -c '%i %Y' "$f") $(stat -c '%.9Y' "$f" 2>/dev/null) $(cksum <"$f")"
    done
}

# 1. fresh, killed during calibration, resumed
run 2 "$OUT/ref25" --set delta.fraction=0.25 || fail "reference run at 0.25: $(cat "$OUT/ref25.log")"
ck="$OUT/fresh"
run 2 "$ck" --set delta.fraction=0.5 || fail "first run at 0.5: $(cat "$ck.log")"
r50=$(rank_of "$ck")
MOEPACK_FAULT=1:2 run 2 "$ck" --fresh --set delta.fraction=0.25
st=$?
[ $st -ne 0 ] || fail "the fresh run was not killed"
[ ! -d "$ck/decomp" ] || [ -z "$(ls "$ck/decomp")" ] || fail "--fresh left the old factors: $(ls -R "$ck/decomp" | head)"
run 2 "$ck" --set delta.fraction=0.25 || fail "resume at 0.25: $(cat "$ck.log")"
r25=$(rank_of "$ck")
[ "$r25" = "$(rank_of "$OUT/ref25")" ] && [ "$r25" != "$r50" ] || fail "rank after resume $r25 (0.5 gave $r50)"
diff -r "$OUT/ref25" "$ck" >/dev/null || fail "fresh + kill + resume differs from a direct run: $(diff -r "$OUT/ref25" "$ck" | head -3)"
echo "fresh run at 0.25 killed in calibration and resumed: rank $r25 (was $r50), identical to a direct run"

# 2. only delta.fraction changes: calibration kept, factors recomputed
ck="$OUT/frac"
run 2 "$ck" --set delta.fraction=0.5 || fail "run at 0.5"
before=$(state "$ck")
sleep 1.1 # a rewritten file would get another mtime
run 2 "$ck" --set delta.fraction=0.25 || fail "run at 0.25: $(cat "$ck.log")"
after=$(state "$ck")
[ "$before" = "$after" ] || fail "calibration files were rewritten: $(diff <(echo "$before") <(echo "$after") | head -3)"
grep -q "decompose: parameters changed (delta.fraction 0.5 -> 0.25)" "$ck.log" || fail "no note on the change: $(cat "$ck.log")"
grep -q "calibrate: every layer kept from before" "$ck.log" || fail "calibration not kept: $(cat "$ck.log")"
[ "$(rank_of "$ck")" = "$r25" ] || fail "factors not recomputed at rank $r25: $(rank_of "$ck")"
diff -r "$OUT/ref25" "$ck" >/dev/null || fail "0.5 then 0.25 differs from a direct run at 0.25"
echo "delta.fraction 0.5 -> 0.25: $(echo "$after" | wc -l) calibration files untouched, factors recomputed (rank $r25)"

# 3. calibration key changed: recomputed; another model: refused, untouched
run 2 "$ck" --set delta.fraction=0.25 --set calibration.min_tokens=3 || fail "min_tokens 3: $(cat "$ck.log")"
grep -q "calibrate: parameters changed (calibration.min_tokens 16 -> 3)" "$ck.log" || fail "no note: $(cat "$ck.log")"
grep -q "every layer kept" "$ck.log" && fail "a stage was kept although calibration changed"
"$BIN" synth --arch mixtral --out "$OUT/model3" --layers 3 --experts 4 --ffn 48 --n-seq 8 --seq-len 32 >/dev/null
cp -r "$ck" "$OUT/other"
timeout 60 "$BIN" run --set model.path="$OUT/model3" --set calibration.tokens="$OUT/model3/tokens.h5" \
    --set checkpoint.dir="$OUT/other" >"$OUT/other.log" 2>&1
st=$?
[ $st = 11 ] || fail "another model: exit $st, expected 11: $(cat "$OUT/other.log")"
grep -q "the model differs" "$OUT/other.log" || fail "mismatch not explained: $(cat "$OUT/other.log")"
diff -r "$ck" "$OUT/other" >/dev/null || fail "the other job's directory was changed"
echo "calibration.min_tokens 16 -> 3: recomputed; another model: exit 11, directory untouched"

# 4. an error inside the decomposition: the message carries its prefix once
ck="$OUT/nan"
run 1 "$ck" --until calibrate || fail "calibrate for the NaN case: $(cat "$ck.log")"
python3 - "$OUT/model/model.safetensors" <<'PY' || fail "could not plant the NaN"
import json, struct, sys
p = sys.argv[1]
with open(p, "r+b") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    h = json.loads(f.read(n))
    t = h["model.layers.1.block_sparse_moe.experts.2.w1.weight"]
    f.seek(8 + n + t["data_offsets"][0] + 4 * 5)
    f.write(struct.pack("<f", float("nan")))
PY
run 1 "$ck" --quiet
st=$?
want="moepack: error: layer 1 base gate: $OUT/model: tensor model.layers.1.block_sparse_moe.experts.2.w1.weight: non-finite value at element 5 (layer 1, expert 2, gate)"
[ $st = 10 ] || fail "NaN in the decomposition: exit $st, expected 10: $(cat "$ck.log")"
grep -qxF "$want" "$ck.log" || fail "message not exact: $(grep error "$ck.log")"
echo "error inside the decomposition: exit 10, exactly: $want"
rm -rf "$OUT/model" && "$BIN" synth --arch mixtral --out "$OUT/model" --layers 2 --experts 4 --ffn 48 --n-seq 8 \
    --seq-len 32 --seed 7 >/dev/null || fail "synth again"

# 5. kill -9 between the stages
ck="$OUT/between"
MOEPACK_FAULT_TRACE=1 run 2 "$OUT/trace" --set delta.fraction=0.25 || fail "trace run"
p=$(grep "fault point rank 0" "$OUT/trace.log" | grep -n "between stages" | head -1 | cut -d: -f1)
[ -n "$p" ] || fail "no fault point between the stages"
MOEPACK_FAULT=0:$p run 2 "$ck" --set delta.fraction=0.25
[ $? -ne 0 ] || fail "not killed between the stages"
[ -f "$ck/calib/STAGE" ] && [ ! -e "$ck/decomp/layer0000/DONE" ] || fail "not killed exactly between the stages"
run 3 "$ck" --set delta.fraction=0.25 || fail "resume after the kill between stages: $(cat "$ck.log")"
grep -q "calibrate: every layer kept" "$ck.log" || fail "calibration redone after the kill between stages"
diff -r "$OUT/ref25" "$ck" >/dev/null || fail "kill between stages + resume differs"
echo "kill -9 between the stages (point $p of rank 0), resumed with 3 ranks: identical"
rm -rf "$OUT"
echo "stages test: all passed"
