#!/bin/sh
# head_same_bits.sh MPIEXEC MOEPACK OUTDIR - the output head (mpi/ep_forward.c: groups of sequences padded to
# 1024 rows, vocabulary blocks of 4096) gives the same bits for any rank count: 21 sequences of 64 tokens
# (groups of 16: 16 + 5 on one rank, 11 + 10 on two, 6 / 5 / 5 / 5 on four, so the same sequence sits at
# other rows of a group and in groups padded differently), a vocabulary of 9000 (two full blocks and a
# tail). `eval --dump-logits` with 1, 2, 3 and 4 ranks: the logits equal value for value (h5diff without a
# tolerance) and the perplexity line equal to the last digit, also without --dump-logits (1 and 3 ranks).
set -u
MPIEXEC=$1 BIN=$2 OUT=$3
rm -rf "$OUT"
mkdir -p "$OUT"
fail() { echo "FAIL: $*" >&2; exit 1; }
"$BIN" synth --arch qwen3_moe --out "$OUT/m" --n-seq 21 --seq-len 64 --vocab 9000 --seed 5 >/dev/null || fail "synth"
for np in 1 2 3 4; do
    timeout -k 10 120 "$MPIEXEC" --oversubscribe -n $np "$BIN" eval --model "$OUT/m" --tokens "$OUT/m/tokens.h5" \
        --dump-logits "$OUT/logits$np.h5" >"$OUT/eval$np.log" 2>&1 || fail "eval with $np ranks: $(tail -3 "$OUT/eval$np.log")"
    grep '^eval: perplexity' "$OUT/eval$np.log" >"$OUT/ppl$np" || fail "no perplexity with $np ranks"
done
for np in 2 3 4; do
    h5diff "$OUT/logits1.h5" "$OUT/logits$np.h5" logits logits || fail "logits with $np ranks differ from 1 rank"
    cmp "$OUT/ppl1" "$OUT/ppl$np" || fail "perplexity with $np ranks: $(cat "$OUT/ppl$np") != $(cat "$OUT/ppl1")"
done
for np in 1 3; do # without an observer the head keeps only one block of logits (ld 4096, not V): the same NLL
    "$MPIEXEC" --oversubscribe -n $np "$BIN" eval --model "$OUT/m" --tokens "$OUT/m/tokens.h5" >"$OUT/plain$np.log" 2>&1 ||
        fail "eval with $np ranks: $(tail -3 "$OUT/plain$np.log")"
    grep '^eval: perplexity' "$OUT/plain$np.log" | cmp - "$OUT/ppl1" || fail "eval without --dump-logits, $np ranks"
done
echo "logits [21, 64, 9000] and perplexity identical with 1, 2, 3, 4 ranks: $(cat "$OUT/ppl1")"
