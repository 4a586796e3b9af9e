#!/bin/bash
# gweights_setup.sh MOEPACK DIR - the compressed models tests/test_gweights.c runs (one rank, no mpiexec):
#   DIR/mixtral          a synthetic Mixtral (2 MoE layers, 4 experts, BF16)
#   DIR/mixtral_act.out  decomposition on, only activation formats (w8a8 and w4a4 mixed): base, U and V all
#                        quantize their inputs per token (U: T = X V^T)
#   DIR/mixtral_mix.out  decomposition on, group formats (w4g128, w3g128) and w4a4 mixed, ranks 6 and 13
#   DIR/mixtral_dense.out decomposition off, channel formats (w8, w4) and w8a8 mixed
#   DIR/qwen2            a synthetic Qwen2-MoE (3 MoE layers, 6 experts and a shared expert)
#   DIR/qwen2.out        decomposition on (ranks 0 and 4: some experts are the base alone), w8, w4g128 and
#                        w2g64 mixed, the shared expert dense
set -u
BIN=$1 OUT=$2
fail() { echo "FAIL: $*" >&2; exit 1; }
rm -rf "$OUT"
mkdir -p "$OUT"
job() { # MODEL NAME key=value...
    local model=$1 name=$2
    shift 2
    local sets=(--set model.path="$OUT/$model" --set calibration.tokens="$OUT/$model/tokens.h5"
        --set checkpoint.dir="$OUT/$name.ck" --set output.dir="$OUT/$name.out")
    for a in "$@"; do sets+=(--set "$a"); done
    timeout -k 10 300 "$BIN" run --quiet "${sets[@]}" >"$OUT/$name.log" 2>&1 || fail "$name: run: $(tail -5 "$OUT/$name.log")"
    [ -f "$OUT/$name.out/index.json" ] || fail "$name: no output"
    rm -rf "$OUT/$name.ck"
}
"$BIN" synth --arch mixtral --out "$OUT/mixtral" --layers 2 --experts 4 --ffn 48 --dtype BF16 --n-seq 8 \
    --seq-len 32 --seed 31 >/dev/null || fail "synth mixtral"
"$BIN" synth --arch qwen2_moe --out "$OUT/qwen2" --layers 3 --experts 6 --ffn 40 --n-seq 8 --seq-len 32 \
    --seed 32 >/dev/null || fail "synth qwen2"
job mixtral mixtral_act quant.formats=w8a8,w4a4 delta.candidates=0.1,0.3 budget.bits_per_weight=3.5
job mixtral mixtral_mix quant.formats=w4g128,w3g128,w2g64,w8,w4a4 delta.candidates=0.1,0.25,0.5 budget.bits_per_weight=3
job mixtral mixtral_dense delta.enabled=false quant.formats=fp16,w8,w4,w3g128,w8a8,w4a4,w2g64 budget.bits_per_weight=6
job qwen2 qwen2 quant.formats=w4g128,w2g64,w8 delta.candidates=0.05,0.2 budget.bits_per_weight=2.6
grep -q '"w[48]a[48]"' "$OUT/mixtral_act.out/index.json" || fail "mixtral_act: no activation format in the output"
grep -q '"w[48]a[48]"' "$OUT/mixtral_dense.out/index.json" || fail "mixtral_dense: no activation format in the output"
echo "gweights setup: 4 outputs in $OUT"
