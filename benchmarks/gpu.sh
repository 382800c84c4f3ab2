#!/usr/bin/env bash
# resnet56 in the three kinds at a full CIFAR-10 budget, on one CUDA GPU, in about 8 minutes (issue: evidence).
# The three kinds train at once on the one GPU (a resnet56 step does not fill an H200), each a one-seed
# `pnnh compare` into the same folder; a closing compare writes the side-by-side report (accuracy on the
# full 10,000-image test set, img/s, command, versions) without training anything again.
#   bash benchmarks/gpu.sh                      # RECIPE=fast: 30 epochs, batch 512, one-cycle, bf16
#   RECIPE=he bash benchmarks/gpu.sh            # He et al. 2016: 164 epochs, batch 128, lr 0.1 /10 at 50% and 75%
#   DATA_DIR=/data/cifar10-jpeg OUT=... SEED=1  # where the CIFAR-10 JPEG copy is, where the report goes
# Smoke test on a CPU (seconds, not a result): DEVICE=cpu EXTRA="--train-subset 256 --test-subset 256 --epochs 1 --batch-size 64"
set -euo pipefail
cd "$(dirname "$0")/.."
PNNH=${PNNH:-.venv/bin/pnnh}
RECIPE=${RECIPE:-fast}
DEVICE=${DEVICE:-cuda}
SEED=${SEED:-0}
OUT=${OUT:-benchmarks/results/gpu_$RECIPE}
DATA_DIR=${DATA_DIR:-../shared/data/cifar10-jpeg}
[ -d "$DATA_DIR/train" ] || { echo "gpu.sh: no CIFAR-10 image folder at $DATA_DIR (train/ and test/); set DATA_DIR" >&2; exit 2; }
case "$RECIPE" in
  he)   ARGS=(--epochs 164 --batch-size 128 --opt sgd --lr 0.1 --sched step --weight-decay 1e-4) ;;
  fast) ARGS=(--epochs 30 --batch-size 512 --opt sgd --lr 0.4 --sched onecycle --label-smoothing 0.1
              --weight-decay 5e-4) ;;
  *)    echo "gpu.sh: RECIPE is he or fast, not $RECIPE" >&2; exit 2 ;;
esac
ARGS+=(--data imagefolder --data-dir "$DATA_DIR" --workers 0 --device "$DEVICE" --channels-last --seed "$SEED" --seeds 1)
[ "$DEVICE" = cuda ] && ARGS+=(--amp bf16 --compile)
# shellcheck disable=SC2206
ARGS+=(${EXTRA:-})
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2
start=$(date +%s)
pids=()
for kind in residual plain pnnh; do
  "$PNNH" compare "${ARGS[@]}" --entries "resnet56:$kind" --output "$OUT" > /dev/null 2> "$OUT.$kind.log" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
[ "$status" = 0 ] || { echo "gpu.sh: a training failed (exit $status); logs in $OUT.*.log" >&2; exit "$status"; }
echo "gpu.sh: three trainings in $(( $(date +%s) - start )) s" >&2
"$PNNH" compare "${ARGS[@]}" --entries resnet56:residual,resnet56:plain,resnet56:pnnh --output "$OUT"
