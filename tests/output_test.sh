#!/bin/bash
# output_test.sh MPIEXEC NP MOEPACK EXPORT_CHECK OUTDIR - the compressed model on disk, with NP ranks.
# Seven synthetic models (qwen2_moe F32 per-expert with a shared expert and a dense MLP layer
# (mlp_only_layers = [0]), vocabulary 4096 so that shards of 1 MiB split it; mixtral BF16 fused with
# candidate ranks; qwen3_moe F16 without the decomposition, with every weight format including the
# symmetric w8a8/w4a4 and fp16; deepseek_v2 and deepseek_v3 with a dense first layer and a shared expert;
# phimoe; deepseek) go through the whole pipeline
# (calibrate, decompose, measure, allocate, quantize) to the output. For each:
#  1. every shard is read whole by h5dump and carries the fingerprint of index.json; a shard above
#     output.shard_bytes holds a single item; no temporary file is left;
#  2. inspect (text, --json, --plot: a well-formed SVG with one cell per layer x unit) describes it;
#  3. export gives the source's tensors (names, dtypes, shapes; non-MoE bytes identical) whose experts equal
#     the shards dequantized independently (tests/test_export_check.c); `moepack eval` runs on the export
#     with a finite perplexity near the source's; `eval --compressed` (served as stored, the dense MLP from
#     the shards too) gives the export's perplexity;
#  the dense MLP of qwen2's layer 0 is a unit: its calibration statistics, measure table and alloc.json
#  blocks exist, the shards hold /layers/0/mlp/{gate,up,down} quantized (no bf16/f32 copy of it), inspect
#  lists it, the export's dense MLP tensors equal the dequantized shards and differ from the source, and
#  validation.json reports the layer (its MLP's output error, its three blocks measured);
#  4. a second run keeps everything and rewrites nothing.
# The output directories of the NP = 1, 2, 4 runs are compared byte for byte by tests/same_output.sh.
set -u
MPIEXEC=$1 NP=$2 BIN=$3 CHECK=$4 OUT=$5
rm -rf "$OUT"
mkdir -p "$OUT"
fail() { echo "FAIL: $*" >&2; exit 1; }
SHARD=1048576

# job MODEL NAME [key=value ...]: the pipeline to the output in $OUT/NAME.out (checkpoint $OUT/NAME.ck)
job() {
    local model=$1 name=$2
    shift 2
    local sets=(--set model.path="$OUT/$model" --set calibration.tokens="$OUT/$model/tokens.h5"
        --set checkpoint.dir="$OUT/$name.ck" --set output.dir="$OUT/$name.out" --set output.shard_bytes=$SHARD)
    for a in "$@"; do sets+=(--set "$a"); done
    timeout -k 10 300 "$MPIEXEC" --oversubscribe -n "$NP" "$BIN" run "${sets[@]}" >"$OUT/$name.log" 2>&1 ||
        fail "$name: run: $(tail -5 "$OUT/$name.log")"
    grep -q "^quantize: .* bits/weight" "$OUT/$name.log" || fail "$name: no quantize summary: $(cat "$OUT/$name.log")"
}

