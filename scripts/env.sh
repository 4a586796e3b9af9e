# env.sh - sourced by the scripts: paths, CUDA on PATH, Open MPI as root, mpiexec flags.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$PATH:/usr/local/cuda/bin"
if [ "$(id -u)" = 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
JOBS=$(nproc 2>/dev/null || echo 2)
# configure + build into $1 with extra cmake arguments
mp_build() {
    dir=$1
    shift
    mkdir -p "$dir"
    cmake -S "$ROOT" -B "$dir" -DMOEPACK_WERROR=ON -DCMAKE_CUDA_ARCHITECTURES=90 "$@" >"$dir/configure.log" 2>&1 ||
        { cat "$dir/configure.log" >&2; return 1; }
    cmake --build "$dir" -j "$JOBS"
}
