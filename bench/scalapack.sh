#!/bin/sh
# scalapack.sh [N] [BUILD_DIR] - ScaLAPACK whitened SVD of an N x N block with 1 and 2 ranks.
set -eu
N=${1:-2048}
B=${2:-build}
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
o1=$(mpiexec --oversubscribe -n 1 "$B/bench/bench_scalapack" "$N")
o2=$(mpiexec --oversubscribe -n 2 "$B/bench/bench_scalapack" "$N")
echo "$o1"
echo "$o2"
t1=$(echo "$o1" | sed -n 's/.*: \([0-9.]*\) s$/\1/p')
t2=$(echo "$o2" | sed -n 's/.*: \([0-9.]*\) s$/\1/p')
echo "speed-up 2 ranks vs 1: $(echo "$t1 $t2" | awk '{printf "%.2f", $1 / $2}')"