check() { # check MODEL NAME UNITS_PER_LAYER LAYERS [DENSE_LAYERS]: LAYERS with units, DENSE_LAYERS of them dense MLPs
    local model=$1 name=$2 cols=$3 layers=$4 dense=${5:-0} o="$OUT/$2.out"
    [ -f "$o/index.json" ] || fail "$name: no index.json"
    local fp n=0
    fp=$(sed -n 's/^\t"fingerprint":\t"\([0-9a-f]*\)",$/\1/p' "$o/index.json")
    [ -n "$fp" ] || fail "$name: no fingerprint in index.json"
    for s in "$o"/moepack-*-of-*.h5; do
        n=$((n + 1))
        h5dump "$s" >"$OUT/dump.txt" 2>&1 || fail "$name: h5dump cannot read $s: $(tail -3 "$OUT/dump.txt")"
        grep -q "\"$fp\"" "$OUT/dump.txt" || fail "$name: $s does not carry the fingerprint $fp"
        local size base items
        size=$(stat -c %s "$s")
        base=$(basename "$s")
        items=$(($(grep -o "\"$base\"" "$o/index.json" | wc -l) - 1)) # weight_map + units entries
        if [ "$size" -gt $SHARD ] && [ "$items" -ne 1 ]; then fail "$name: $base has $size bytes and $items items"; fi
    done
    [ $n -ge 1 ] && grep -q "moepack-00001-of-$(printf %05d $n).h5" "$o/index.json" || fail "$name: $n shards, index disagrees"
    ls -a "$o" | grep -qE '\.tmp' && fail "$name: temporary files left: $(ls -a "$o")"
    "$BIN" inspect "$o" --plot "$OUT/$name.svg" >"$OUT/$name.inspect" 2>&1 || fail "$name: inspect: $(cat "$OUT/$name.inspect")"
    grep -q "^moepack output" "$OUT/$name.inspect" && grep -q "^used .* bits/weight" "$OUT/$name.inspect" &&
        grep -q "^layer .*: predicted loss" "$OUT/$name.inspect" || fail "$name: inspect text: $(head -20 "$OUT/$name.inspect")"
    [ "$(grep -c "^layer .*: predicted loss" "$OUT/$name.inspect")" = "$layers" ] || fail "$name: inspect lists no $layers layers"
    "$BIN" inspect "$o" --json >"$OUT/$name.json" || fail "$name: inspect --json"
    for k in bytes_used budget_bytes bits_per_weight predicted_loss layers units projections; do
        grep -q "\"$k\"" "$OUT/$name.json" || fail "$name: inspect --json lacks $k"
    done
    head -c 200 "$OUT/$name.svg" | grep -q "<svg" || fail "$name: --plot wrote no SVG"
    if command -v xmllint >/dev/null; then xmllint --noout "$OUT/$name.svg" || fail "$name: the SVG is not well-formed"; fi
    local cells=$((cols * (layers - dense) + dense))
    [ "$(grep -c '<rect x=.*<title>layer' "$OUT/$name.svg")" = $cells ] ||
        fail "$name: the heatmap has $(grep -c '<title>layer' "$OUT/$name.svg") cells, expected $cells"
    grep -q "bits per weight" "$OUT/$name.svg" && grep -q "MoE layer" "$OUT/$name.svg" || fail "$name: SVG labels"
    "$BIN" export --in "$o" --format safetensors --out "$OUT/$name.export" >"$OUT/$name.exlog" 2>&1 ||
        fail "$name: export: $(cat "$OUT/$name.exlog")"
    cmp -s "$OUT/$name.export/config.json" "$OUT/$model/config.json" || fail "$name: config.json differs"
    "$CHECK" "$o" "$OUT/$name.export" "$OUT/$model" 0.5 >"$OUT/$name.check" || fail "$name: export check"
    cat "$OUT/$name.check"
    grep -q " $((3 * dense)) dense-MLP tensors equal" "$OUT/$name.check" || fail "$name: $((3 * dense)) dense MLP tensors not checked"
    local p0 p1
    p0=$("$BIN" eval --model "$OUT/$model" --tokens "$OUT/$model/tokens.h5" | sed -n 's/^eval: perplexity \([0-9.]*\) .*/\1/p')
    p1=$("$BIN" eval --model "$OUT/$name.export" --tokens "$OUT/$model/tokens.h5" | sed -n 's/^eval: perplexity \([0-9.]*\) .*/\1/p')
    awk -v a="$p0" -v b="$p1" 'BEGIN { exit !(b > 0 && b < 1.5 * a && b > a / 1.5) }' ||
        fail "$name: perplexity of the export $p1, of the source $p0"
    # the compressed model served as stored (factored, activation formats quantized per token) next to
    # the original: its original perplexity is the source's; without activation formats its perplexity
    # is the export's (folded weights) to 1e-5 (1e-4 for the BF16 source, whose export is rounded to
    # bf16); KL >= 0 and top-1 agreement in (0, 100] %
    local ev q0 q1 kl t1
    ev=$(timeout -k 10 120 "$MPIEXEC" --oversubscribe -n "$NP" "$BIN" eval --model "$OUT/$model" \
        --tokens "$OUT/$model/tokens.h5" --compressed "$o") || fail "$name: eval --compressed: $ev"
    q0=$(echo "$ev" | sed -n 's/^eval: original   perplexity \([0-9.]*\) .*/\1/p')
    q1=$(echo "$ev" | sed -n 's/^eval: compressed perplexity \([0-9.]*\) .*/\1/p')
    kl=$(echo "$ev" | sed -n 's/.*KL(original || compressed) \([0-9.e+-]*\) nats.*/\1/p')
    t1=$(echo "$ev" | sed -n 's/.*top-1 agreement \([0-9.]*\)%.*/\1/p')
    [ "$q0" = "$p0" ] || fail "$name: eval --compressed: original perplexity $q0, eval gives $p0"
    awk -v k="$kl" -v t="$t1" 'BEGIN { exit !(k >= 0 && t > 0 && t <= 100) }' || fail "$name: KL $kl, top-1 $t1"
    if ! grep -q '"w[48]a[48]"' "$o/index.json"; then
        local tol=1e-5
        grep -qE '"(torch_)?dtype":[[:space:]]*"bfloat16"' "$OUT/$model/config.json" && tol=1e-4
        awk -v a="$q1" -v b="$p1" -v t="$tol" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= t * b) }' ||
            fail "$name: compressed perplexity $q1 (factored) vs the export's $p1 (folded)"
    fi
    echo "$name: eval --compressed: perplexity $q1 (export $p1, original $q0), KL $kl nats/token, top-1 $t1 %"
    echo "$name: $n shard(s) readable by h5dump, inspect/--json/--plot OK, export equal to the shards, perplexity $p1 (source $p0)"
}

