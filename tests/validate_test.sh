#!/bin/bash
# validate_test.sh MPIEXEC MOEPACK OUTDIR - the validate stage (DESIGN section 7) on synthetic Mixtral models
# (96 sequences of 64 tokens; calibration uses 64, the other 32 are held out), with 2 ranks:
#  1. a tight budget (2.25 bits): validation.json holds the held-out tokens, per MoE layer the relative
#     output error, every unit and every block of the allocation with predicted and measured loss, and
#     Spearman(predicted, measured) over blocks >= 0.8; the same numbers are in every shard's /moepack
#     attributes (h5dump) and in index.json with the stage fingerprint; the output stays intact (a second
#     run keeps every stage); inspect reports it, --plot draws predicted vs measured per block;
#  2. validate.tokens (another token file): only the validate stage runs again, and its perplexities, KL
#     and top-1 agreement equal those of `moepack eval --compressed` on that file (1, 2 and 3 ranks);
#  3. a generous budget without the decomposition (8 bits): KL(original || compressed) <= 1e-3;
#  4. validate.device = cuda without a GPU is refused (exit 2) before any work; a token file of another
#     vocabulary is refused naming the file (exit 5).
set -u
MPIEXEC=$1 BIN=$2 OUT=$3
rm -rf "$OUT"
mkdir -p "$OUT"
fail() { echo "FAIL: $*" >&2; exit 1; }
"$BIN" synth --arch mixtral --out "$OUT/m" --n-seq 96 --seq-len 64 --seed 11 >/dev/null || fail "synth"
"$BIN" synth --arch mixtral --out "$OUT/t2" --n-seq 12 --seq-len 48 --seed 12 >/dev/null || fail "synth t2"
"$BIN" synth --arch mixtral --out "$OUT/v9" --n-seq 4 --seq-len 16 --vocab 4096 --hidden 16 --ffn 16 --seed 13 >/dev/null || fail "synth v9"

run() { # run NAME NP [key=value ...]
    local name=$1 np=$2
    shift 2
    local sets=(--set model.path="$OUT/m" --set calibration.tokens="$OUT/m/tokens.h5" --set calibration.max_sequences=64
        --set checkpoint.dir="$OUT/$name.ck" --set output.dir="$OUT/$name.out")
    for a in "$@"; do sets+=(--set "$a"); done
    timeout -k 10 300 "$MPIEXEC" --oversubscribe -n "$np" "$BIN" run "${sets[@]}" >"$OUT/$name.log" 2>&1
}

# ---- 1. tight budget ----------------------------------------------------------------------------------------
run tight 2 budget.bits_per_weight=2.25 || fail "tight: $(tail -5 "$OUT/tight.log")"
grep -q "^validate: 32 sequences, 2016 predicted tokens (held-out sequences 64..95 of calibration.tokens)" \
    "$OUT/tight.log" || fail "tight: no validate summary: $(grep -A3 '^validate' "$OUT/tight.log")"
grep -q "no GPU is visible.*the compressed experts run on the CPU" "$OUT/tight.log" || fail "tight: no device line"
o="$OUT/tight.out"
python3 - "$o" <<'PY' || fail "tight: validation.json (see above)"
import json, math, sys
o = sys.argv[1]
v = json.load(open(o + "/validation.json"))
idx = json.load(open(o + "/index.json"))
t = v["tokens"]
assert t["held_out"] is True and t["sequences"] == 32 and t["seq_len"] == 64 and t["predicted"] == 32 * 63, t
assert v["device"] == "cpu"
for k in ("ppl_original", "ppl_compressed", "kl", "top1", "spearman_blocks", "spearman_layers", "rel_error_mean"):
    assert isinstance(v[k], (int, float)) and math.isfinite(v[k]), k
