#!/bin/bash
# slurm_test.sh BUILD_DIR - end-to-end test of slurm/moepack.sbatch on a
# one-node Slurm cluster started on this machine (slurm/local-cluster.sh):
#   1. synthesise a model on which `moepack run` takes about a minute on 2 cores (58 s measured);
#   2. reference: `mpirun -np 2 moepack run` straight through into ref/checkpoint;
#   3. submit moepack.sbatch (2 tasks) with a job file whose checkpoint is
#      slurm/checkpoint; once a layer is committed, send the batch shell
#      SIGUSR1 as Slurm does before a time limit (`scancel --signal=USR1
#      --batch`); the ranks must stop at a layer boundary with exit 12, the
#      script must requeue the job (Restarts=1), and the requeued job must keep
#      the committed layers (same inodes and mtimes), resume and finish
#      (COMPLETED, exit 0:0);
#   4. every stage directory of the two checkpoints (calib, decomp, ...) must be
#      identical byte for byte, and the printed perplexity the same;
#   5. a job that fails (missing model) must end FAILED with moepack's exit code
#      and not be requeued.
# Exit 0 = passed, 77 = skipped (not root, or Slurm/munge/MPI missing), else failed.
# Daemons and the temporary directory are removed on exit whatever happens
# (SLURM_TEST_KEEP=1 keeps the directory for inspection).
# Knobs: SLURM_TEST_TIMEOUT (s, default 420), SLURM_TEST_SYNTH (synth options),
# SLURM_TEST_INTERRUPT=scancel|timelimit (timelimit: let Slurm send the signal
# from --time/--signal instead; slower, timing within Slurm's 30 s check),
# MOEPACK_LAUNCHER=srun|mpirun (default srun when `srun --mpi=list` has pmix),
# MPIEXEC (default mpirun), SLURM_TEST_RUN_BIN (program used for `run` instead of
# BUILD_DIR/moepack, e.g. a stand-in with the same exit codes, to debug the Slurm side).
set -eu

