#!/bin/sh
# test.sh - set up, build with -Wall -Wextra -Werror, and run the whole ctest suite
# (MPI tests with 1, 2 and 4 ranks); then build and run it again under
# AddressSanitizer + UndefinedBehaviorSanitizer (MOEPACK_TEST_SANITIZE=0 skips that); then every
# libFuzzer harness for 20 s (scripts/fuzz.sh; skipped, visibly, without clang).
set -eu
. "$(dirname "$0")/env.sh"
"$ROOT/scripts/install-deps.sh"

echo "== build ($ROOT/build)"
mp_build "$ROOT/build"
echo "== ctest"
(cd "$ROOT/build" && ctest --output-on-failure -j "$JOBS")

if [ "${MOEPACK_TEST_SANITIZE:-1}" != 0 ]; then
    echo "== build with ASan + UBSan ($ROOT/build-asan)"
    mp_build "$ROOT/build-asan" -DMOEPACK_SANITIZE=ON -DMOEPACK_CUDA=OFF -DCMAKE_BUILD_TYPE=Debug
    echo "== ctest under ASan + UBSan"
    # leak checking is set per test (tests/CMakeLists.txt); any UB report fails the test
    (cd "$ROOT/build-asan" &&
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j "$JOBS")
fi
if command -v clang >/dev/null 2>&1; then
    echo "== fuzz harnesses, 20 s each on the seed corpora (ASan + UBSan)"
    "$ROOT/scripts/fuzz.sh" 20
else
    echo "== SKIPPED: fuzzing (clang not installed; scripts/fuzz.sh needs it)"
fi
echo "== all tests passed"
