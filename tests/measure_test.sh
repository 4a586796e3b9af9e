#!/bin/bash
# measure_test.sh MPIEXEC MOEPACK OUTDIR - the measure and allocate stages from the command line.
#  1. tables and allocation byte-identical for 1, 2 and 4 ranks (Mixtral-like with deltas; Qwen2-MoE-like
#     with a shared expert, a dense MLP layer (mlp_only_layers) and the decomposition off: the dense MLP
#     has its table, one row per format, and its blocks a format in alloc.json);
#  2. GPTQ's loss <= RTN's on every measured block and factor (same formats, same Hessians);
#  3. budgets 2.25, 3.25, 4.25 bits: bytes <= budget and within 1 % of it; the global allocation's
#     predicted loss <= the per-layer allocation's and <= the best uniform format's at the same budget;
#  4. bad input: unknown format (exit 2, named), empty list (exit 2), a budget below the smallest model
#     (exit 2, says the minimum), a budget above every best option (reported, allocated);
#  5. inspect on the checkpoint prints the tables (text and JSON).
set -u
MPIEXEC=$1 BIN=$2 OUT=$3
rm -rf "$OUT"
mkdir -p "$OUT"
fail() { echo "FAIL: $*" >&2; exit 1; }
"$BIN" synth --arch mixtral --out "$OUT/mix" --layers 2 --experts 4 --ffn 48 --n-seq 8 --seq-len 32 --seed 3 \
    >/dev/null || fail "synth mixtral"
"$BIN" synth --arch qwen2_moe --out "$OUT/qwen" --layers 2 --dense-layers 1 --experts 4 --hidden 256 --ffn 128 --n-seq 8 --seq-len 32 \
    --seed 4 \
    >/dev/null || fail "synth qwen2_moe"
run() { # run NP MODEL CKPT [extra...]: log in CKPT.log
    local np=$1 model=$2 ck=$3
    shift 3
    timeout -k 10 180 "$MPIEXEC" --oversubscribe -n "$np" "$BIN" run --log-json --set model.path="$OUT/$model" \
        --set calibration.tokens="$OUT/$model/tokens.h5" --set checkpoint.dir="$ck" --set delta.solver=lapack \
        --set delta.candidates=0.1,0.3 --until allocate "$@" >"$ck.log" 2>&1
}
summary() { # summary LOG STAGE KEY
    python3 -c "
import json, sys
for line in open('$1'):
    if line.startswith('{'):
        e = json.loads(line)
        if e.get('event') == 'stage_done' and e['stage'] == '$2':
            print(e.get('$3', 'absent'))" | tail -1
}

# 1. rank counts
for np in 1 2 4; do
    run $np mix "$OUT/mix$np" || fail "mixtral, $np ranks: $(tail -5 "$OUT/mix$np.log")"
    run $np qwen "$OUT/qwen$np" --set delta.enabled=false || fail "qwen, $np ranks: $(tail -5 "$OUT/qwen$np.log")"
done
for m in mix qwen; do
    for np in 2 4; do
        for st in measure alloc; do
            diff -r "$OUT/${m}1/$st" "$OUT/$m$np/$st" >/dev/null ||
                fail "$m: $st differs between 1 and $np ranks: $(diff -r "$OUT/${m}1/$st" "$OUT/$m$np/$st" | head -3)"
        done
    done
done
[ -f "$OUT/qwen1/measure/layer0001/shared.h5" ] || fail "no table for the shared expert"
[ -f "$OUT/qwen1/measure/layer0000/dense.h5" ] || fail "no table for the dense MLP"
python3 - "$OUT/qwen1/measure/layer0000/dense.h5" "$OUT/qwen1/alloc/layer0000/alloc.json" <<'PY' || fail "dense MLP"
import json, sys
a = json.load(open(sys.argv[2]))
b = a["blocks"]
assert [x["kind"] for x in b] == ["dense"] * 3 and [x["proj"] for x in b] == ["gate", "up", "down"], b
assert all(x.get("format") and x["bytes"] > 0 and x["loss"] >= 0 for x in b), b
print("dense MLP of layer 0:", ", ".join(f'{x["proj"]} {x["format"]}' for x in b))
PY
"$BIN" inspect "$OUT/qwen1" --json >"$OUT/qwen1.tables.json" || fail "inspect --json (qwen)"
python3 - "$OUT/qwen1.tables.json" <<'PY' || fail "dense MLP table"
import json, sys
u = [x for x in json.load(open(sys.argv[1]))["units"] if x["kind"] == "dense"]
assert len(u) == 1 and u[0]["layer"] == 0, u
for p in ("gate", "up", "down"):
    rows = u[0]["projections"][p]["rows"]
    assert len(rows) == 7 and all(r["rank"] == -1 and r["loss"] >= 0 for r in rows), rows
print("dense MLP table: 7 formats x 3 projections")
PY
[ -f "$OUT/mix1/measure/layer0001/base.h5" ] || fail "no table for the base"
echo "measure tables and allocations identical for 1, 2, 4 ranks (deltas; shared expert without deltas)"

# 2. GPTQ <= RTN on every block
for m in mix qwen; do
    extra=""
    [ $m = qwen ] && extra="--set delta.enabled=false"
    run 1 $m "$OUT/${m}rtn" --set quant.method=rtn $extra || fail "rtn run: $(tail -5 "$OUT/${m}rtn.log")"
    "$BIN" inspect "$OUT/${m}1" --json >"$OUT/${m}gptq.json" || fail "inspect --json"
    "$BIN" inspect "$OUT/${m}rtn" --json >"$OUT/${m}rtn.json" || fail "inspect --json (rtn)"
    python3 - "$OUT/${m}gptq.json" "$OUT/${m}rtn.json" <<'PY' || fail "$m: GPTQ worse than RTN"