[ $# -ge 1 ] || { echo "usage: $0 BUILD_DIR" >&2; exit 2; }
BUILD=$(cd "$1" && pwd -P)
SRC=$(cd "$(dirname "$0")/.." && pwd -P)
BIN=$BUILD/moepack
MPIEXEC=${MPIEXEC:-mpirun}
TOTAL=${SLURM_TEST_TIMEOUT:-420}
SYNTH_OPTS=${SLURM_TEST_SYNTH:---layers 10 --hidden 256 --ffn 512 --experts 8 --n-seq 128 --seq-len 256}
INTERRUPT=${SLURM_TEST_INTERRUPT:-scancel}
T0=$(date +%s)
DEADLINE=$((T0 + TOTAL))

say() { printf '[slurm_test %4ds] %s\n' "$(($(date +%s) - T0))" "$*"; }
skip() { echo "slurm_test: SKIPPED: $*"; exit 77; }
fail() {
    echo "slurm_test: FAILED: $*" >&2
    if [ -n "${T:-}" ] && [ -f "$T/slurm.out" ]; then
        echo "--- job output ($T/slurm.out)" >&2
        tail -n 40 "$T/slurm.out" >&2
    fi
    if [ -n "${JOBID:-}" ]; then
        echo "--- scontrol show job $JOBID" >&2
        scontrol show job "$JOBID" >&2 2>/dev/null || true
    fi
    exit 1
}
left() { echo $((DEADLINE - $(date +%s))); }

# ---- skip conditions
[ "$(id -u)" -eq 0 ] || skip "needs root (slurmd, SlurmUser=root)"
for b in munged munge unmunge slurmctld slurmd sbatch squeue scontrol scancel sinfo srun timeout "$MPIEXEC"; do
    command -v "$b" >/dev/null 2>&1 || skip "$b not found (apt install slurmctld slurmd slurm-client munge)"
done
[ -x "$BIN" ] || fail "$BIN not found (build first)"
if [ -z "${SLURM_TEST_RUN_BIN:-}" ]; then
    "$BIN" --help 2>&1 | grep -qE "^ *run \[?--job" || skip "$BIN has no job engine (moepack run --job)"
fi

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# ---- temporary directory and cleanup
T=$(mktemp -d "${TMPDIR:-/tmp}/moepack-slurm-test.XXXXXX")
chmod 0755 "$T" # munged wants a socket path nobody else can write
CLUSTER=$T/cluster
# a private copy of the binary: a rebuild during the test must not change it
cp "$BIN" "$T/moepack"
BIN=$T/moepack
JOBID=""
CHILD=""    # a long foreground step, run in the background so that traps fire at once
WATCHDOG="" # cleans up if this shell is killed without running its trap (SIGKILL)
cleanup() {
    rc=$?
    trap - EXIT INT TERM
    [ -z "$WATCHDOG" ] || kill "$WATCHDOG" 2>/dev/null || true
    if [ -n "$CHILD" ]; then # ranks stop at the next layer; give them 10 s
        kill -TERM "$CHILD" 2>/dev/null || true
        for _ in $(seq 1 20); do
            kill -0 "$CHILD" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$CHILD" 2>/dev/null || true
    fi
    if [ -f "$CLUSTER/slurm.conf" ]; then
        "$SRC/slurm/local-cluster.sh" stop "$CLUSTER" >/dev/null 2>&1 || true
    fi
    if [ "${SLURM_TEST_KEEP:-0}" = 1 ]; then
        echo "slurm_test: kept $T"
    else
        rm -rf "$T"
    fi
    exit "$rc"
}
trap cleanup EXIT
exec 3>&2 # the trap's message reaches the real stderr even inside a redirected step
trap 'echo "slurm_test: interrupted, cleaning up" >&3; exit 1' INT TERM
# shellcheck disable=SC2016 # the script's $1..$5 are its arguments
setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 2; done
    [ -f "$3/slurm.conf" ] && "$2" stop "$3"; [ "$4" = 1 ] || rm -rf "$5"' \
    watchdog $$ "$SRC/slurm/local-cluster.sh" "$CLUSTER" "${SLURM_TEST_KEEP:-0}" "$T" \
    </dev/null >/dev/null 2>&1 &
WATCHDOG=$!
run_child() { # run_child COMMAND...: run it, return its status
    local rc=0
    "$@" &
    CHILD=$!
    wait "$CHILD" || rc=$?
    CHILD=""
    return "$rc"
}

# ---- cluster on two free ports (a real Slurm may own 6817/6818)
port_free() {
    local hex
    hex=$(printf '%04X' "$1")
    ! cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '{print $2}' | grep -qi ":$hex\$"
}
port=${SLURM_TEST_PORT:-16817}
while ! port_free "$port" || ! port_free $((port + 1)); do
    port=$((port + 2))
done
export SLURMCTLD_PORT=$port SLURMD_PORT=$((port + 1))
say "starting a one-node cluster in $CLUSTER (ports $SLURMCTLD_PORT/$SLURMD_PORT)"
"$SRC/slurm/local-cluster.sh" start "$CLUSTER" || fail "local cluster did not start"
export SLURM_CONF=$CLUSTER/slurm.conf
if [ -z "${MOEPACK_LAUNCHER:-}" ]; then
    if srun --mpi=list 2>&1 | grep -qw pmix; then
        MOEPACK_LAUNCHER=srun
    else
        MOEPACK_LAUNCHER=mpirun
    fi
fi
RUN_BIN=${SLURM_TEST_RUN_BIN:-$BIN}
export MOEPACK_LAUNCHER MOEPACK=$RUN_BIN
say "launcher inside the job: $MOEPACK_LAUNCHER"

# ---- model and job files
say "synth --arch qwen2_moe $SYNTH_OPTS"
# shellcheck disable=SC2086 # word splitting of the options is intended
run_child timeout "$(left)" "$BIN" synth --arch qwen2_moe --out "$T/model" $SYNTH_OPTS >"$T/synth.log" 2>&1 ||
    { cat "$T/synth.log"; fail "synth failed"; }
write_job() { # write_job NAME
    mkdir -p "$T/$1"
    cat >"$T/$1.ini" <<EOF
; written by tests/slurm_test.sh
[model]
path = $T/model
[calibration]
tokens = $T/model/tokens.h5
[checkpoint]
dir = $T/$1/checkpoint
[output]
dir = $T/$1
[validate]
max_sequences = 8         ; the validate stage runs, on a few sequences (the test is about requeueing)
EOF
}
write_job ref
write_job slurm
ndone() { find "$1/checkpoint/calib" -name DONE 2>/dev/null | wc -l; }

# ---- reference run, uninterrupted
say "reference: $MPIEXEC -np 2 moepack run --job ref.ini"
t=$(date +%s)
rc=0
run_child timeout "$(left)" "$MPIEXEC" --oversubscribe -np 2 "$RUN_BIN" run --job "$T/ref.ini" --quiet \
    >"$T/ref.log" 2>&1 || rc=$?
[ "$rc" -eq 0 ] || { cat "$T/ref.log"; fail "reference run exited $rc"; }
REF_S=$(($(date +%s) - t))
NLAYERS=$(ndone "$T/ref")
say "reference finished in ${REF_S} s, $NLAYERS layers committed"
[ "$NLAYERS" -ge 3 ] || fail "reference committed $NLAYERS layers; need at least 3 to stop in the middle"

# ---- the Slurm job
job_field() { # job_field NAME: a field of `scontrol show job` ("" once purged)
    scontrol -o show job "$JOBID" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1
}
wait_for() { # wait_for SECONDS WHAT COMMAND...: poll COMMAND every second
    local limit=$1 what=$2 end
    shift 2
    end=$(($(date +%s) + limit))
    [ "$end" -le "$DEADLINE" ] || end=$DEADLINE
    until "$@"; do
        [ "$(date +%s)" -lt "$end" ] || fail "timed out waiting for $what"
        sleep 1
    done
}
sbatch_opts=(--parsable -D "$T" --job-name=moepack-test --nodes=1 --ntasks-per-node=2
    --cpus-per-task=1 --output="$T/slurm.out")
if [ "$INTERRUPT" = timelimit ]; then
    # Slurm signals 110 s before the 2 min limit, i.e. 10 s after the start
    # plus up to 30 s (its check interval); the limit is raised after the stop
    sbatch_opts+=(--time=2 --signal=B:USR1@110)
else
    sbatch_opts+=(--time=15 --signal=B:USR1@60)
fi
t=$(date +%s)
JOBID=$(sbatch "${sbatch_opts[@]}" "$SRC/slurm/moepack.sbatch" "$T/slurm.ini" --quiet) ||
    fail "sbatch failed"
say "submitted job $JOBID: sbatch ${sbatch_opts[*]:1} slurm/moepack.sbatch slurm.ini --quiet"
first_layer() { [ "$(ndone "$T/slurm")" -ge 1 ]; }
wait_for 120 "the job to commit its first layer" first_layer
say "job $JOBID is $(job_field JobState), $(ndone "$T/slurm") layer(s) committed"
if [ "$INTERRUPT" = timelimit ]; then
    say "waiting for Slurm to send SIGUSR1 (--signal=B:USR1@110 with --time=2)"
else
    say "scancel --signal=USR1 --batch $JOBID (what --signal=B:USR1 does before the time limit)"
    scancel --signal=USR1 --batch "$JOBID" || fail "scancel --signal failed"
fi
requeued() { grep -q "requeueing job $JOBID" "$T/slurm.out" 2>/dev/null; }
wait_for 120 "the job to stop with exit 12 and requeue itself" requeued
AT_STOP=$(ndone "$T/slurm")
say "stopped with exit 12 and requeued after $AT_STOP of $NLAYERS layers; state $(job_field JobState), restarts $(job_field Restarts)"
if [ "$AT_STOP" -lt 1 ] || [ "$AT_STOP" -ge "$NLAYERS" ]; then
    fail "expected a partial checkpoint at the stop, found $AT_STOP of $NLAYERS layers"
fi
# the files of the committed layers, to check that the restart keeps them
# (same inode and mtime) instead of computing them again
committed_files() {
    find "$T/slurm/checkpoint/calib" -name DONE -exec dirname {} \; |
        while IFS= read -r d; do find "$d" -type f; done | sort
}
if [ "$INTERRUPT" = timelimit ]; then
    # the job has shown that Slurm's warning signal stops it; a 2 min limit is
    # too short for a resumed run to get far, so lift it for the rest
    scontrol update jobid="$JOBID" TimeLimit=15 || fail "scontrol update TimeLimit failed"
    say "raised the time limit to 15 min so that the requeued job can finish"
fi
committed_files | xargs stat -c '%i %Y %s %n' >"$T/at_stop.lst"
finished() { # finished LOG: the job has ended
    local st
    st=$(job_field JobState)
    case $st in
    COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE | PREEMPTED)
        return 0
        ;;
    "") # purged after MinJobAge: the log has the last word
        grep -qE "moepack (finished|failed|stopped .* not requeueing)" "$1"
        return
        ;;
    esac
    return 1
}
wait_for "$(left)" "the requeued job to finish" finished "$T/slurm.out"
SLURM_S=$(($(date +%s) - t))
STATE=$(job_field JobState)
RESTARTS=$(job_field Restarts)
EXITCODE=$(job_field ExitCode)
say "job $JOBID ended: state ${STATE:-purged}, restarts ${RESTARTS:-?}, exit ${EXITCODE:-?}, ${SLURM_S} s from submission"
echo "--- job output ($T/slurm.out)"
tr '\r' '\n' <"$T/slurm.out" | grep -v '^ *$' | sed 's/^/    /'
echo "---"
[ -z "$STATE" ] || [ "$STATE" = COMPLETED ] || fail "job ended $STATE"
[ -z "$EXITCODE" ] || [ "$EXITCODE" = 0:0 ] || fail "job exit code $EXITCODE"
[ -z "$RESTARTS" ] || [ "$RESTARTS" -ge 1 ] || fail "job was not requeued (Restarts=$RESTARTS)"
if [ "$INTERRUPT" = scancel ] && [ -n "$RESTARTS" ] && [ "$RESTARTS" -ne 1 ]; then
    fail "expected exactly one restart, got $RESTARTS"
