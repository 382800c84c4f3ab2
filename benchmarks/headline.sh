#!/usr/bin/env bash
# The project's headline experiments: CIFAR-style ResNets of depth 20, 56 and 110 in the three kinds,
# 3 seeds each, plus PNNH with half the parameters at depth 56, on CIFAR-10 (JPEG q75 copy).
# Budget (the same for every run): 2,000 training images (a fixed seeded subset), 3 epochs, batch 64,
# SGD (Nesterov) lr 0.1 one-cycle, weight decay 5e-4; 1,000 test images. About an hour on 2 CPU cores
# (57 minutes here, sharing the CPU with other work).
# A run interrupted and started again resumes where it stopped. Reports: benchmarks/results/<name>/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${PNNH_DATA_DIR:-../shared/data}/cifar10-jpeg
PNNH=${PNNH:-.venv/bin/pnnh}
COMMON=(--data imagefolder --data-dir "$DATA" --train-subset 2000 --test-subset 1000 --epochs 3
        --batch-size 64 --lr 0.1 --sched onecycle --weight-decay 5e-4 --seeds 3 --workers 0)
"$PNNH" compare --model resnet20 --kinds residual,plain,pnnh "${COMMON[@]}" --output benchmarks/results/smoke/depth20
"$PNNH" compare --entries resnet56:residual,resnet56:plain,resnet56:pnnh,resnet56:pnnh:learner_ratio=0.5 \
    "${COMMON[@]}" --output benchmarks/results/smoke/depth56
"$PNNH" compare --model resnet110 --kinds residual,plain,pnnh "${COMMON[@]}" --output benchmarks/results/smoke/depth110
