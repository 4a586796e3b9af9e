#!/bin/sh
# layering_test.sh SRCDIR - dependencies point one way: the command line (src/main.c) -> stages (mpi/)
# -> files (io/) -> numerics and model (src/). Fails when a file in src/ (but main.c) includes a header
# of io/ or mpi/, when io/ includes a header of mpi/, when MPI is called outside mpi/ and main.c, or
# when HDF5 or stdio file calls appear in src/ or mpi/ (files are touched only in io/).
set -u
ROOT=$1
bad=0
headers() { (cd "$ROOT/$1" && ls *.h 2>/dev/null); }
check_includes() { # DIR FORBIDDEN-DIR...
    dir=$1
    shift
    for f in "$ROOT/$dir"/*.c "$ROOT/$dir"/*.h; do
        [ -f "$f" ] || continue
        [ "$f" = "$ROOT/src/main.c" ] && continue
        for other in "$@"; do
            for h in $(headers "$other"); do
                if grep -q "^#include \"$h\"" "$f"; then
                    echo "layering: ${f#$ROOT/} includes $other/$h"
                    bad=1
                fi
            done
        done
    done
}
check_includes src io mpi
check_includes src/gpu io mpi
check_includes io mpi
# MPI only in mpi/ and the command line
for f in "$ROOT"/src/*.c "$ROOT"/src/*.h "$ROOT"/io/*.c "$ROOT"/io/*.h; do
    [ "$f" = "$ROOT/src/main.c" ] && continue
    if grep -nE '\bMPI_[A-Z][a-z_]+\(|#include <mpi\.h>' "$f" >/dev/null; then
        echo "layering: ${f#$ROOT/} calls MPI: $(grep -nE '\bMPI_[A-Z][a-z_]+\(|#include <mpi\.h>' "$f" | head -1)"
        bad=1
    fi
done
# files only in io/
for f in "$ROOT"/src/*.c "$ROOT"/mpi/*.c; do
    [ "$f" = "$ROOT/src/main.c" ] && continue
    if grep -nE '\bH5[A-Z][a-z]*[a-z_0-9]*\(|\bfopen\(|#include <hdf5\.h>' "$f" >/dev/null; then
        echo "layering: ${f#$ROOT/} touches files: $(grep -nE '\bH5[A-Z][a-z]*[a-z_0-9]*\(|\bfopen\(|#include <hdf5\.h>' "$f" | head -1)"
        bad=1
    fi
done
[ $bad = 0 ] && echo "layering: src -> (nothing), io -> src, mpi -> io + src, main -> all: OK"
exit $bad
