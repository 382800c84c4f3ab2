#!/usr/bin/env bash
# The evidence on one CUDA GPU (issues: evidence, evidence near convergence), for the day one is lent.
# Runs share the GPU (a resnet56 step does not fill an H200): each is a one-entry, one-seed `pnnh compare
# --no-report` into the folder of its budget, CONCURRENT at a time; a closing compare per folder writes the
# side-by-side report (accuracy on the full 10,000-image test set, img/s, command, versions) from the
# finished runs without training anything again. Finished runs are skipped, so it continues where it stopped.
#   bash benchmarks/gpu.sh                      # MATRIX=kinds: resnet56 residual, plain, pnnh (one seed)
#   MATRIX=nc bash benchmarks/gpu.sh            # the near-convergence matrix (benchmarks/evidence.sh NC_ORDER)
#   MATRIX=skipfree bash benchmarks/gpu.sh      # the skip-free kinds at resnet56 and resnet110 (evidence.sh's
#                                               # f_skipfree56, g_skipfree110, 3 seeds) at RECIPE=evidence, and
#                                               # residual resnet56 (2 seeds) as the control against the CPU's runs
#   RECIPE=he ...                               # He et al. 2016: 164 epochs, batch 128, lr 0.1 /10 at 50% and 75%
#   RECIPE=fast ...                             # 30 epochs, batch 512, one-cycle (the default)
#   RECIPE=evidence ...                         # benchmarks/evidence.sh's 20,000 x 8 budget, float32 as on the CPUs
#   RECIPE=cifar-fast ...                       # the CPU's time-to-accuracy recipe at EPOCHS=25, the budget of
#                                               # benchmarks/evidence.sh's near-convergence stages (NC_EPOCHS),
#                                               # plus nc_double (2x the epochs) in MATRIX=nc
#   DRY_RUN=1 MATRIX=nc RECIPE=he bash benchmarks/gpu.sh   # print the commands, run nothing (tested)
#   DATA_DIR=/data/cifar10-jpeg OUT=... SEED=1 CONCURRENT=4 EPOCHS=... COMPILE=1 (torch.compile each run)
#   DEADLINE=450: for a lease that ends. At DEADLINE seconds the runs in flight are stopped (each writes
#     last.pt, so the next call resumes it), the reports are skipped and gpu.sh exits 3; before it, a run is
#     started only if the slowest finished run's seconds per (epoch x depth) say it ends in time; PACE (in
#     microseconds per epoch x depth) is that pace before any run has finished (0: start regardless)
# Smoke test on a CPU (seconds, not a result): DEVICE=cpu EXTRA="--train-subset 256 --test-subset 256 --epochs 1 --batch-size 64"
set -euo pipefail
cd "$(dirname "$0")/.."
PNNH=${PNNH:-.venv/bin/pnnh}
MATRIX=${MATRIX:-kinds}
if [ "$MATRIX" = skipfree ]; then RECIPE=${RECIPE:-evidence}; else RECIPE=${RECIPE:-fast}; fi
DEVICE=${DEVICE:-cuda}
SEED=${SEED:-0}
CONCURRENT=${CONCURRENT:-3}
DRY_RUN=${DRY_RUN:-}
COMPILE=${COMPILE:-}
DEADLINE=${DEADLINE:-}
OUT=${OUT:-benchmarks/results/gpu_${MATRIX}_$RECIPE}
DATA_DIR=${DATA_DIR:-../shared/data/cifar10-jpeg}
[ -n "$DRY_RUN" ] || [ -d "$DATA_DIR/train" ] || {
  echo "gpu.sh: no CIFAR-10 image folder at $DATA_DIR (train/ and test/); set DATA_DIR" >&2; exit 2; }
case "$RECIPE" in
  he)   EPOCHS=${EPOCHS:-164}; ARGS=(--batch-size 128 --opt sgd --lr 0.1 --sched step --weight-decay 1e-4) ;;
  fast) EPOCHS=${EPOCHS:-30}; ARGS=(--batch-size 512 --opt sgd --lr 0.4 --sched onecycle --label-smoothing 0.1
                                    --weight-decay 5e-4) ;;
  cifar-fast) EPOCHS=${EPOCHS:-25}; ARGS=(--recipe cifar-fast) ;;
  evidence) EPOCHS=${EPOCHS:-8}; ARGS=(--train-subset 20000 --batch-size 128 --opt sgd --lr 0.2 --sched onecycle
                                       --label-smoothing 0.1 --weight-decay 5e-4) ;;
  *)    echo "gpu.sh: RECIPE is he, fast, cifar-fast or evidence, not $RECIPE" >&2; exit 2 ;;