"$BIN" synth --arch qwen2_moe --out "$OUT/qwen2" --layers 3 --dense-layers 1 --experts 6 --ffn 48 --vocab 4096 --n-seq 8 \
    --seq-len 32 --seed 11 >/dev/null || fail "synth qwen2"
"$BIN" synth --arch mixtral --out "$OUT/mixtral" --layers 2 --experts 4 --ffn 48 --dtype BF16 --layout fused \
    --n-seq 8 --seq-len 32 --seed 12 >/dev/null || fail "synth mixtral"
"$BIN" synth --arch qwen3_moe --out "$OUT/qwen3" --layers 2 --experts 4 --ffn 32 --dtype F16 --n-seq 8 \
    --seq-len 32 --seed 13 >/dev/null || fail "synth qwen3"

job qwen2 a
check qwen2 a 8 3 1
# the dense MLP of layer 0: statistics, table, allocation, unit, shards, inspect
for f in calib/layer0000/dense.h5 measure/layer0000/dense.h5 quant/layer0000/dense.h5; do
    [ -f "$OUT/a.ck/$f" ] || fail "a: no $f"
done
[ "$(grep -c '"kind":	"dense"' "$OUT/a.ck/alloc/layer0000/alloc.json")" = 3 ] || fail "a: alloc.json of layer 0"
grep -q '"/layers/0/mlp":' "$OUT/a.out/index.json" || fail "a: no unit /layers/0/mlp in index.json"
for p in gate up down; do
    grep -q "\"/layers/0/mlp/$p/qweight\":" "$OUT/a.out/index.json" || fail "a: no /layers/0/mlp/$p/qweight"
done
grep -q '"/layers/0/mlp/gate_proj.weight"' "$OUT/a.out/index.json" && fail "a: the dense MLP is also copied unquantized"
grep -q "^  dense MLP .* w[0-9]" "$OUT/a.inspect" || fail "a: inspect does not list the dense MLP: $(head -20 "$OUT/a.inspect")"
python3 - "$OUT/a.export" "$OUT/qwen2" <<'PY' || fail "a: the export's dense MLP is the source's"
import json, struct, sys
def read(d, name):
    p = d + "/model.safetensors"
    try:
        idx = json.load(open(d + "/model.safetensors.index.json"))["weight_map"]
        p = d + "/" + idx[name]
    except FileNotFoundError:
        pass
    f = open(p, "rb")
    n = struct.unpack("<Q", f.read(8))[0]
    h = json.loads(f.read(n))[name]
    f.seek(8 + n + h["data_offsets"][0])
    return f.read(h["data_offsets"][1] - h["data_offsets"][0])
