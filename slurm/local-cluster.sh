#!/bin/bash
# local-cluster.sh - start or stop a one-node Slurm cluster on this machine, for
# tests of slurm/moepack.sbatch (tests/slurm_test.sh) and for trying the script
# by hand. Everything lives in one directory: slurm.conf, a private munged
# (own key, own socket), slurmctld/slurmd state, spool, logs and pid files.
# Nothing outside the directory is written and no system service is touched.
#
#   slurm/local-cluster.sh start  [DIR]   write the config, start munged, slurmctld,
#                                         slurmd; wait until the node is idle
#   slurm/local-cluster.sh stop   [DIR]   stop the three daemons (and wait for them)
#   slurm/local-cluster.sh status [DIR]   daemons and `sinfo`
#   slurm/local-cluster.sh env    [DIR]   print `export SLURM_CONF=DIR/slurm.conf`
#
# DIR defaults to ${TMPDIR:-/tmp}/moepack-slurm-$(id -u). start and stop are
# idempotent: start on a running cluster only waits for the node, stop on a
# stopped one does nothing. Needs root (slurmd runs jobs as their users; this
# cluster has SlurmUser=root), munged, slurmctld, slurmd and the Slurm clients.
# Ports: SLURMCTLD_PORT (default 6817) and SLURMD_PORT (default 6818).
# Timeout for the node to come up: LOCAL_CLUSTER_WAIT seconds (default 60).
set -eu

cmd=${1:-}
DIR=${2:-${TMPDIR:-/tmp}/moepack-slurm-$(id -u)}
CTLD_PORT=${SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}
WAIT=${LOCAL_CLUSTER_WAIT:-60}

die() { echo "local-cluster: $*" >&2; exit 1; }
say() { echo "local-cluster: $*"; }

case $cmd in
start | stop | status | env) ;;
*)
    echo "usage: $0 start|stop|status|env [DIR]" >&2
    exit 2
    ;;
esac

if [ "$cmd" != start ] && [ ! -d "$DIR" ]; then
    [ "$cmd" = env ] || { echo "local-cluster: no cluster in $DIR"; exit 0; }
fi
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd -P)
CONF=$DIR/slurm.conf
SOCK=$DIR/munge/munge.socket.2
export SLURM_CONF=$CONF