import json, sys
g, r = (json.load(open(p))["units"] for p in sys.argv[1:3])
assert len(g) == len(r) and len(g) > 0
n = worse = 0
for ug, ur in zip(g, r):
    for p in ("gate", "up", "down"):
        for a, b in zip(ug["projections"][p]["rows"], ur["projections"][p]["rows"]):
            assert (a["rank"], a["part"], a["format"]) == (b["rank"], b["part"], b["format"])
            if a["part"] == "truncation":
                assert a["loss_raw"] == b["loss_raw"]
                continue
            n += 1
            if a["loss_raw"] > b["loss_raw"] * (1 + 1e-9) + 1e-300:
                worse += 1
                print("worse:", ug["layer"], ug["kind"], ug["unit"], p, a, b["loss_raw"])
print(f"{n} measured options, GPTQ worse than RTN on {worse}")
sys.exit(1 if worse else 0)
PY
done
echo "GPTQ loss <= RTN loss on every measured option"

# 3. budgets
for m in mix qwen; do
    extra=""
    [ $m = qwen ] && extra="--set delta.enabled=false"
    for b in 2.25 3.25 4.25; do
        ck="$OUT/$m-b$b"
        run 1 $m "$ck" --set budget.bits_per_weight=$b $extra || fail "$m budget $b: $(tail -5 "$ck.log")"
        python3 - "$ck.log" "$m" "$b" <<'PY' || fail "$m budget $b: see above"
import json, sys
s = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
a = [e for e in s if e.get("event") == "stage_done" and e["stage"] == "allocate"][-1]
B, b = a["budget_bytes"], a["bytes"]
ok = b <= B and b >= 0.99 * B
pl, un = a.get("per_layer_loss"), a.get("uniform_loss")
ok &= pl is None or a["loss"] <= pl * (1 + 1e-12)
ok &= un is None or a["loss"] <= un * (1 + 1e-12)
print(f"{sys.argv[2]} {sys.argv[3]} bits: {b} of {B} bytes ({100*b/B:.2f}%), {a['bits_per_weight']:.4f} bits/weight, "
      f"loss {a['loss']:.6g}, per-layer {pl}, uniform {un}, optimal {a['optimal']}")
sys.exit(0 if ok else 1)
PY
    done
done
# the global allocation beats a uniform format somewhere (not a vacuous comparison)
grep -h '"uniform_loss"' "$OUT"/*-b*.log >/dev/null || fail "no uniform baseline fitted any budget"

# 4. bad input
ck="$OUT/bad"
run 1 mix "$ck" --set quant.formats=w4g128,w5 && fail "unknown format accepted"
st=$?
[ $st = 2 ] && grep -q "w5" "$ck.log" || fail "unknown format: exit $st, $(cat "$ck.log")"
run 1 mix "$ck" --set quant.formats= ; st=$?
[ $st = 2 ] || fail "empty format list: exit $st, $(cat "$ck.log")"
run 1 mix "$ck" --set budget.bits_per_weight=0.1 ; st=$?
[ $st = 2 ] && grep -q "below the smallest possible model: [0-9]* bytes = [0-9.]* bits per weight" "$ck.log" ||
    fail "budget too small: exit $st, $(cat "$ck.log")"
[ ! -e "$ck/alloc/layer0000/DONE" ] || fail "a refused allocation left a committed layer"
run 1 mix "$ck" --set budget.bits_per_weight=40 || fail "budget above fp16: $(tail -3 "$ck.log")"
[ "$(summary "$ck.log" allocate unconstrained)" = 1 ] || fail "large budget not reported as unconstrained"
grep -q '"format":	"fp16"' "$ck/alloc/layer0000/alloc.json" || fail "large budget: no fp16 block"
echo "bad input: unknown/empty formats exit 2, small budget says its minimum, large budget allocates the best options"

# 6. the example job files parse and plan (model and tokens replaced by the synthetic ones)
SRC=$(cd "$(dirname "$0")/.." && pwd)
for f in "$SRC"/jobs/*-[0-9]*.ini; do
    "$BIN" plan --job "$f" --set model.path="$OUT/mix" --set calibration.tokens="$OUT/mix/tokens.h5" --ranks 4 \
        >"$OUT/plan.log" 2>&1 || fail "example job $f: $(cat "$OUT/plan.log")"
done
echo "example job files: $(ls "$SRC"/jobs/*-[0-9]*.ini | wc -l) parse and plan"

# 7. the tables' losses equal the direct measurement on the calibration tokens (every token sampled; the
#    dense MLP of the Qwen2-MoE model and its normaliser too)
all="--set calibration.sample_tokens=1000000 --set calibration.min_tokens=0 --set quant.formats=fp16,w4,w3g128,w2g64"
run 1 mix "$OUT/direct" $all || fail "direct run: $(tail -3 "$OUT/direct.log")"
run 1 mix "$OUT/dense" $all --set delta.enabled=false || fail "dense run"
run 1 mix "$OUT/dense-rtn" $all --set delta.enabled=false --set quant.method=rtn || fail "dense rtn run"
run 1 qwen "$OUT/mlp" $all --set delta.enabled=false || fail "dense MLP run"
"$(dirname "$BIN")/tests/test_measure_direct" "$OUT/direct" "$OUT/dense" "$OUT/mix" "$OUT/mlp" "$OUT/qwen" ||
    fail "direct measurement"

# 5. inspect
"$BIN" inspect "$OUT/mix1" >"$OUT/inspect.txt" || fail "inspect"
grep -q "w4g128" "$OUT/inspect.txt" && grep -q "expert 3" "$OUT/inspect.txt" || fail "inspect text: $(head "$OUT/inspect.txt")"
echo "PASS"
