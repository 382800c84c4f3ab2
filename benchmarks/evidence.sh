#!/usr/bin/env bash
# The matrix that decides the paper's claims (issue: evidence), on CIFAR-10 (JPEG q75 copy): one budget
# for every entry, the full 10,000-image test set, 3 seeds, run in the order that decides the most first.
# Each stage is one `pnnh compare` into benchmarks/results/evidence/<stage>/. Finished runs keep their
# small files (config.json, model.json, metrics.jsonl; checkpoints are not committed), so running this
# again, on this machine or a fresh clone, continues where it stopped and never mixes settings (compare
# refuses a run folder whose recorded config differs; an interrupted run resumes from its last.pt).
#   bash benchmarks/evidence.sh                # every stage, in order, one run at a time
#   bash benchmarks/evidence.sh a_depth56      # one stage
#   JOBS=2 bash benchmarks/evidence.sh         # two runs at once, one torch thread each (2 cores)
#   JOBS=2 bash benchmarks/evidence.sh vit12 vit24   # the ViTs (issue: ViTs), their own recipe and folder
#   SEEDS=5 JOBS=2 bash benchmarks/evidence.sh vit12 # seeds 0-4: adds seeds 3 and 4 to the finished 0-2
#   JOBS=2 bash benchmarks/evidence.sh nc_a56 nc_a56_plain ...   # near convergence (NC_ORDER below)
# With JOBS>1 the (stage, seed, entry) runs are taken from one queue, seed 0 of a stage before seed 1,
# by JOBS workers with OMP_NUM_THREADS=1 each; each run is a one-entry, one-seed `compare --no-report`,
# and the closing full compare of each stage, which only reads the finished runs, writes its report.
# To stop: kill this script's process group (TERM; an interrupted run resumes from its last.pt).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-1}
export OMP_NUM_THREADS=${THREADS:-$(( JOBS > 1 ? 1 : 2 ))}
PNNH=${PNNH:-.venv/bin/pnnh}
PYTHON=${PYTHON:-.venv/bin/python}
[[ ${SEEDS:-3} =~ ^[1-9][0-9]*$ ]] || { echo "SEEDS must be a number of seeds (seeds 0 to SEEDS-1), got '$SEEDS'" >&2; exit 2; }
SEEDS_GIVEN=${SEEDS:-}  # 3 by default (the verdict needs 3 and reads every finished seed), or STAGE_SEEDS below
# The budget: residual resnet56 must reach at least 75% test accuracy on it: 20,000 x 8 reached 76.37%
# (one seed; 10,000 x 15 reached 74.41%; benchmarks/results/recipe/README.md). compare refuses to mix budgets.
RECIPE=(--data imagefolder --data-dir "${DATA_DIR:-../shared/data/cifar10-jpeg}" --train-subset 20000
        --epochs 8 --batch-size 128 --opt sgd --lr 0.2 --sched onecycle --label-smoothing 0.1
        --weight-decay 5e-4 --workers 0 --channels-last)
# The ViTs' budget: a Transformer recipe (AdamW, warm-up + cosine, label smoothing, gradient clipping) on
# 10,000 images x 10 epochs; into benchmarks/results/evidence_vit/ (one verdict never mixes budgets).
# Tested after epochs 5 and 10 only: a ViT's pass over the 10,000 test images costs about 40% of a
# training epoch on this CPU, so testing every epoch would add about a third to the matrix.
# bf16 with channels-last: 2.2-2.5x float32 on one AMX thread, the kinds rounded alike, and the residual
# vit_cifar_12 (seed 0) at 47.21% against 47.98% in float32 (benchmarks/results/precision/README.md).
# A CPU without bf16 units emulates it at about 0.07x: the ViT stages then refuse to start.
VIT_RECIPE=(--data imagefolder --data-dir "${DATA_DIR:-../shared/data/cifar10-jpeg}" --train-subset 10000
            --epochs 10 --batch-size 128 --opt adamw --lr 1e-3 --weight-decay 0.05 --sched cosine
            --warmup-epochs 1 --label-smoothing 0.1 --clip-grad 1.0 --eval-every 5 --workers 0
            --amp bf16 --channels-last)
