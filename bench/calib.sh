#!/bin/sh
# calib.sh [BUILD_DIR] - calibration benchmark with 1 and 2 ranks on the same synthetic model.
set -eu
B=${1:-build}
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export MOEPACK_BENCH_DIR=/tmp/moepack-bench-calib-$$
trap 'rm -rf "$MOEPACK_BENCH_DIR"' EXIT
for np in 1 2; do
    mpiexec --oversubscribe -n $np "$B/bench/bench_calib"
done