esac
for v in CONCURRENT EPOCHS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "gpu.sh: $v is a positive whole number, not ${!v}" >&2; exit 2; }
done
[[ ${PACE:-0} =~ ^[0-9]+$ ]] || { echo "gpu.sh: PACE is microseconds per epoch x depth, not $PACE" >&2; exit 2; }
[[ $DEADLINE =~ ^[0-9]*$ ]] || { echo "gpu.sh: DEADLINE is a number of seconds, not $DEADLINE" >&2; exit 2; }
ARGS+=(--data imagefolder --data-dir "$DATA_DIR" --workers 0 --device "$DEVICE" --channels-last)
[ "$MATRIX" = kinds ] || [ "$SEED" = 0 ] || { echo "gpu.sh: SEED applies to MATRIX=kinds; the nc matrix sets its seeds" >&2; exit 2; }
[ "$MATRIX" = skipfree ] && [ "$RECIPE" != evidence ] && {
  echo "gpu.sh: MATRIX=skipfree runs at the CPUs' 20,000 x 8 budget, RECIPE=evidence, not $RECIPE" >&2; exit 2; }
[ "$DEVICE" = cuda ] && [ "$RECIPE" != evidence ] && ARGS+=(--amp bf16)  # the evidence budget is float32
[ -n "$COMPILE" ] && ARGS+=(--compile)
# shellcheck disable=SC2206
ARGS+=(${EXTRA:-})
# Runs as "stage entry seed"; a stage is one folder with one budget and one set of seeds (so its closing
# compare trains nothing). kinds: the three kinds of resnet56, into $OUT. nc: the near-convergence matrix
# of benchmarks/evidence.sh (its stages, seeds and entries), into $OUT/<stage>, in the order that decides
# the most first (so a lease that ends early has the headline); nc_quarter and nc_half at 1/4 and 1/2 of
# the epochs, and with RECIPE=cifar-fast nc_double at twice them (a budget the CPUs cannot reach).
runs=()
add() { local stage=$1 seeds=$2; shift 2; local e s
        for s in $(seq 0 $(( seeds - 1 ))); do for e in "$@"; do runs+=("$stage $e $s"); done; done; }
case "$MATRIX" in
  kinds) for kind in residual plain pnnh; do runs+=("kinds resnet56:$kind $SEED"); done ;;
  nc)
    add nc_a56 3 resnet56:residual resnet56:pnnh:code_ratio=0.5 resnet56:pnnh:coder=learned,coder_share=block
    add nc_a56_plain 1 resnet56:plain
    add nc_quarter 2 resnet56:residual resnet56:pnnh:code_ratio=0.5
    add nc_half 2 resnet56:residual resnet56:pnnh:code_ratio=0.5
    add nc_b110 2 resnet110:residual resnet110:pnnh:code_ratio=0.5
    add nc_b110_plain 1 resnet110:plain
    add nc_d_skipfree56 3 resnet56:dirac  # the best skip-free kind at 20k x 8 (docs/skip-free.md)
    [ "$RECIPE" = cifar-fast ] && add nc_double 2 resnet56:residual resnet56:pnnh:code_ratio=0.5
    add nc_c_thin56 2 resnet56:residual:learner_ratio=0.5 resnet56:pnnh:learner_ratio=0.5
    add nc_c_default56 1 resnet56:pnnh ;;
  skipfree)
    add f_skipfree56 3 resnet56:tat resnet56:looks_linear resnet56:dirac resnet56:repvgg
    add control56 2 resnet56:residual
    add g_skipfree110 3 resnet110:tat resnet110:looks_linear resnet110:dirac resnet110:repvgg ;;
  *) echo "gpu.sh: MATRIX is kinds, nc or skipfree, not $MATRIX" >&2; exit 2 ;;
esac
epochs() { case $1 in nc_quarter) echo $(( EPOCHS / 4 )) ;; nc_half) echo $(( EPOCHS / 2 )) ;;
                      nc_double) echo $(( EPOCHS * 2 )) ;; *) echo "$EPOCHS" ;; esac; }
