#!/usr/bin/env bash
# The matrix that decides the paper's claims (issue: evidence), on CIFAR-10 (JPEG q75 copy): one budget
# for every entry, the full 10,000-image test set, 3 seeds, run in the order that decides the most first.
# Each stage is one `pnnh compare` into benchmarks/results/evidence/<stage>/. Finished runs keep their
# small files (config.json, model.json, metrics.jsonl; checkpoints are not committed), so running this
# again, on this machine or a fresh clone, continues where it stopped and never mixes settings (compare
# refuses a run folder whose recorded config differs).
#   bash benchmarks/evidence.sh            # every stage, in order
#   bash benchmarks/evidence.sh a_depth56  # one stage
# THREADS (default 2) sets torch's threads: run two stages at once with THREADS=1 each on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${THREADS:-2}
PNNH=${PNNH:-.venv/bin/pnnh}
OUT=benchmarks/results/evidence
# The budget: residual resnet56 must reach at least 75% test accuracy on it: 20,000 x 8 reached 76.37%
# (one seed; 10,000 x 15 reached 74.41%; benchmarks/results/recipe/README.md). compare refuses to mix budgets.
RECIPE=(--data imagefolder --data-dir "${DATA_DIR:-../shared/data/cifar10-jpeg}" --train-subset 20000
        --epochs 8 --batch-size 128 --opt sgd --lr 0.2 --sched onecycle --label-smoothing 0.1
        --weight-decay 5e-4 --workers 0 --channels-last --seeds 3)
declare -A STAGES=(
  [a_depth56]="resnet56:residual,resnet56:plain,resnet56:pnnh"
  [b_thin56]="resnet56:residual:learner_ratio=0.5,resnet56:pnnh:learner_ratio=0.5,resnet56:plain:learner_ratio=0.5"
  [c_width56]="resnet56:pnnh:code_ratio=0.0625,resnet56:pnnh:code_ratio=0.25,resnet56:pnnh:code_ratio=0.5"
  [d_learned56]="resnet56:pnnh:coder=learned,coder_share=stage,resnet56:pnnh:coder=learned,coder_share=block"
  [e_depth110]="resnet110:residual,resnet110:plain,resnet110:pnnh,resnet110:pnnh:code_ratio=0.25"
)
ORDER=(a_depth56 b_thin56 c_width56 d_learned56 e_depth110)
for stage in "${@:-${ORDER[@]}}"; do
  [ -n "${STAGES[$stage]:-}" ] || { echo "unknown stage $stage; stages: ${ORDER[*]}" >&2; exit 2; }
  echo "== $stage: ${STAGES[$stage]}" >&2
  "$PNNH" compare "${RECIPE[@]}" --entries "${STAGES[$stage]}" --output "$OUT/$stage"
done
