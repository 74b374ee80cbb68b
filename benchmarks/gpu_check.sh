#!/usr/bin/env bash
# GPU check of the image path (one command, from the repo root; under 8 minutes on one GPU):
#   bash benchmarks/gpu_check.sh                  # CUDA
#   DEVICE=cpu bash benchmarks/gpu_check.sh       # the script itself at toy size (a minute or
#                                                 # two; no workflow section)
# 1. benchmarks/gpu_bench.py: the cifar10 preset's teacher step with each lever alone and all
#    together (images/s, MFU against a bf16 matmul timed in the same run, bf16 speedup), its
#    student step with and without the Hutchinson regularizer, the couplings solve in fp32,
#    bf16 and compiled (image-evaluations/s, RMS difference to fp32 eager), the mnist_gpu
#    preset's stages and how many of its jobs share the GPU, and from those the projected
#    cifar10 grid hours and mnist_gpu minutes; a table against the goals
#    (docs/performance.md, "On a GPU"). Writes $RESULTS_DIR/gpu_<device name>.json
#    (default benchmarks/results/gpu_nvidia_h200.json on an H200, gpu_cpu.json on the CPU).
# 2. (CUDA, or SMOKE=1) the mnist_smoke workflow with device=cuda: teacher, classifier,
#    couplings, students, evaluation with fd_classifier, report.
# The time budget (BUDGET_S, default 450 s) covers both: the benchmark's sections run most
# important first, each in its own process with a time limit, and those that no longer fit
# are recorded as skipped; the JSON is written in every case. A log folder
# benchmarks/results/gpu_check_<device>_<time>/ (log, JSON, the workflow's eval.json files
# and report tables) is copied to $OUT when set. Offline: packages the image lacks are
# installed from .gpu-wheels/ when present (made by benchmarks/gpu_wheels.py).
set -uo pipefail
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
BUDGET_S=${BUDGET_S:-450}
T0=$SECONDS
RESULTS_DIR=${RESULTS_DIR:-benchmarks/results}
RES=${RES:-$RESULTS_DIR/gpu_check_${DEVICE}_$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RES" "$RESULTS_DIR"
RES=$(cd "$RES" && pwd)
RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)
exec > >(tee "$RES/gpu_check.log") 2>&1
W=$(mktemp -d)
finish() {
  rm -rf "$W"
  if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT" && cp -r "$RES" "$OUT/" && cp "$RESULTS_DIR"/gpu_*.json "$OUT/" 2>/dev/null
  fi
}
trap finish EXIT
if [ -f .gpu-wheels/requirements.txt ]; then
  $PY -m pip install -q --no-index --find-links .gpu-wheels -r .gpu-wheels/requirements.txt \
    || echo "pip install from .gpu-wheels failed: the sections that need them will say so"
fi
export PYTHONPATH=$PWD/src REFLOWMA_ROOT=$PWD TQDM_DISABLE=1
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  WORKFLOW_S=100  # kept for the workflow section
else
  WORKFLOW_S=0
fi
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"

echo "== 1. benchmark (benchmarks/gpu_bench.py)"
left=$((BUDGET_S - (SECONDS - T0) - WORKFLOW_S))
$PY benchmarks/gpu_bench.py --device "$DEVICE" --budget-s "$left" --out-dir "$RESULTS_DIR" \
  --work "$W/bench"
rc=$?
if [ "$rc" -ne 0 ]; then
  echo "gpu_bench.py exited with $rc"
  if ! ls "$RESULTS_DIR"/gpu_*.json >/dev/null 2>&1; then  # the JSON exists in every case
    printf '{"device_type": "%s", "error": "gpu_bench.py exited with %s before writing"}\n' \
      "$DEVICE" "$rc" > "$RESULTS_DIR/gpu_$DEVICE.json"
  fi
fi
cp "$RESULTS_DIR"/gpu_*.json "$RES/" 2>/dev/null

if [ "$DEVICE" = cuda ] || [ "${SMOKE:-0}" = 1 ]; then
  left=$((BUDGET_S - (SECONDS - T0)))
  if [ "$left" -lt 60 ]; then
    echo "== 2. mnist_smoke workflow: skipped, $left s of the budget left"
    exit 0
  fi
  echo "== 2. mnist_smoke workflow on $DEVICE (time limit $left s)"
  sed "s/^seed: 0$/seed: 0\ndevice: $DEVICE/" params/presets/mnist_smoke.yaml > "$W/mnist_smoke_$DEVICE.yaml"
  s=$SECONDS
  if timeout "$left" $PY -m snakemake --cores 4 --quiet --config \
    preset="$W/mnist_smoke_$DEVICE.yaml" grid=mnist_smoke results="$W/results"; then
    echo "[time] $((SECONDS - s)) s: mnist_smoke workflow"
    R="$W/results/mnist_smoke_$DEVICE"
    mkdir -p "$RES/mnist_smoke"
    cp "$R/classifier/mnist/seed~0/metrics.json" "$RES/mnist_smoke/classifier_metrics.json"
    for e in "$R"/eval/mnist/seed~0/*/*/*/eval.json; do
      cp "$e" "$RES/mnist_smoke/eval_$(echo "${e#"$R"/eval/mnist/seed~0/}" | tr '/~' '__')"
    done
    cp -r "$R/report/tables" "$RES/mnist_smoke/" && cp "$R"/report/figures/images_mnist.png "$RES/mnist_smoke/"
    $PY - "$R" <<'EOF'
import glob, json, sys
for f in sorted(glob.glob(f"{sys.argv[1]}/eval/mnist/seed~0/*/*/*/eval.json")):
    r = json.load(open(f))
    print(f.split("seed~0/")[1], "classifier acc", round(r["classifier"]["test_accuracy"], 4),
          "fd_classifier per NFE", {n: round(v["fd_classifier"], 3) for n, v in r["nfe"].items()},
          "teacher Euler", {n: round(v["fd_classifier"], 3) for n, v in r["teacher_euler"].items()})
EOF
  else
    echo "mnist_smoke workflow failed or ran out of time (exit $?) after $((SECONDS - s)) s"
  fi
fi
echo "[time] $((SECONDS - T0)) s in all; results: $RES"