fi
n=$(grep -c "moepack.sbatch.*start [0-9]* on" "$T/slurm.out")
[ "$n" -ge 2 ] || fail "the output shows $n start(s), expected a start after the requeue"
tail -n 1 "$T/slurm.out" | grep -q "moepack finished (exit 0)" || fail "last line of the job output is not 'moepack finished (exit 0)'"
[ "$(ndone "$T/slurm")" -ge "$NLAYERS" ] || fail "the job committed $(ndone "$T/slurm") of $NLAYERS layers"

cut -d' ' -f4- "$T/at_stop.lst" | xargs stat -c '%i %Y %s %n' | cmp -s - "$T/at_stop.lst" ||
    fail "files of layers committed before the stop were rewritten after the restart"
say "the $AT_STOP layers committed before the stop were kept by the restart ($(wc -l <"$T/at_stop.lst") files unchanged)"
ppl() { tr '\r' '\n' <"$1" | grep -E 'baseline perplexity' | tail -n 1; }
if [ -n "$(ppl "$T/ref.log")" ]; then
    [ "$(ppl "$T/ref.log")" = "$(ppl "$T/slurm.out")" ] ||
        fail "perplexity differs: reference '$(ppl "$T/ref.log")', job '$(ppl "$T/slurm.out")'"
