#!/usr/bin/env bash
# GPU check (run on a CUDA machine from the repo root; writes to $OUT, default ./gpu-check):
# the four stages with device=cuda on the toy preset (K = 4, window-start term on; arms
# lambda = 0, lambda = 0.1 exact log-det, lambda = 0.1 Hutchinson), their evaluations with the
# marginal audit, the per-step cost of each arm on CUDA vs CPU (benchmarks/step_time.py), and the
# regularizer/solver tests under the machine's torch. Offline: wheels for packages the image
# lacks are taken from .gpu-wheels/ when present.
set -euo pipefail
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
PY=${PY:-python3}
if [ -d .gpu-wheels ]; then
  $PY -m pip install -q --no-index --find-links .gpu-wheels jsonschema pot || true
fi
export PYTHONPATH=$PWD/src REFLOWMA_ROOT=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
W="$OUT/work"; mkdir -p "$W"
run() { local s=$SECONDS; "$@"; echo "[time] $((SECONDS - s)) s: ${*:3:1} "; }
run $PY -m reflowma teacher --params toy --out "$W/t" device=cuda
run $PY -m reflowma couplings --params toy --teacher "$W/t/teacher.pt" --out "$W/c.h5" device=cuda
for arm in "lam0 regularizer.weight=0.0" "exact regularizer.weight=0.1 regularizer.logdet=exact" \
           "hutch regularizer.weight=0.1 regularizer.logdet=hutchinson"; do
  set -- $arm
  name=$1; shift
  run $PY -m reflowma reflow --params toy --couplings "$W/c.h5" --teacher "$W/t/teacher.pt" \
    --out "$W/$name" device=cuda K=4 window_start_weight=1.0 "$@" &
done
wait
for name in lam0 exact hutch; do
  OMP_NUM_THREADS=4 $PY -m reflowma evaluate --params toy --student "$W/$name/student.pt" \
    --teacher "$W/t/teacher.pt" --couplings "$W/c.h5" --out "$OUT/eval_$name.json" \
    audit.enabled=true n_samples=1000 &
done
wait
for name in lam0 exact hutch; do
  $PY -c "import json,sys; m=json.load(open('$W/$name/metrics.json'))['metrics']; \
print('$name', 'sec/step', round(m['seconds_per_step'], 5), 'heldout TM', round(m['heldout_tm_loss'], 5))"
done
for b in 256 4096; do $PY benchmarks/step_time.py --device cuda --batch $b --steps 50; done
$PY benchmarks/step_time.py --device cuda --dim 64 --batch 1024 --steps 30
OMP_NUM_THREADS=4 $PY benchmarks/step_time.py --device cpu --batch 256 --steps 20
$PY -m pytest -q -p no:cacheprovider tests/test_regularizer.py tests/test_solvers.py \
  tests/test_interpolant.py tests/test_score.py 2>&1 | tail -3
