#!/usr/bin/env bash
# A real single-node Slurm for tests (Debian 12: munge + slurmctld + slurmd 22.05, no systemd).
#
# Usage: local-slurm.sh start|stop|status|env
#   start   install the Debian packages if slurmctld is missing (needs root + apt-get), write
#           $STATE/slurm.conf, start munged/slurmctld/slurmd as plain binaries and wait until
#           the node is idle. Idempotent: if our daemons already run, it only reports.
#   stop    kill exactly the daemons that `start` recorded in $STATE/pids, nothing else.
#   status  show the recorded daemons and `sinfo`; exit 0 if running, 1 if not.
#   env     print `export SLURM_CONF=...`: eval "$(workflow/scripts/local-slurm.sh env)"
#
# STATE defaults to ${REFLOWMA_SLURM_STATE:-/tmp/reflowma-slurm}.
# Exit codes: 0 ok, 1 failure, 2 usage, 77 Slurm is missing and cannot be installed here.
# Background and the gotchas behind each choice: docs/slurm.md.
set -euo pipefail

STATE="${REFLOWMA_SLURM_STATE:-/tmp/reflowma-slurm}"
CONF="$STATE/slurm.conf"
PIDS="$STATE/pids"            # lines "<name> <pid>" for every daemon this script started
START_TIMEOUT="${REFLOWMA_SLURM_TIMEOUT:-60}"
MUNGE_RUN=/run/munge
MUNGE_KEY=/etc/munge/munge.key
# Snakemake's Slurm jobstep runs `srun` with every SLURM_* variable but the job ids removed, so
# SLURM_CONF does not reach it: srun inside a job only finds the default /etc/slurm/slurm.conf.
SYS_CONF=/etc/slurm/slurm.conf

log() { echo "[local-slurm] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- pid bookkeeping -------------------------------------------------------------------------

# alive NAME PID: the pid exists, is no zombie and still runs the binary we started (guards
# pid reuse).
alive() {
    local name=$1 pid=$2 comm stat
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }   # fields after "pid (comm) ": the first is the state
    [[ $comm == "$name" && ${stat%% *} != Z ]]
}

# Print "name pid" for each recorded daemon that is still alive.
recorded_alive() {
    [[ -f $PIDS ]] || return 0
    local name pid
    while read -r name pid; do
        [[ -n ${pid:-} ]] && alive "$name" "$pid" && echo "$name $pid"
    done <"$PIDS"
    return 0
}

# record NAME PIDFILE: wait briefly for a forking daemon's pid file, check it, note the pid.
record() {
    local name=$1 pidfile=$2 pid=""
    for _ in $(seq 50); do
        if [[ -s $pidfile ]]; then
            pid=$(tr -dc '0-9' <"$pidfile")
            [[ -n $pid ]] && alive "$name" "$pid" && break
        fi
        pid=""
        sleep 0.1
    done
    [[ -n $pid ]] || return 1
    echo "$name $pid" >>"$PIDS"
    log "started $name (pid $pid)"
}

kill_recorded() {
    local running name pid
    running=$(recorded_alive)
    if [[ -n $running ]]; then
        # Reverse order of start: slurmd, slurmctld, then munged.
        while read -r name pid; do
            log "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
        done < <(tac <<<"$running")
        for _ in $(seq 100); do
            [[ -z $(recorded_alive) ]] && break
            sleep 0.1
        done
        while read -r name pid; do
            [[ -n ${pid:-} ]] || continue
            log "$name (pid $pid) ignored SIGTERM for 10 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        done < <(recorded_alive)
    fi
    rm -f "$PIDS"
    unlink_sys_conf
}

# --- installation ----------------------------------------------------------------------------