assert 0 < v["kl"] < 1 and 0 < v["top1"] <= 1, (v["kl"], v["top1"])
assert abs(math.log(v["ppl_original"]) - v["nll_original"]) < 1e-12
assert v["spearman_blocks"] >= 0.8, "Spearman over blocks %.4f < 0.8" % v["spearman_blocks"]
assert len(v["layers"]) == 2 and v["blocks"] == 2 * 27, (len(v["layers"]), v["blocks"])
alloc = {l["layer"]: l for l in idx["layers"]} if isinstance(idx.get("layers"), list) else None
for L in v["layers"]:
    assert len(L["units"]) == 8 and len(L["blocks"]) == 27, L["layer"]
    assert 0 < L["rel_error"] < 1, L["rel_error"]
    assert all(0 <= u["rel_error"] < 1 for u in L["units"]), L["units"]
    assert sum(u["tokens"] for u in L["units"]) == 32 * 64 * 2  # top-2 routing of every token
    kinds = [b["kind"] for b in L["blocks"]]
    assert kinds[:3] == ["base"] * 3 and kinds[3:] == ["delta"] * 24, kinds
    m = sum(b["measured"] for b in L["blocks"])
    p = sum(b["predicted"] for b in L["blocks"])
    assert abs(m - L["measured_loss"]) <= 1e-12 * max(1, m) and abs(p - L["predicted_loss"]) <= 1e-12 * max(1, p)
    assert abs(sum(b["measured_raw"] for b in L["blocks"]) / L["energy"] - m) <= 1e-9 * m
    # measured on held-out tokens against predicted on calibration tokens: the same order of magnitude
    assert 0.3 < m / p < 3, (m, p)
    if alloc:  # the allocation's predicted loss per layer
        assert abs(alloc[L["layer"]]["predicted_loss"] - p) <= 1e-9 * p
rec = idx["validation"]
assert len(rec["fingerprint"]) == 16 and rec["kl"] == v["kl"] and rec["spearman_blocks"] == v["spearman_blocks"]
PY
shard=$(ls "$o"/moepack-*-of-*.h5 | head -1)
kl=$(python3 -c "import json; print(repr(json.load(open('$o/validation.json'))['kl']))")
h5kl=$(h5dump -m '%.17g' -a /moepack/validation_kl "$shard" | sed -n 's/^ *(0): *//p')
python3 -c "import sys; a, b = float('$kl'), float('$h5kl'); sys.exit(abs(a - b) > 1e-15 * abs(a))" ||
    fail "tight: /moepack validation_kl $h5kl != validation.json kl $kl"
h5dump -a /moepack/validation "$shard" | grep -q spearman_blocks || fail "tight: no /moepack validation text"
for s in "$o"/moepack-*-of-*.h5; do h5dump -H "$s" >/dev/null || fail "tight: $s unreadable after validation"; done
# the output is intact (index.json's checksums were updated), so a second run keeps every stage
run tight 2 budget.bits_per_weight=2.25 || fail "tight rerun: $(tail -5 "$OUT/tight.log")"
for st in calibrate decompose measure allocate quantize validate; do
    grep -q "^$st: every layer kept from before" "$OUT/tight.log" || fail "tight rerun: $st not kept: $(cat "$OUT/tight.log")"
done
"$BIN" inspect "$o" --plot "$OUT/tight.svg" >"$OUT/inspect.txt" || fail "inspect"
grep -q "^validation      perplexity .* -> .*, KL .* top-1 agreement .* on held-out sequences 64..95" "$OUT/inspect.txt" ||
    fail "inspect: no validation line: $(head -12 "$OUT/inspect.txt")"
grep -q "^layer 0: predicted loss .* measured loss .* relative output error" "$OUT/inspect.txt" || fail "inspect: no layer errors"
"$BIN" inspect "$o" --json | python3 -c "import json,sys; v=json.load(sys.stdin)['validation']; assert v['blocks'] == 54" ||
    fail "inspect --json: no validation"