fi

# ---- same bytes as the uninterrupted run: calib and every other stage directory
for stage in "$T/ref/checkpoint"/*/; do
    stage=$(basename "$stage")
    say "comparing ref/checkpoint/$stage with slurm/checkpoint/$stage"
    [ -d "$T/slurm/checkpoint/$stage" ] || fail "the job wrote no checkpoint/$stage"
    if ! diff -rq "$T/ref/checkpoint/$stage" "$T/slurm/checkpoint/$stage" >"$T/diff.txt" 2>&1; then
        head -n 20 "$T/diff.txt"
        fail "checkpoint/$stage differs ($(wc -l <"$T/diff.txt") differences)"
    fi
    nfiles=0
    while IFS= read -r f; do
        cmp -s "$f" "$T/slurm/checkpoint/$stage/${f#"$T/ref/checkpoint/$stage/"}" || fail "$f differs"
        nfiles=$((nfiles + 1))
    done < <(find "$T/ref/checkpoint/$stage" -type f)
    say "identical: $nfiles files, $(du -sh "$T/slurm/checkpoint/$stage" | cut -f1)"
done
[ -d "$T/ref/checkpoint/calib" ] || fail "no checkpoint/calib in the reference"

# ---- a failing job: exit code passed through, no requeue
printf '[model]\npath = %s/no-such-model\n[calibration]\ntokens = %s/model/tokens.h5\n[output]\ndir = %s/bad\n' \
    "$T" "$T" "$T" >"$T/bad.ini"
JOBID=$(sbatch --parsable -D "$T" --job-name=moepack-bad --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 \
    --time=5 --output="$T/bad.out" "$SRC/slurm/moepack.sbatch" "$T/bad.ini" --quiet) || fail "sbatch failed"
say "submitted job $JOBID with a missing model"
wait_for 90 "the failing job to end" finished "$T/bad.out"
STATE=$(job_field JobState)
RESTARTS=$(job_field Restarts)
EXITCODE=$(job_field ExitCode)
say "job $JOBID ended: state ${STATE:-purged}, restarts ${RESTARTS:-?}, exit ${EXITCODE:-?}"
grep -E '^\[moepack.sbatch' "$T/bad.out" | sed 's/^/    /'
tail -n 1 "$T/bad.out" | grep -qE "moepack failed \(exit [0-9]+\)" || fail "no 'moepack failed' in the job output"
code=$(tail -n 1 "$T/bad.out" | sed -n 's/.*moepack failed (exit \([0-9]*\)).*/\1/p')
[ "$code" != 12 ] || fail "a missing model gave exit 12"
[ -z "$STATE" ] || [ "$STATE" = FAILED ] || fail "failing job ended $STATE, expected FAILED"
[ -z "$EXITCODE" ] || [ "$EXITCODE" = "$code:0" ] || fail "Slurm exit code $EXITCODE, moepack said $code"
[ -z "$RESTARTS" ] || [ "$RESTARTS" -eq 0 ] || fail "failing job was requeued"
JOBID=""

say "PASSED (reference ${REF_S} s, Slurm job ${SLURM_S} s with one stop and requeue)"