install_packages() {
    command -v slurmctld >/dev/null 2>&1 && return 0
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        log "slurmctld is not installed and cannot be installed here (needs root and apt-get)"
        exit 77
    fi
    local pkgs=(munge slurmctld slurmd slurm-client) policy=/usr/sbin/policy-rc.d created=0
    # Keep apt from starting the daemons itself (there may be no systemd; we start our own).
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created=1
    fi
    log "installing ${pkgs[*]} (apt-get)"
    local rc=0 out
    out=$(DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${pkgs[@]}" 2>&1) ||
        rc=$?
    if [[ $rc -ne 0 ]]; then
        log "apt-get install failed (rc $rc); running apt-get update and retrying"
        rc=0
        out=$(DEBIAN_FRONTEND=noninteractive apt-get update -q 2>&1 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
                "${pkgs[@]}" 2>&1) || rc=$?
    fi
    [[ $created -eq 1 ]] && rm -f "$policy"
    if [[ $rc -ne 0 ]]; then
        tail -n 20 <<<"$out" >&2
        die "apt-get install ${pkgs[*]} failed (rc $rc)"
    fi
    command -v slurmctld >/dev/null 2>&1 || die "slurmctld still not on PATH after install"
}

# --- configuration ---------------------------------------------------------------------------

write_conf() {
    local host node mem
    host=$(hostname -s)
    # `slurmd -C` prints this machine's node line, e.g.
    # NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=N
    node=$(slurmd -C 2>/dev/null | grep -m1 '^NodeName=') || die "slurmd -C printed no node line"
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
    [[ -n $mem ]] || die "no RealMemory in: $node"
    mem=$((mem * 9 / 10))   # leave headroom, slurmd drains a node that reports less than this
    node=$(sed -e "s/^NodeName=[^ ]*/NodeName=$host NodeAddr=127.0.0.1/" \
        -e "s/RealMemory=[0-9]*/RealMemory=$mem/" <<<"$node")
    cat >"$CONF" <<EOF
# Written by workflow/scripts/local-slurm.sh; rewritten on every start.
ClusterName=reflowma
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it starts again (default 120): the
# preemption tests requeue jobs, so keep it short here.
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
# No cgroups needed: memory is scheduled, not enforced.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
ReturnToService=2
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmdSpoolDir=$STATE/spool
StateSaveLocation=$STATE/state
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# No slurmdbd: sacct does not work, Snakemake must poll with squeue. squeue only sees a
# finished job for MinJobAge seconds; the Slurm executor plugin wants MinJobAge >= 3x its
# first-poll delay and its polls back off to 180 s, hence 600.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
${node} State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

# Point $SYS_CONF at our conf with a symlink (`stop` removes it), unless another conf is there
# (a file, or a link elsewhere that resolves): then srun inside jobs reads that one, so warn.
link_sys_conf() {
    if [[ ! -e $SYS_CONF || (-L $SYS_CONF && $(readlink "$SYS_CONF") == "$CONF") ]]; then
        mkdir -p "$(dirname "$SYS_CONF")"
        ln -sfn "$CONF" "$SYS_CONF"
        log "linked $SYS_CONF -> $CONF (for srun inside jobs)"
    else
        log "WARNING: $SYS_CONF exists and is not ours: srun inside Snakemake jobs will use it"
    fi
}

unlink_sys_conf() {
    if [[ -L $SYS_CONF && $(readlink "$SYS_CONF") == "$CONF" ]]; then
        rm -f "$SYS_CONF"
        log "removed link $SYS_CONF"
    fi
}

# --- munge -----------------------------------------------------------------------------------

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_works; then
        log "munged already answers on $MUNGE_RUN: using it (not ours, stop leaves it alone)"
        return 0
    fi
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating munge key $MUNGE_KEY"
        mkdir -p "$(dirname "$MUNGE_KEY")"
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile="$MUNGE_KEY" --force
        else
            create-munge-key -f
        fi
    fi
    chown munge:munge "$MUNGE_KEY" "$(dirname "$MUNGE_KEY")"
    chmod 0400 "$MUNGE_KEY"
    chmod 0700 "$(dirname "$MUNGE_KEY")"
    mkdir -p "$MUNGE_RUN" /var/lib/munge /var/log/munge
    chown munge:munge "$MUNGE_RUN" /var/lib/munge /var/log/munge
    chmod 0755 "$MUNGE_RUN"
    rm -f "$MUNGE_RUN/munged.pid"
    # Daemons get no stdio of ours (a caller capturing our output would otherwise wait on it).
    runuser -u munge -- munged </dev/null >>"$STATE/log/munged.out" 2>&1 ||
        die "munged failed to start: $(tail -n 5 "$STATE/log/munged.out")"
    record munged "$MUNGE_RUN/munged.pid" || die "munged wrote no pid file"
    for _ in $(seq 50); do munge_works && return 0; sleep 0.1; done
    fail_start "munged started but munge -n | unmunge fails"
}

# --- subcommands -----------------------------------------------------------------------------

node_state() { SLURM_CONF=$CONF sinfo -h -N -o '%t' 2>/dev/null | head -n1; }

# Our slurmctld and slurmd are alive and sinfo gets an answer.
is_running() {
    local running
    running=$(recorded_alive)
    grep -q '^slurmctld ' <<<"$running" && grep -q '^slurmd ' <<<"$running" &&
        [[ -n $(node_state) ]]
}

fail_start() {
    log "ERROR: $*"
    local f
    for f in "$STATE"/log/*.out "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" \
        /var/log/munge/munged.log; do
        [[ -s $f ]] || continue
        log "--- tail of $f"
        tail -n 15 "$f" >&2
    done
    kill_recorded
    exit 1
}

cmd_start() {
    if is_running; then
        log "already running (state $STATE, node $(node_state)); nothing to do"
        return 0
    fi
    install_packages
    # Half-started or stale: stop whatever we recorded, then wipe the state (a changed
    # ClusterName with old saved state makes slurmctld refuse to start).
    kill_recorded
    local name pid other=""
    for name in slurmctld slurmd; do
        for pid in $(pgrep -x "$name" || true); do
            alive "$name" "$pid" && other+="$pid "
        done
    done
    [[ -z $other ]] || die "slurmctld/slurmd not started by us already run (pids $other);" \
        "stop them first (this script never kills processes it did not start)"
    rm -rf "$STATE/state" "$STATE/spool" "$STATE/log" "$STATE/run" "$CONF"
    mkdir -p "$STATE/state" "$STATE/spool" "$STATE/log" "$STATE/run"
    write_conf
    log "wrote $CONF"
    link_sys_conf
    start_munge
    slurmctld -f "$CONF" </dev/null >>"$STATE/log/slurmctld.out" 2>&1 ||
        fail_start "slurmctld failed to start"
    record slurmctld "$STATE/run/slurmctld.pid" || fail_start "slurmctld did not stay up"
    slurmd -f "$CONF" </dev/null >>"$STATE/log/slurmd.out" 2>&1 ||
        fail_start "slurmd failed to start"
    record slurmd "$STATE/run/slurmd.pid" || fail_start "slurmd did not stay up"
    local t0=$SECONDS state="" n
    n=$(recorded_alive | wc -l)
    while ((SECONDS - t0 < START_TIMEOUT)); do
        state=$(node_state)
        [[ $state == idle ]] && break
        [[ $(recorded_alive | wc -l) -eq $n ]] || fail_start "a daemon exited while starting"
        sleep 0.2
    done
    [[ $state == idle ]] ||
        fail_start "node not idle after ${START_TIMEOUT}s (sinfo state: '${state:-none}')"
    log "ready: node $(hostname -s) idle, partition debug; SLURM_CONF=$CONF"
}

cmd_stop() {
    if [[ ! -f $PIDS ]]; then
        log "nothing recorded in $PIDS: nothing to stop"
        unlink_sys_conf
        return 0
    fi
    kill_recorded
    log "stopped"
}

cmd_status() {
    local running line
    running=$(recorded_alive)
    if [[ -n $running ]]; then
        log "state $STATE; running:"
        while read -r line; do echo "  $line" >&2; done <<<"$running"
    fi
    if is_running; then
        SLURM_CONF=$CONF sinfo -N >&2 || true
        return 0
    fi
    log "not running or not answering (state $STATE)"
    return 1
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) printf 'export SLURM_CONF=%q\n' "$CONF" ;;
*)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
