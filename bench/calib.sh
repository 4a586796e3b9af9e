#!/bin/sh
# calib.sh [BUILD_DIR [PYTHON]] - calibration benchmark on synthetic models (bench_calib.c makes them:
# Mixtral d 1024, f 2816, 8 experts top-2, 4 layers, vocab 32000; Qwen3-MoE d 1024, f 768, 32 experts
# top-4; 32 x 256 tokens), every number a ratio measured in the same run:
#  1. bench_calib with 1 and 2 ranks: calibrate / eval speed, system time / wall time of calibrate,
#     Gram accumulation / SSYRK rate, forward / SGEMM rate, expert GEMM share;
#  2. memory: peak RSS of calibrate with calibration.chunk_tokens = 512 on 4x the sequences, 8 -> 32 and
#     16 -> 64 (the file's 32 sequences repeated);
#  3. with PYTHON (torch + transformers, e.g. /opt/refenv/bin/python): whole processes as a user runs
#     them, interleaved, $MOEPACK_BENCH_RUNS (3) runs each, medians: `moepack eval` against
#     calib_ref.py --mode eval (transformers' forward, eager experts; and the forward alone, each process's own
#     timer: eval prints its forward's seconds, calib_ref.py its forward's), `moepack calibrate` against
#     calib_ref.py --mode calib (the same forward with fp64 Gram accumulation per expert, written to
#     files), 1 rank / 1 thread and 2 ranks / 2 threads.
#     Every timed run starts after a `sync` (untimed), so that none pays for the write-back of the one
#     before; calibrate and the reference's calib mode are also timed until their files are on the disk
#     (the process and then `sync`): moepack writes the statistics with O_DIRECT and fsyncs each commit,
#     the reference's np.save returns with the Grams still in the page cache.
# $MOEPACK_BENCH_ARCHS (default "mixtral qwen3_moe") picks the models; $MOEPACK_BENCH_PARTS (default
# "ratios memory compare") the parts 1, 2, 3; $MOEPACK_BENCH_DIR (default /tmp/moepack-bench-calib) keeps
# the models between runs.
set -eu
B=$(cd "${1:-build}" && pwd)
PY=${2:-}
RUNS=${MOEPACK_BENCH_RUNS:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=${MOEPACK_BENCH_DIR:-/tmp/moepack-bench-calib}
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
launch() { # NP CMD...: one rank directly, more under mpiexec
    np=$1
    shift
    if [ "$np" = 1 ]; then "$@"; else mpiexec --oversubscribe -n "$np" "$@"; fi
}
seconds() { # CMD...: wall seconds of the whole process (its output to $ROOT/last.log), after a sync
    sync
    t0=$(date +%s.%N)
    "$@" >"$ROOT/last.log" 2>&1 || { cat "$ROOT/last.log" >&2; exit 1; }
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l
}
synced() { # FILE CMD...: seconds as above into FILE, and until its files are on the disk (a sync after it) to stdout
    f=$1
    shift
    s=$(seconds "$@")
    t1=$(date +%s.%N)
    sync
    t2=$(date +%s.%N)
    echo "$s" >>"$f"
    echo "$s + $t2 - $t1" | bc -l
}
part() { case " ${MOEPACK_BENCH_PARTS:-ratios memory compare} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
median() { sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
echo "load when started: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
for arch in ${MOEPACK_BENCH_ARCHS:-mixtral qwen3_moe}; do
    D=$ROOT/$arch
    mkdir -p "$D"
    echo "== $arch"
    part ratios || [ -d "$D/model" ] || { echo "$D/model: none yet; run the ratios part once" >&2; exit 1; }
    part ratios && for np in 1 2; do
        MOEPACK_BENCH_ARCH=$arch MOEPACK_BENCH_DIR=$D mpiexec --oversubscribe -n $np "$B/bench/bench_calib" |
            grep -v '^calibrate:' | tee "$D/bench$np.txt"
    done
    rss() { MOEPACK_BENCH_ARCH=$arch MOEPACK_BENCH_DIR=$D MOEPACK_BENCH_CHUNK=512 MOEPACK_BENCH_NSEQ=$1 \
        mpiexec --oversubscribe -n 1 "$B/bench/bench_calib" | sed -n 's/.*peak RSS per rank (calibrate) \([0-9.]*\) MB/\1/p'; }
    part memory && for n in 8 16; do
        a=$(rss $n)
        b=$(rss $((4 * n)))
        echo "  memory, calibration.chunk_tokens 512 (2 sequences per window): peak RSS $a MB with $n sequences," \
            "$b MB with $((4 * n)): RATIO $(echo "$b / $a" | bc -l | cut -c1-5)"
    done
    [ -n "$PY" ] && part compare || continue
    M=$D/model
    set_="--set model.path=$M --set calibration.tokens=$M/tokens.h5 --set checkpoint.dir=$D/ck-cli --quiet --fresh"
    for t in 1 2; do
        : >"$D/t.ev" && : >"$D/t.rev" && : >"$D/t.ca" && : >"$D/t.rca" && : >"$D/t.fwd" && : >"$D/t.mfwd" &&
            : >"$D/t.cas" && : >"$D/t.rcas"
        for r in $(seq 1 "$RUNS"); do
            seconds launch $t "$B/moepack" eval --model "$M" --tokens "$M/tokens.h5" >>"$D/t.ev"
            sed -n 's/^eval: forward \([0-9.]*\) s.*/\1/p' "$ROOT/last.log" >>"$D/t.mfwd"
            OMP_NUM_THREADS=$t seconds "$PY" "$HERE/calib_ref.py" "$M" "$M/tokens.h5" --mode eval --threads $t >>"$D/t.rev"
            sed -n 's/.*forward \([0-9.]*\) s.*/\1/p' "$ROOT/last.log" >>"$D/t.fwd"
            # shellcheck disable=SC2086
            synced "$D/t.ca" launch $t "$B/moepack" calibrate $set_ >>"$D/t.cas"
            OMP_NUM_THREADS=$t synced "$D/t.rca" "$PY" "$HERE/calib_ref.py" "$M" "$M/tokens.h5" --mode calib \
                --threads $t --out "$D/ref-grams" >>"$D/t.rcas"
        done
        ev=$(median <"$D/t.ev") rev=$(median <"$D/t.rev") ca=$(median <"$D/t.ca") rca=$(median <"$D/t.rca")
        cas=$(median <"$D/t.cas") rcas=$(median <"$D/t.rcas")
        echo "  $t rank(s) / thread(s), medians of $RUNS interleaved whole-process runs:" \
            "eval $ev s, transformers $rev s: RATIO $(echo "$rev / $ev" | bc -l | cut -c1-5);" \
            "calibrate $ca s, transformers + Grams $rca s: RATIO $(echo "$rca / $ca" | bc -l | cut -c1-5);" \
            "calibrate / eval speed $(echo "$ev / $ca" | bc -l | cut -c1-5)"
        echo "  until the statistics are on the disk (the process, then sync): calibrate $cas s, transformers +" \
            "Grams $rcas s: RATIO $(echo "$rcas / $cas" | bc -l | cut -c1-5)"
        fw=$(median <"$D/t.fwd") mf=$(median <"$D/t.mfwd")
        echo "  forward only (in-process, the same runs, medians): transformers' forward + NLL $fw s, moepack eval's" \
            "$mf s (the slowest rank; its first reads of the mapped weights included): RATIO $(echo "$fw / $mf" | bc -l | cut -c1-5)"
        echo "  transformers' forward against the whole moepack eval process ($ev s): RATIO >= $(echo "$fw / $ev" | bc -l | cut -c1-5)"
        rm -rf "$D/ref-grams" "$D/ck-cli"
    done
done
echo "load when finished: $(cut -d' ' -f1-3 /proc/loadavg)"
