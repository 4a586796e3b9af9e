#!/bin/sh
# gptq.sh [PYTHON [M N [BUILD_DIR]]] - GPTQ of an M x N block (default 4096 x 14336, w4g128, act-order)
# with one thread: moepack (bench_gptq, vs SGEMM in the same run) and llm-compressor's quantize_weight
# (bench/gptq_ref.py, run with PYTHON, default python3; needs llmcompressor), then the speed-up.
set -eu
PY=${1:-python3}
M=${2:-4096}
N=${3:-14336}
B=${4:-build}
D=$(dirname "$0")
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
o1=$("$B/bench/bench_gptq" "$M" "$N")
echo "$o1"
o2=$("$PY" "$D/gptq_ref.py" "$M" "$N" 2>/dev/null)
echo "$o2"
t1=$(echo "$o1" | sed -n 's/^gptq_seconds //p')
t2=$(echo "$o2" | sed -n 's/^ref_seconds //p')
echo "$t1 $t2" | awk '{printf "moepack GPTQ vs llm-compressor (same block, 1 thread): %.2fx faster in CPU seconds (%.2fx wall)\n", $4 / $2, $3 / $1}'
