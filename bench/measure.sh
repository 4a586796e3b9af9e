#!/bin/sh
# measure.sh [BUILD_DIR [NP]] - the measure stage's share of a whole job on a synthetic Mixtral-like model
# (2 MoE layers, 8 experts, d 512, f 1408, 32 x 128 calibration tokens, D2 with candidates 0.1, 0.3, 0.5,
# the default formats, GPTQ): wall seconds of every stage from --log-json, and each one's share.
set -eu
B=${1:-build}
NP=${2:-1}
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
D=/tmp/moepack-bench-measure-$$
mkdir -p "$D"
trap 'rm -rf "$D"' EXIT
"$B/moepack" synth --arch mixtral --out "$D/model" --layers 2 --experts 8 --hidden 512 --ffn 1408 --vocab 4096 \
    --n-seq 32 --seq-len 128 --seed 11 >/dev/null
OPENBLAS_NUM_THREADS=1 mpiexec --oversubscribe -n "$NP" "$B/moepack" run --log-json \
    --set model.path="$D/model" --set calibration.tokens="$D/model/tokens.h5" --set output.dir="$D/out" \
    --set delta.candidates=0.1,0.3,0.5 --until allocate >"$D/log" 2>&1 || { cat "$D/log"; exit 1; }
python3 - "$D/log" "$NP" <<'PY'
import json, sys
st = [e for e in (json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")) if e.get("event") == "stage_done"]
total = sum(e["seconds"] for e in st)
print(f"whole job to the allocation, {sys.argv[2]} rank(s): {total:.2f} s")
for e in st:
    print(f"  {e['stage']:10s} {e['seconds']:8.2f} s  {100 * e['seconds'] / total:5.1f} %")
PY