# Near convergence (issue: evidence near convergence): the time-to-accuracy recipe `cifar-fast` on all
# 50,000 training images at NC_EPOCHS epochs, into benchmarks/results/evidence_nc/ (one budget there);
# the gap against the budget at about 1/4 and 1/2 of it into evidence_nc_gap/<stage>/ (a budget each).
# benchmarks/verdict.py reads the matrix a lent GPU ran (benchmarks/results/gpu_nc_cifar-fast/); a seed
# it lacks joins it from a CPU only with the very same settings, data path included (DATA_DIR=/tmp/lease/
# data/cifar10-jpeg, the lease's unpacked copy of the same folder, and OUT_NC=.../gpu_nc_cifar-fast).
# NC_EPOCHS is the candidate where residual resnet56 reaches 88% (two seeds at 25 epochs are being run
# by benchmarks/time_to_accuracy.py; the budget is settled when its mean of 3 seeds is >= 88%).
NC_EPOCHS=${NC_EPOCHS:-25}
NC_DATA=(--data imagefolder --data-dir "${DATA_DIR:-../shared/data/cifar10-jpeg}" --workers 0)
NC_RECIPE=(--recipe cifar-fast --epochs "$NC_EPOCHS" "${NC_DATA[@]}")
NC_QUARTER=(--recipe cifar-fast --epochs $(( NC_EPOCHS / 4 )) "${NC_DATA[@]}")
NC_HALF=(--recipe cifar-fast --epochs $(( NC_EPOCHS / 2 )) "${NC_DATA[@]}")
# Is it the learning rate? The 20k x 8 budget at half and double its lr 0.2 (the lr 0.2 runs are stages
# a and c), into evidence_lr/<stage>/ (a budget each).
LR_HALF=("${RECIPE[@]}" --lr 0.1)
LR_DOUBLE=("${RECIPE[@]}" --lr 0.4)
recipe() {
  case $1 in
    vit*) echo VIT_RECIPE ;; nc_quarter) echo NC_QUARTER ;; nc_half) echo NC_HALF ;; nc_*) echo NC_RECIPE ;;
    lr_half) echo LR_HALF ;; lr_double) echo LR_DOUBLE ;; *) echo RECIPE ;;
  esac
}
out() {
  case $1 in
    vit*) echo benchmarks/results/evidence_vit/$1 ;; nc_quarter|nc_half) echo benchmarks/results/evidence_nc_gap/$1 ;;
    nc_*) echo "${OUT_NC:-benchmarks/results/evidence_nc}/$1" ;; lr_*) echo benchmarks/results/evidence_lr/$1 ;;
    *) echo benchmarks/results/evidence/$1 ;;
  esac
}
# Entries are separated by spaces here (an entry's own options by commas). The default pnnh coder computes
# the residual function (an A/A calibration); code_ratio < 1 and learned coders are the PNNH evidence.
# f and g: the other ways to train a deep plain net (docs/skip-free.md), at the same budget.
declare -A STAGES=(
  [a_depth56]="resnet56:residual resnet56:plain resnet56:pnnh"
  [b_thin56]="resnet56:residual:learner_ratio=0.5 resnet56:pnnh:learner_ratio=0.5 resnet56:plain:learner_ratio=0.5"
  [c_width56]="resnet56:pnnh:code_ratio=0.0625 resnet56:pnnh:code_ratio=0.25 resnet56:pnnh:code_ratio=0.5"
  [d_learned56]="resnet56:pnnh:coder=learned,coder_share=stage resnet56:pnnh:coder=learned,coder_share=block"
  [e_depth110]="resnet110:residual resnet110:plain resnet110:pnnh resnet110:pnnh:code_ratio=0.25"
  [f_skipfree56]="resnet56:tat resnet56:looks_linear resnet56:dirac resnet56:repvgg"
  [g_skipfree110]="resnet110:tat resnet110:looks_linear resnet110:dirac resnet110:repvgg"
  [vit12]="vit_cifar_12:residual vit_cifar_12:plain vit_cifar_12:pnnh vit_cifar_12:pnnh:code_ratio=0.5"
  [vit24]="vit_cifar_24:residual vit_cifar_24:plain vit_cifar_24:pnnh vit_cifar_24:pnnh:code_ratio=0.5"
  [nc_a56]="resnet56:residual resnet56:pnnh:code_ratio=0.5 resnet56:pnnh:coder=learned,coder_share=block"
  [nc_a56_plain]="resnet56:plain"
  [nc_b110]="resnet110:residual resnet110:pnnh:code_ratio=0.5"
  [nc_b110_plain]="resnet110:plain"
  [nc_c_thin56]="resnet56:residual:learner_ratio=0.5 resnet56:pnnh:learner_ratio=0.5"
  [nc_c_default56]="resnet56:pnnh"
  [nc_d_skipfree56]="resnet56:dirac"
  [nc_quarter]="resnet56:residual resnet56:pnnh:code_ratio=0.5"
  [nc_half]="resnet56:residual resnet56:pnnh:code_ratio=0.5"
  [lr_half]="resnet56:residual resnet56:pnnh:code_ratio=0.5"
  [lr_double]="resnet56:residual resnet56:pnnh:code_ratio=0.5"
)
ORDER=(a_depth56 b_thin56 c_width56 d_learned56 e_depth110 f_skipfree56 g_skipfree110)
# The near-convergence matrix, in the order that decides the most first (run it by naming it: NC_ORDER).
NC_ORDER=(nc_a56 nc_a56_plain nc_b110 nc_b110_plain nc_quarter nc_half nc_d_skipfree56 lr_half lr_double nc_c_thin56
          nc_c_default56)
