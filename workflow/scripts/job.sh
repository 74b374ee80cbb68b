#!/usr/bin/env bash
# One reflowma stage as a workflow job:  job.sh NPROC LOG STAGE ARGS...
#
# NPROC > 1 runs the stage under torchrun (NPROC ranks on this node); 1 runs one process.
# LOG receives stdout and stderr; a run of a requeued Slurm job appends to it, so the log keeps
# the interrupted attempt, the requeue and the resumed one.
# Preemption: a stage that SIGTERM/SIGINT interrupted saves its state and exits 143/130. Inside
# a Slurm job (and unless REFLOWMA_REQUEUE=0) this script then requeues the job
# (`scontrol requeue`): Slurm reruns the same job id, which resumes from the saved state, and
# Snakemake keeps waiting for it. Any other exit status is passed on unchanged, so real
# failures still fail the job (and the workflow: the profile keeps `retries: 0`).
set -u
nproc=$1
log=$2
shift 2
# $log.requeued holds the id of the job that requeued itself; only that job's rerun appends.
marker="$log.requeued"
if [ -n "${SLURM_JOB_ID:-}" ] && [ "$(cat "$marker" 2>/dev/null)" = "$SLURM_JOB_ID" ]; then
    exec >>"$log" 2>&1
    echo "[job.sh] Slurm job $SLURM_JOB_ID restarted after its requeue"
else
    exec >"$log" 2>&1
fi
rm -f "$marker"
signalled=
# Slurm signals every process of the job step; the trap (run once the stage has exited) only
# notes it, so this script lives on to requeue.
trap 'signalled=1' TERM INT
if [ "$nproc" -gt 1 ]; then
    "$REFLOWMA_PY" -m torch.distributed.run --standalone --nproc_per_node "$nproc" \
        -m reflowma "$@"
else
    "$REFLOWMA_PY" -m reflowma "$@"
fi
rc=$?
# 143/130: the stage saved its state. torchrun itself exits 1 when it was signalled, after its
# ranks exited 143: a non-zero status after a signal reached this script counts as well.
preempted=
if [ "$rc" -eq 143 ] || [ "$rc" -eq 130 ] || { [ -n "$signalled" ] && [ "$rc" -ne 0 ]; }; then
    preempted=1
fi
# A plain `scancel` (the user cancelling) also sends SIGTERM: the job is then CANCELLED already
# and must stay cancelled.
if [ -n "$preempted" ] && [ -n "${SLURM_JOB_ID:-}" ] &&
    scontrol -o show job "$SLURM_JOB_ID" 2>/dev/null | grep -q 'JobState=CANCELLED'; then
    echo "[job.sh] Slurm job $SLURM_JOB_ID was cancelled (exit $rc): not requeued"
    preempted=
fi
if [ -n "$preempted" ] && [ -n "${SLURM_JOB_ID:-}" ] && [ "${REFLOWMA_REQUEUE:-1}" != 0 ]; then
    echo "[job.sh] preempted (exit $rc): requeueing Slurm job $SLURM_JOB_ID"
    echo "$SLURM_JOB_ID" >"$marker"
    if scontrol requeue "$SLURM_JOB_ID"; then
        # The requeue ends this run of the job (Slurm signals and kills it, sleep included):
        # report no failure meanwhile, and leave the marker for the rerun.
        sleep 600
    else
        rm -f "$marker"
    fi
fi
exit "$rc"
