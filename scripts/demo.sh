#!/bin/sh
# demo.sh - set up, build, and run `moepack demo` on the built-in tiny model with 2 MPI ranks.
# Usage: scripts/demo.sh [RANKS] [demo options...]   (output in ./moepack-demo)
set -eu
. "$(dirname "$0")/env.sh"
"$ROOT/scripts/install-deps.sh"
mp_build "$ROOT/build" >/dev/null
RANKS=${1:-2}
[ $# -gt 0 ] && shift
exec mpiexec --oversubscribe -n "$RANKS" "$ROOT/build/moepack" demo "$@"