# Seeds per stage where the matrix asks for fewer than 3 (SEEDS=N overrides them all).
declare -A STAGE_SEEDS=([nc_a56_plain]=1 [nc_b110]=2 [nc_b110_plain]=1 [nc_c_thin56]=2 [nc_c_default56]=1
                        [nc_quarter]=2 [nc_half]=2 [lr_half]=2 [lr_double]=2)
seeds_of() { seq 0 $(( ${SEEDS_GIVEN:-${STAGE_SEEDS[$1]:-3}} - 1 )); }

main() {  # one function, parsed whole before it runs: editing this file mid-run cannot change a running matrix
stages=("${@:-${ORDER[@]}}")
real_bf16() {  # bf16 on real units: a CPU with amx_bf16 or avx512_bf16 (CPUINFO: a stand-in for tests), or a GPU
  grep -qE 'amx_bf16|avx512_bf16' "${CPUINFO:-/proc/cpuinfo}" 2>/dev/null \
    || "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null
}
for stage in "${stages[@]}"; do
  [ -n "${STAGES[$stage]:-}" ] || { echo "unknown stage $stage; stages: ${ORDER[*]} vit12 vit24 ${NC_ORDER[*]}" >&2; exit 2; }
  if [[ $stage == vit* ]] && ! real_bf16; then
    echo "stage $stage trains in bf16, which this CPU has no units for (emulated, about 14x slower than" \
         "float32): run it on a CPU with amx_bf16 or avx512_bf16, or a GPU" >&2; exit 2
  fi
  # The recipe trains in float32 on a CPU without bf16 units: such a seed cannot join a bf16 matrix
  if [[ $stage == nc_* && -n ${OUT_NC:-} ]] && ! real_bf16; then
    echo "stage $stage into OUT_NC=$OUT_NC: this CPU has no bf16 units, so the recipe would train in float32" \
         "and its runs could not join that matrix (bf16); leave OUT_NC unset (evidence_nc/, a budget of its" \
         "own) or run it on a CPU with amx_bf16 or avx512_bf16" >&2; exit 2
  fi
done

full_compare() {  # the stage's report over every entry and seed (trains whatever is missing)
  local stage=$1 seeds entries
  local -n args=$(recipe "$stage")
  seeds=$(seeds_of "$stage" | paste -sd,); entries=${STAGES[$stage]// /,}
  echo "== $stage: $entries" >&2
  "$PNNH" compare "${args[@]}" --seeds "$seeds" --entries "$entries" --output "$(out "$stage")"
}

if [ "$JOBS" -le 1 ]; then
  for stage in "${stages[@]}"; do full_compare "$stage"; done
  return 0
fi

queue=$(mktemp -d); trap 'rm -rf "$queue"' EXIT
n=0
for stage in "${stages[@]}"; do
  for seed in $(seeds_of "$stage"); do
    for entry in ${STAGES[$stage]}; do
      printf '%s %s %s\n' "$stage" "$seed" "$entry" > "$queue/$(printf '%04d' $n)"; n=$((n + 1))
    done
  done
done
worker() {
  local job stage seed entry
  for job in "$queue"/[0-9][0-9][0-9][0-9]; do  # not the .taken marks
    mkdir "$job.taken" 2>/dev/null || continue  # atomic: one worker per run
    read -r stage seed entry < "$job"
    local -n args=$(recipe "$stage")
    echo "== worker $1: $stage seed $seed $entry" >&2
    "$PNNH" compare "${args[@]}" --seed "$seed" --seeds 1 --entries "$entry" --output "$(out "$stage")" --no-report \
      || echo "== worker $1: $stage seed $seed $entry failed (exit $?)" >&2  # a finished run is skipped
  done
}
pids=()
for w in $(seq 1 "$JOBS"); do worker "$w" & pids+=($!); done
wait "${pids[@]}"
for stage in "${stages[@]}"; do full_compare "$stage"; done
}

main "$@"; exit