# pid_alive PIDFILE: the pid in PIDFILE is a running process
pid_alive() {
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# stop_daemon NAME PIDFILE: SIGTERM, wait up to 20 s, then SIGKILL
stop_daemon() {
    local name=$1 pidfile=$2 pid i
    if ! pid_alive "$pidfile"; then
        rm -f "$pidfile"
        return 0
    fi
    pid=$(cat "$pidfile")
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name did not stop in 20 s, killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pidfile"
}

# node_state: the node's state as sinfo reports it ("" if slurmctld is down)
node_state() {
    sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n 1
}

do_stop() {
    # jobs first: their slurmstepd and tasks would outlive slurmd. SIGKILL
    # right away (this is teardown), then wait until slurmctld has none left.
    if pid_alive "$DIR/slurmctld.pid" && pid_alive "$DIR/slurmd.pid"; then
        local i
        scancel --full --signal=KILL --state=RUNNING 2>/dev/null || true
        scancel --state=PENDING 2>/dev/null || true
        scancel --state=SUSPENDED 2>/dev/null || true
        for i in $(seq 1 60); do
            [ -z "$(squeue -h -o %i -t RUNNING,COMPLETING,SUSPENDED 2>/dev/null)" ] && break
            [ "$i" -eq 1 ] && say "waiting for jobs to end"
            sleep 0.5
        done
    fi
    stop_daemon slurmd "$DIR/slurmd.pid"
    stop_daemon slurmctld "$DIR/slurmctld.pid"
    stop_daemon munged "$DIR/munge/munged.pid"
    say "stopped (state kept in $DIR)"
}

write_config() {
    local cpus mem line
    line=$(slurmd -C | head -n 1) || die "slurmd -C failed"
    cpus=$(echo "$line" | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p')
    mem=$(echo "$line" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    if [ -z "$cpus" ] || [ -z "$mem" ]; then die "cannot parse 'slurmd -C': $line"; fi
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    : >"$DIR/plugstack.conf" # no SPANK plugins from /etc/slurm
    cat >"$CONF.tmp" <<EOF
# one-node test cluster written by slurm/local-cluster.sh; do not edit
ClusterName=moepacktest
SlurmctldHost=$NODE
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$DIR/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# schedule within seconds (a requeued job becomes eligible cred_expire+1 s later)
SchedulerParameters=bf_interval=2,sched_interval=2
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=10
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

start_munged() {
    if pid_alive "$DIR/munge/munged.pid"; then
        return 0
    fi
    mkdir -p "$DIR/munge"
    # munged refuses a socket directory writable by others
    chmod 0755 "$DIR" "$DIR/munge"
    if [ ! -s "$DIR/munge/munge.key" ]; then
        # a private key: 1024 random bytes, readable only by the owner
        (umask 077 && dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 2>/dev/null)
    fi
    chmod 0600 "$DIR/munge/munge.key"
    say "starting munged (socket $SOCK)"
    munged --force --socket="$SOCK" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
        --seed-file="$DIR/munge/munged.seed" ||
        die "munged did not start; see $DIR/munge/munged.log"
    for _ in $(seq 1 50); do
        [ -S "$SOCK" ] && break
        sleep 0.1
    done
    [ -S "$SOCK" ] || die "munged socket $SOCK did not appear; see $DIR/munge/munged.log"
    munge -n -S "$SOCK" | unmunge -S "$SOCK" >/dev/null ||
        die "munge round trip through $SOCK failed"
}

do_start() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (slurmd)"
    for b in munged munge unmunge slurmctld slurmd sinfo scontrol; do
        command -v "$b" >/dev/null || die "$b not found on PATH"
    done
    if ! pid_alive "$DIR/slurmctld.pid" && ! pid_alive "$DIR/slurmd.pid"; then
        write_config
    fi
    start_munged
    if ! pid_alive "$DIR/slurmctld.pid"; then
        say "starting slurmctld (log $DIR/log/slurmctld.log)"
        slurmctld -f "$CONF" || die "slurmctld did not start; see $DIR/log/slurmctld.log"
    fi
    if ! pid_alive "$DIR/slurmd.pid"; then
        say "starting slurmd (log $DIR/log/slurmd.log)"
        slurmd -f "$CONF" || die "slurmd did not start; see $DIR/log/slurmd.log"
    fi
    local i st=""
    for i in $(seq 1 $((WAIT * 2))); do
        st=$(node_state)
        case $st in
        idle* | mixed* | allocated*) break ;;
        down* | drain*)
            # a node left down by an earlier run: bring it back
            scontrol update nodename="$NODE" state=resume 2>/dev/null || true
            ;;
        esac
        sleep 0.5
    done
    case $st in
    idle* | mixed* | allocated*) ;;
    *)
        echo "--- tail of slurmctld.log" >&2
        tail -n 20 "$DIR/log/slurmctld.log" >&2 2>/dev/null || true
        echo "--- tail of slurmd.log" >&2
        tail -n 20 "$DIR/log/slurmd.log" >&2 2>/dev/null || true
        die "node $NODE not idle after ${WAIT} s (state '${st:-no answer}')"
        ;;
    esac
    say "node $NODE is $st; use:  export SLURM_CONF=$CONF"
}

NODE=$(hostname -s)

case $cmd in
start) do_start ;;
stop) do_stop ;;
status)
    for d in "munged:$DIR/munge/munged.pid" "slurmctld:$DIR/slurmctld.pid" "slurmd:$DIR/slurmd.pid"; do
        if pid_alive "${d#*:}"; then echo "${d%%:*} running (pid $(cat "${d#*:}"))"; else echo "${d%%:*} stopped"; fi
    done
    pid_alive "$DIR/slurmctld.pid" && sinfo -N
    ;;
env) echo "export SLURM_CONF=$CONF" ;;
esac
