#!/usr/bin/env bash
# One reflowma stage as a workflow job:  job.sh NPROC LOG STAGE ARGS...
#
# NPROC > 1 runs the stage under torchrun (NPROC ranks on this node); 1 runs one process.
# LOG receives stdout and stderr; the rerun of a requeued Slurm job starts it with the log of the
# interrupted run, so it shows the interrupted attempt, the requeue and the resumed one.
# Preemption: a stage that SIGTERM/SIGINT interrupted saves its state and exits 143/130. Inside
# a Slurm job (and unless REFLOWMA_REQUEUE=0) this script then requeues the job
# (`scontrol requeue`): Slurm reruns the same job id, which resumes from the saved state, and
# Snakemake keeps waiting for it. Any other exit status is passed on unchanged, so real
# failures still fail the job (and the workflow: the profile keeps `retries: 0`).
set -u
nproc=$1
log=$2
shift 2
# Snakemake deletes a rule's log before it runs the rule, a rerun of a requeued job included:
# the requeue saves the log as $log.requeued-JOBID and that job's rerun starts from it.
saved="$log.requeued-${SLURM_JOB_ID:-}"
exec >"$log" 2>&1
if [ -n "${SLURM_JOB_ID:-}" ] && [ -f "$saved" ]; then
    cat "$saved"
    echo "[job.sh] Slurm job $SLURM_JOB_ID restarted after its requeue"
fi
rm -f "$log".requeued-*
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
# A plain `scancel` (the user cancelling) also sends SIGTERM; the job must stay cancelled.
# Its state then reads COMPLETING (CANCELLED once it has ended), whereas a signal alone
# (`scancel --signal=TERM`, `sbatch --signal=TERM@N`) leaves it RUNNING: requeue only then
# (measured on Slurm 22.05; a preemption that Slurm requeues itself is not RUNNING either).
if [ -n "$preempted" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    state=$(scontrol -o show job "$SLURM_JOB_ID" 2>/dev/null | grep -o 'JobState=[A-Z_]*')
    if [ "$state" != JobState=RUNNING ]; then
        echo "[job.sh] Slurm job $SLURM_JOB_ID is ${state#JobState=} (exit $rc): not requeued"
        preempted=
    fi
fi
if [ -n "$preempted" ] && [ -n "${SLURM_JOB_ID:-}" ] && [ "${REFLOWMA_REQUEUE:-1}" != 0 ]; then
    echo "[job.sh] preempted (exit $rc): requeueing Slurm job $SLURM_JOB_ID"
    cp "$log" "$saved"
    if scontrol requeue "$SLURM_JOB_ID"; then
        # The requeue ends this run of the job (Slurm signals and kills it, sleep included):
        # report no failure meanwhile.
        sleep 600
    else
        rm -f "$saved"
    fi
fi
exit "$rc"
