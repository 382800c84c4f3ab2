#!/usr/bin/env bash
# CPU throughput of the kinds (issue: performance): pnnh bench at depth 20, 56, 110 and batch 64, 128
# (medians of 5 interleaved repeats), the plain form's inference at batch 1 and 64, and the CPU settings
# (bf16, channels-last, compile) side by side. JSON in benchmarks/results/throughput/.
# THREADS=1 runs each process on one thread (as when another job holds the other core).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/results/throughput
mkdir -p "$OUT"
PNNH=${PNNH:-.venv/bin/pnnh}
export OMP_NUM_THREADS=${THREADS:-2}
for depth in 20 56 110; do
  m=resnet$depth
  for batch in 64 128; do
    repeats=5; [ "$m$batch" = resnet110128 ] && repeats=9   # its 5-round spread was wide: more rounds
    "$PNNH" bench --entries "$m:residual,$m:plain,$m:pnnh,$m:pnnh:learner_ratio=0.5,$m:pnnh:plain_form" \
      --batch-size $batch --repeats $repeats --json > "$OUT/${m}_b${batch}.json"
  done
done
"$PNNH" bench --entries resnet56:residual,resnet56:pnnh,resnet56:pnnh:plain_form,resnet56:plain,resnet56:plain:plain_form \
  --batch-size 1 --repeats 5 --steps 20 --json > "$OUT/resnet56_b1.json"
.venv/bin/python benchmarks/cpu_settings.py --model resnet56 --kinds residual,pnnh --batch-size 32 --rounds 3 \
  --steps 2 --compile > "$OUT/cpu_settings_resnet56.json"
if grep -qw amx_bf16 /proc/cpuinfo; then  # a CPU with bf16 units (AMX): where bf16 is not emulated
  .venv/bin/python benchmarks/cpu_settings.py --model resnet56 --kinds residual,pnnh --batch-size 64 --rounds 5 \
    --steps 3 > "$OUT/cpu_settings_resnet56_amx.json"
  .venv/bin/python benchmarks/cpu_settings.py --model vit_cifar_12 --kinds residual,pnnh --batch-size 64 --rounds 3 \
    --steps 2 > "$OUT/cpu_settings_vit_cifar_12_amx.json"
fi
# The throughput claim's controls (benchmarks/verdict.py): every pnnh variant of the evidence matrix and the
# thin residual net, channels-last as the matrix trains. Pause other torch jobs while this runs.
"$PNNH" bench --entries "resnet56:residual,resnet56:plain,resnet56:pnnh,resnet56:pnnh:code_ratio=0.0625,\
resnet56:pnnh:code_ratio=0.25,resnet56:pnnh:code_ratio=0.5,resnet56:pnnh:coder=learned,coder_share=stage,\
resnet56:pnnh:coder=learned,coder_share=block,resnet56:residual:learner_ratio=0.5,resnet56:pnnh:learner_ratio=0.5" \
  --batch-size 128 --repeats 5 --channels-last --json > "$OUT/resnet56_controls_b128.json"
# The CIFAR ViTs in the three kinds (issue: ViTs), with resnet56 for scale.
"$PNNH" bench --entries "vit_cifar_12:residual,vit_cifar_12:plain,vit_cifar_12:pnnh,vit_cifar_24:residual,\
vit_cifar_24:plain,vit_cifar_24:pnnh,resnet56:residual" --batch-size 64 --repeats 5 --steps 2 --json > "$OUT/vit_cifar_b64.json"
