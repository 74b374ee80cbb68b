#!/usr/bin/env bash
# GPU check for images (one command, from the repo root; about 5-8 min on one GPU):
#   bash benchmarks/gpu_check.sh                  # CUDA
#   DEVICE=cpu bash benchmarks/gpu_check.sh       # CPU smoke of the script itself (tiny sizes,
#                                                 # seconds; no mnist_smoke workflow)
# Measures, with the `mnist` preset's teacher UNet (280,177 parameters, [B, 1, 28, 28]):
#   1. teacher training steps/s at batch 128 in fp32 and bf16 autocast (train.amp), peak memory,
#      and Euler generation images/s (benchmarks/unet_throughput.py);
#   2. the stages on DEVICE: teacher, couplings (images/s of the whole command), and the
#      Hutchinson marginal regularizer's reflow step cost against the control (lambda = 0;
#      window-start term on in both), from each student's seconds_per_step;
#   3. the mnist_smoke workflow (teacher, classifier, couplings, students, evaluation with
#      fd_classifier, report) with device=cuda.
# Writes benchmarks/results/gpu_check_<device>_<time>/ (log, JSON, eval.json files, the
# report's tables and image-grid figure) and copies it to $OUT when set. Offline: wheels for
# packages the image lacks are taken from .gpu-wheels/ when present (benchmarks/gpu_wheels.py).
set -euo pipefail
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
RES=${RES:-benchmarks/results/gpu_check_${DEVICE}_$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RES"
RES=$(cd "$RES" && pwd)
exec > >(tee "$RES/gpu_check.log") 2>&1
W=$(mktemp -d)
trap 'rm -rf "$W"; if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; cp -r "$RES" "$OUT/"; fi' EXIT
if [ -f .gpu-wheels/requirements.txt ]; then  # made by benchmarks/gpu_wheels.py
  $PY -m pip install -q --no-index --find-links .gpu-wheels -r .gpu-wheels/requirements.txt || true
fi
export PYTHONPATH=$PWD/src REFLOWMA_ROOT=$PWD
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  PRESET=mnist
  THR="--batch 128 --steps 50 --warmup 5 --gen-batch 1000 --gen-steps 32"
  TEACHER="train.steps=200 train.batch_size=128 train.checkpoint_every=1000 train.log_every=50"
  COUP="n_train=2048 n_test=256 chunk_size=512 solver=euler steps=32 windows=[1]"
  REFLOW="train.steps=100 train.batch_size=128 train.checkpoint_every=1000 train.log_every=25"
else
  PRESET=mnist_smoke
  THR="--batch 4 --steps 2 --warmup 1 --gen-batch 8 --gen-steps 2"
  TEACHER="train.steps=2 train.batch_size=8 train.warmup_steps=0 train.log_every=1"
  COUP="n_train=16 n_test=8 chunk_size=8 solver=euler steps=2 windows=[1]"
  REFLOW="train.steps=3 train.batch_size=8 train.warmup_steps=0 train.log_every=1"
fi
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
run() { local s=$SECONDS; "$@"; echo "[time] $((SECONDS - s)) s: $4"; }

echo "== 1. UNet throughput (mnist teacher net)"
# shellcheck disable=SC2086
$PY benchmarks/unet_throughput.py --device "$DEVICE" --preset mnist $THR --out "$RES/unet_throughput.json" >/dev/null
$PY - "$RES/unet_throughput.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
for t in r["train"]:
    print(f"train {t['amp']:5s} batch {t['batch']}: {t['steps_per_s']:.2f} steps/s "
          f"({t['images_per_s']:.0f} images/s), peak {t.get('peak_mem_mib', float('nan')):.0f} MiB")
if "bf16_speedup" in r:
    print(f"bf16 / fp32 steps/s: {r['bf16_speedup']:.2f}")
g = r["generation"]
print(f"generation: {g['images_per_s']:.0f} images/s at {g['euler_steps']} Euler steps "
      f"(batch {g['batch']}; {g['nfe_images_per_s']:.0f} network evaluations x images / s)")
EOF

echo "== 2. stages on $DEVICE: teacher, couplings, reflow control vs Hutchinson"
# shellcheck disable=SC2086
run $PY -m reflowma teacher --params $PRESET --out "$W/t" device="$DEVICE" $TEACHER
s=$SECONDS
# shellcheck disable=SC2086
$PY -m reflowma couplings --params $PRESET --teacher "$W/t/teacher.pt" --out "$W/c.h5" \
  device="$DEVICE" $COUP
echo "couplings command: $((SECONDS - s)) s wall (start-up included) for $COUP"
for arm in "control regularizer.weight=0.0" "hutchinson regularizer.weight=0.1"; do
  set -- $arm
  name=$1; shift
  # shellcheck disable=SC2086
  run $PY -m reflowma reflow --params $PRESET --couplings "$W/c.h5" --teacher "$W/t/teacher.pt" \
    --out "$W/$name" device="$DEVICE" K=1 window_start_weight=1.0 regularizer.logdet=hutchinson \
    regularizer.warm_start=0.0 $REFLOW "$@"
done
$PY - "$W" "$RES/regularizer_cost.json" <<'EOF'
import json, sys
from pathlib import Path
w = Path(sys.argv[1])
m = {a: json.loads((w / a / "metrics.json").read_text())["metrics"] for a in ("control", "hutchinson")}
out = {a: {"seconds_per_step": v["seconds_per_step"]} for a, v in m.items()}
out["ratio"] = out["hutchinson"]["seconds_per_step"] / out["control"]["seconds_per_step"]
Path(sys.argv[2]).write_text(json.dumps(out, indent=2) + "\n")
print(f"reflow s/step: control {out['control']['seconds_per_step']:.4f}, Hutchinson "
      f"{out['hutchinson']['seconds_per_step']:.4f} ({out['ratio']:.2f}x)")
EOF

if [ "$DEVICE" = cuda ] || [ "${SMOKE:-0}" = 1 ]; then
  echo "== 3. mnist_smoke workflow on $DEVICE"
  sed "s/^seed: 0$/seed: 0\ndevice: $DEVICE/" params/presets/mnist_smoke.yaml > "$W/mnist_smoke_$DEVICE.yaml"
  s=$SECONDS
  $PY -m snakemake --cores 4 --quiet --config preset="$W/mnist_smoke_$DEVICE.yaml" \
    grid=mnist_smoke results="$W/results"
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
fi
echo "results: $RES"