for p in ("gate", "up", "down"):
    nm = f"model.layers.0.mlp.{p}_proj.weight"
    a, b = read(sys.argv[1], nm), read(sys.argv[2], nm)
    assert len(a) == len(b) and a != b, nm
print("export: the dense MLP of layer 0 is quantized (differs from the source)")
PY
python3 - "$OUT/a.out/validation.json" <<'PY' || fail "a: validation of the dense MLP layer"
import json, sys
v = json.load(open(sys.argv[1]))
l0 = [l for l in v["layers"] if l["layer"] == 0]
assert len(l0) == 1, [l["layer"] for l in v["layers"]]
l0 = l0[0]
assert [u["unit"] for u in l0["units"]] == [-2] and 0 < l0["rel_error"] < 1, l0
b = l0["blocks"]
assert [x["kind"] for x in b] == ["dense"] * 3, b
for x in b:  # measured on the validation tokens, predicted on the calibration tokens: the same order
    assert x["measured"] > 0 and 0.2 < x["measured"] / x["predicted"] < 5, x
print("validation: the dense MLP layer's output error %.4g, blocks measured %s" %
      (l0["rel_error"], ", ".join("%.3g" % x["measured"] for x in b)))
PY
[ "$(ls "$OUT/a.out"/moepack-*.h5 | wc -l)" -ge 3 ] || fail "a: expected >= 3 shards of 1 MiB"
job mixtral b delta.candidates=0.1,0.25,0.5 budget.bits_per_weight=2.5
check mixtral b 5 2
h5dump -a /embed/dtype "$OUT/b.out/moepack-00001-of-"*.h5 | grep -q '"bfloat16"' || fail "b: bf16 embeddings not marked"
job qwen3 c delta.enabled=false quant.formats=fp16,w8a8,w4a4,w2g64 budget.bits_per_weight=10
check qwen3 c 4 2
nf=$(sed -n '/^predicted loss/,/^layer/p' "$OUT/c.inspect" | grep -cE '^  (fp16|w[0-9])')
[ "$nf" -ge 2 ] || fail "c: the allocation uses $nf formats, expected a mix: $(head -16 "$OUT/c.inspect")"
h5dump -H -d /embed "$OUT/c.out/moepack-00001-of-"*.h5 | grep -q "H5T_IEEE_F16LE\|16-bit little-endian floating-point" ||
    fail "c: f16 embeddings not stored as IEEE half: $(h5dump -H -d /embed "$OUT/c.out/"moepack-00001*.h5 | head -8)"

# DeepSeek: latent attention, a dense first layer, shared experts; V2 softmax greedy, V3 sigmoid grouped top-k;
# Phi-3.5-MoE: LayerNorm and attention biases, sparsemixer, lm_head bias; DeepSeek-MoE-16B's layout (plain
# attention, two shared experts) (units per MoE layer, layers with units, dense layers among them)
for a in "deepseek_v2 6 3 1" "deepseek_v3 6 3 1" "phimoe 5 3 0" "deepseek 6 3 1"; do
    set -- $a
    "$BIN" synth --arch "$1" --out "$OUT/$1" --layers 3 --experts 4 --ffn 32 --n-seq 8 --seq-len 32 --seed 14 \
        >/dev/null || fail "synth $1"
    job "$1" "$1"
    check "$1" "$1" "$2" "$3" "$4"
done

# a second run: every stage kept, no file rewritten
before=$(find "$OUT/a.out" -maxdepth 1 -type f -printf '%f %i %T@\n' | sort)
sleep 1.1
job qwen2 a
after=$(find "$OUT/a.out" -maxdepth 1 -type f -printf '%f %i %T@\n' | sort)
[ "$before" = "$after" ] || fail "a second run rewrote the output: $(diff <(echo "$before") <(echo "$after") | head -4)"
grep -q "quantize: every layer kept from before" "$OUT/a.log" || fail "quantize not kept: $(cat "$OUT/a.log")"
echo "second run: every stage kept, output untouched"
rm -rf "$OUT"/*.export "$OUT"/*.log "$OUT"/dump.txt
echo "output test ($NP ranks): all passed"