python3 - "$OUT/tight.svg" <<'PY' || fail "plot"
import sys, xml.etree.ElementTree as ET
r = ET.parse(sys.argv[1]).getroot()
ns = "{http://www.w3.org/2000/svg}"
dots = [c for c in r.iter(ns + "circle") if c.find(ns + "title") is not None]
assert len(dots) == 54, len(dots)  # one per block
assert any("Predicted loss vs measured error" in (t.text or "") for t in r.iter(ns + "text"))
PY

# ---- 2. validate.tokens; the same numbers as eval --compressed ---------------------------------------------
run tight 2 budget.bits_per_weight=2.25 validate.tokens="$OUT/t2/tokens.h5" || fail "t2: $(tail -5 "$OUT/tight.log")"
for st in calibrate decompose measure allocate quantize; do
    grep -q "^$st: every layer kept from before" "$OUT/tight.log" || fail "t2: $st ran again"
done
grep -q "^validate: 12 sequences, 564 predicted tokens (sequences 0..11 of validate.tokens)" "$OUT/tight.log" || fail "t2: $(grep -A2 '^validate:' "$OUT/tight.log")"
for np in 1 2 3; do
    "$MPIEXEC" --oversubscribe -n $np "$BIN" eval --model "$OUT/m" --tokens "$OUT/t2/tokens.h5" --compressed "$o" \
        >"$OUT/eval$np.log" 2>&1 || fail "eval --compressed ($np ranks): $(tail -3 "$OUT/eval$np.log")"
    python3 - "$o/validation.json" "$OUT/eval$np.log" <<'PY' || fail "eval --compressed with $np ranks differs from validation.json"
import json, re, sys
v = json.load(open(sys.argv[1]))
log = open(sys.argv[2]).read()
def grab(pat):
    m = re.search(pat, log)
    assert m, pat
    return float(m.group(1))
ppl_o = grab(r"eval: original +perplexity ([0-9.]+)")
ppl_c = grab(r"eval: compressed perplexity ([0-9.]+)")
kl = grab(r"KL\(original \|\| compressed\) ([0-9.e+-]+) nats/token")
top1 = grab(r"top-1 agreement ([0-9.]+)%")
for a, b, tol in ((ppl_o, v["ppl_original"], 1e-6), (ppl_c, v["ppl_compressed"], 1e-6), (kl, v["kl"], 1e-5),
                  (top1 / 100, v["top1"], 1e-4)):
    assert abs(a - b) <= tol * abs(b), (a, b)
PY
done

# ---- 3. generous budget, decomposition off ---------------------------------------------------------------
run wide 2 budget.bits_per_weight=8 delta.enabled=false || fail "wide: $(tail -5 "$OUT/wide.log")"
python3 - "$OUT/wide.out/validation.json" <<'PY' || fail "wide: KL too large"
import json, sys
v = json.load(open(sys.argv[1]))
print("8 bits, no decomposition: KL %.3g, top-1 %.4f, Spearman %.4f" % (v["kl"], v["top1"], v["spearman_blocks"]))
assert v["kl"] <= 1e-3
assert all(b["kind"] == "expert" for L in v["layers"] for b in L["blocks"])
PY

# ---- 4. refused inputs ------------------------------------------------------------------------------------
run cuda 2 validate.device=cuda
rc=$?
[ $rc -eq 2 ] || fail "validate.device=cuda without a GPU: exit $rc, expected 2: $(tail -3 "$OUT/cuda.log")"
grep -q "validate.device = cuda: no GPU is visible" "$OUT/cuda.log" || fail "cuda: $(tail -3 "$OUT/cuda.log")"
[ ! -e "$OUT/cuda.ck/calib" ] || fail "cuda: refused only after work was done"
run tight 2 budget.bits_per_weight=2.25 validate.tokens="$OUT/v9/tokens.h5"
rc=$?
[ $rc -eq 5 ] || fail "a token file of another vocabulary: exit $rc, expected 5: $(tail -3 "$OUT/tight.log")"
grep -q "$OUT/v9/tokens.h5" "$OUT/tight.log" || fail "the bad token file is not named: $(tail -3 "$OUT/tight.log")"
echo "validate: all checks passed"