folder() { if [ "$1" = kinds ]; then echo "$OUT"; else echo "$OUT/$1"; fi; }
run() {  # the command, or with DRY_RUN its words on stdout
  if [ -n "$DRY_RUN" ]; then echo "pnnh $*"; else "$PNNH" "$@"; fi
}
[ -z "$DRY_RUN" ] && [ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
status=0
pids=()
declare -A began cost logs  # per run in flight: start, epochs x depth (resnet110 = 110, else 56), log
per_unit=${PACE:-0}    # the slowest finished run's microseconds per unit of cost (PACE until one finishes)
cost_of() { local depth; depth=$(echo "$1" | sed -n 's/^resnet\([0-9]*\).*/\1/p'); echo $(( $2 * ${depth:-56} )); }
reap() {  # forget the runs that ended, keeping the last failure's exit status and the slowest pace
  local left=() pid rc pace
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then left+=("$pid"); continue; fi
    rc=0; wait "$pid" || rc=$?
    if [ "$rc" != 0 ]; then status=$rc; continue; fi
    grep -q "done, skipped" "${logs[$pid]}" && continue  # a run found finished sets no pace
    pace=$(( 1000000 * ($(date +%s) - began[$pid]) / cost[$pid] ))
    [ "$pace" -gt "$per_unit" ] && per_unit=$pace
  done
  pids=("${left[@]}")
}
unstarted=()
stopped=
for r in "${runs[@]}"; do
  read -r stage entry seed <<< "$r"
  cmd=(compare "${ARGS[@]}" --epochs "$(epochs "$stage")" --seed "$seed" --seeds 1 --entries "$entry"
       --output "$(folder "$stage")" --no-report)
  if [ -n "$DRY_RUN" ]; then run "${cmd[@]}"; continue; fi
  while [ "${#pids[@]}" -ge "$CONCURRENT" ] && { [ -z "$DEADLINE" ] || [ "$(elapsed)" -lt "$DEADLINE" ]; }; do
    sleep 1; reap
  done
  c=$(cost_of "$entry" "$(epochs "$stage")")
  if [ "${#pids[@]}" -ge "$CONCURRENT" ] ||
     { [ -n "$DEADLINE" ] && [ $(( $(elapsed) + per_unit * c / 1000000 )) -ge "$DEADLINE" ]; }; then
    unstarted+=("$stage $entry seed $seed;"); continue
  fi
  mkdir -p "$(folder "$stage")"
  log="$(folder "$stage")/$(echo "$entry" | tr ':,=' '---')-seed$seed.log"
  "$PNNH" "${cmd[@]}" > /dev/null 2> "$log" &  # the run itself, not a subshell: the deadline's TERM reaches it
  pids+=($!); began[$!]=$(date +%s); cost[$!]=$c; logs[$!]=$log
  echo "gpu.sh: $(elapsed) s: started $stage $entry seed $seed" >&2
done
while [ "${#pids[@]}" -gt 0 ]; do
  if [ -n "$DEADLINE" ] && [ "$(elapsed)" -ge "$DEADLINE" ]; then
    echo "gpu.sh: $(elapsed) s: the deadline; stopping ${#pids[@]} runs (each writes last.pt to resume)" >&2
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for pid in "${pids[@]}"; do wait "$pid" || true; done
    pids=(); stopped=1
  else
    sleep 1; reap
  fi
done
if [ -n "$stopped" ] || [ "${#unstarted[@]}" -gt 0 ]; then
  echo "gpu.sh: stopped at $(elapsed) s; ${#unstarted[@]} runs not started (${unstarted[*]:-none}). Run it again" \
       "to continue (finished runs are skipped, stopped ones resume); no reports written" >&2
  exit 3
fi
[ "$status" = 0 ] || { echo "gpu.sh: a training failed (exit $status); logs beside the runs in $OUT" >&2; exit "$status"; }
[ -n "$DRY_RUN" ] || echo "gpu.sh: ${#runs[@]} trainings in $(elapsed) s" >&2
for stage in $(for r in "${runs[@]}"; do echo "${r%% *}"; done | awk '!seen[$0]++'); do  # one report per stage
  entries=$(printf '%s\n' "${runs[@]}" | awk -v st="$stage" '$1 == st && !seen[$2]++ {print $2}' | paste -sd,)
  seeds=$(printf '%s\n' "${runs[@]}" | awk -v st="$stage" '$1 == st {print $3}' | sort -un | paste -sd,)
  run compare "${ARGS[@]}" --epochs "$(epochs "$stage")" --seeds "$seeds" --entries "$entries" --output "$(folder "$stage")"
done
