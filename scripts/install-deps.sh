#!/bin/sh
# install-deps.sh - install the Debian packages moepack builds against.
#
# Idempotent and quick when everything is present (checks with dpkg-query
# first, runs apt-get only for what is missing). When not root, or not on
# Debian/Ubuntu, it installs nothing and prints what to install instead,
# with the usual environment-module names found on HPC clusters.
# CUDA + NCCL are optional and never installed here (use the vendor toolkit).
set -eu

PKGS="build-essential cmake pkg-config libopenmpi-dev openmpi-bin libscalapack-openmpi-dev
libhdf5-openmpi-dev hdf5-tools libopenblas-dev liblapacke-dev libcjson-dev libinih-dev libxxhash-dev"
# only for the test suite: the Slurm end-to-end test runs a one-node cluster on localhost
PKGS="$PKGS slurmctld slurmd slurm-client munge"
# only for the test suite: GLPK is the independent ILP solver test_alloc checks the allocator against
PKGS="$PKGS libglpk-dev"

advice() {
    cat <<MSG
moepack needs these (Debian/Ubuntu package names):
  $(echo $PKGS)
On a cluster with environment modules the usual equivalents are, e.g.:
  module load cmake gcc openmpi hdf5/parallel netlib-scalapack openblas   # + cjson inih xxhash
  (Spack: spack install cmake openmpi hdf5+mpi netlib-scalapack openblas cjson libinih xxhash)
CUDA + NCCL are optional: module load cuda nccl  (or put nvcc on PATH).
MSG
}

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: not a Debian/Ubuntu system; nothing installed." >&2
    advice >&2
    exit 0
fi

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    echo "install-deps: all packages present"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    SUDO=""
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install-deps: missing:$missing" >&2
        echo "install-deps: not root; run:  sudo apt-get install -y$missing" >&2
        advice >&2
        exit 1
    fi
else
    SUDO=""
fi

echo "install-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || echo "install-deps: apt-get update failed; trying the cached lists" >&2
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
echo "install-deps: done"
