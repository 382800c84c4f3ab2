#!/usr/bin/env bash
# GPU throughput of the three kinds (issue: performance), for a machine with one CUDA GPU.
# Training and inference img/s, medians of interleaved repeats, channels-last + bf16, eager and torch.compile,
# batch 128 and 512, for resnet56 (32 px) and resnet50 (224 px), with each pnnh model's plain form (inference).
# Usage: bash benchmarks/gpu_throughput.sh [OUT_DIR]     (JSON per setting in OUT_DIR, default benchmarks/results/gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu}
mkdir -p "$OUT"
PNNH=${PNNH:-.venv/bin/pnnh}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
for model in resnet56 resnet50; do
  entries="$model:residual,$model:plain,$model:pnnh,$model:pnnh:plain_form"
  for batch in 128 512; do
    [ "$model" = resnet50 ] && [ "$batch" = 512 ] && continue   # 224 px at 512 needs ~70 GB in float32 training
    for compile in "" "--compile"; do
      name="$OUT/${model}_b${batch}_bf16_cl${compile:+_compile}.json"
      echo "== $name" >&2
      "$PNNH" bench --device cuda --entries "$entries" --batch-size "$batch" --amp bf16 --channels-last \
        --repeats 5 --steps 10 --warmup 3 $compile --json > "$name"
    done
  done
done
echo "results in $OUT" >&2
