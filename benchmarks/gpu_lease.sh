#!/usr/bin/env bash
# One lease of a GPU machine (this workplace's `device` tool: one command, a few minutes, a bare machine
# with PyTorch and without this package): check the machine, smoke-test every entry of the matrices on the
# GPU, then side by side until LEASE seconds after the start the near-convergence matrix (benchmarks/gpu.sh
# MATRIX=nc RECIPE=cifar-fast, NC_CONCURRENT runs at a time) and the skip-free kinds at the 20,000 x 8
# budget (MATRIX=skipfree, SF_CONCURRENT at a time; 0 leaves it out), and pack the finished runs' small
# files into $OUT/results_nc.tgz and $OUT/results_skipfree.tgz.
# Before the lease, here: the data and the tat kind's packages (dks and what it imports; scipy is
# unpacked there only if the machine lacks it) travel in an ignored folder named in the call's carry,
#   mkdir -p .gpu/wheels && echo /.gpu/ >> .git/info/exclude
#   (cd ../shared/data && tar czf "$OLDPWD/.gpu/cifar10-jpeg.tar.gz" cifar10-jpeg)      # 20 MB
#   pip download --no-deps -d .gpu/wheels dks==0.1.2 autograd absl-py
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#     -d .gpu/wheels scipy                                                              # 36 MB
# On the lease (2026-12-04, results in benchmarks/results/gpu_nc_cifar-fast/):
#   OUT=$OUT LEASE=555 NC_CONCURRENT=6 bash benchmarks/gpu_lease.sh
# NC_PACE and SF_PACE: gpu.sh's PACE for each matrix (microseconds per epoch x depth; 0 trusts the first
# runs): at 12 processes on the H200 a 25-epoch resnet56 took about 420 s (NC_PACE=300000) and a 20k x 8
# resnet56 about 140 s (SF_PACE=310000)
# On the second lease (2026-12-04, skip-free results in benchmarks/results/gpu_skipfree_evidence/):
#   OUT=$OUT LEASE=580 NC_CONCURRENT=6 SF_CONCURRENT=6 bash benchmarks/gpu_lease.sh
# A lease's calls run at most 600 s each; a second call made at once (the machine stays warm for 30 s, so
# /tmp/lease is still there) resumes the runs the first one stopped from their last.pt. The resnet110
# runs of MATRIX=nc need about 500 s with 6 runs sharing the GPU and about 700 s with 12.
# A rehearsal on the CPU (seconds of each run; nothing finishes):
#   PYTHON=.venv/bin/python OUT=/tmp/lease-out DEVICE=cpu LEASE=100 NC_CONCURRENT=1 SF_CONCURRENT=1 \
#     SMOKE_ARGS="--epochs 1 --warmup-epochs 0.5 --train-subset 512 --test-subset 256 --batch-size 64" bash benchmarks/gpu_lease.sh
set -u
T0=$(date +%s)
OUT=${OUT:?}
LEASE=${LEASE:-560}
DEVICE=${DEVICE:-cuda}
NC_CONCURRENT=${NC_CONCURRENT:-6}
SF_CONCURRENT=${SF_CONCURRENT:-0}
SMOKE_ARGS=${SMOKE_ARGS:-"--epochs 1 --warmup-epochs 0.5 --train-subset 512 --test-subset 256"}  # 2048/1024 cost 86 s
ROOT=$PWD
{ date -u; nvidia-smi 2>&1 | head -20; python3 -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  nproc; free -g; grep -m1 'model name' /proc/cpuinfo; } > "$OUT/machine.txt" 2>&1
mkdir -p /tmp/lease/data /tmp/lease/bin
tar xzf .gpu/cifar10-jpeg.tar.gz -C /tmp/lease/data || { echo "lease: data did not unpack" >&2; exit 1; }
mkdir -p /tmp/lease/site  # wheels are zip files: unpacked, not installed, so nothing of the machine changes
for w in .gpu/wheels/*.whl; do
  [ -e "$w" ] || continue
  case $w in */scipy-*) "${PYTHON:-python3}" -c "import scipy" 2>/dev/null && continue ;; esac
  python3 -m zipfile -e "$w" /tmp/lease/site
done
printf '#!/bin/sh\nexec %s -m pnnh "$@"\n' "${PYTHON:-python3}" > /tmp/lease/bin/pnnh; chmod +x /tmp/lease/bin/pnnh
export PNNH=/tmp/lease/bin/pnnh PYTHONPATH=$ROOT/src:/tmp/lease/site PNNH_CACHE_DIR=/tmp/lease/cache OMP_NUM_THREADS=1 \
       PYTHONUNBUFFERED=1 DATA_DIR=/tmp/lease/data/cifar10-jpeg
# every entry of the matrix for one short epoch on this device (it also decodes the images into the cache)
if [ "$NC_CONCURRENT" -gt 0 ]; then
  # shellcheck disable=SC2086
  $PNNH compare --recipe cifar-fast --data imagefolder --data-dir "$DATA_DIR" --workers 0 --device "$DEVICE" $SMOKE_ARGS \
    --entries resnet20:residual,resnet20:plain,resnet20:pnnh:code_ratio=0.5,resnet20:pnnh:coder=learned,coder_share=block,resnet20:pnnh:learner_ratio=0.5,resnet20:pnnh \
    --seeds 1 --output /tmp/lease/smoke --no-report > "$OUT/smoke.log" 2>&1 || { echo "lease: smoke failed"; tail -30 "$OUT/smoke.log"; exit 1; }
fi
echo "lease: smoke passed at $(( $(date +%s) - T0 )) s"
if [ "$SF_CONCURRENT" -gt 0 ]; then  # the skip-free kinds; without them the nc matrix goes on alone
  # shellcheck disable=SC2086
  $PNNH compare --data imagefolder --data-dir "$DATA_DIR" --workers 0 --device "$DEVICE" $SMOKE_ARGS \
    --entries resnet20:tat,resnet20:looks_linear,resnet20:dirac,resnet20:repvgg \
    --seeds 1 --output /tmp/lease/smoke_sf --no-report > "$OUT/smoke_sf.log" 2>&1 ||
    { echo "lease: skip-free smoke failed, MATRIX=skipfree left out"; tail -5 "$OUT/smoke_sf.log"; SF_CONCURRENT=0; }
fi
# the committed finished runs come along (same data path, so compare counts them done): the matrices continue
mkdir -p /tmp/lease/results /tmp/lease/results_sf
cp -rn benchmarks/results/gpu_nc_cifar-fast/. /tmp/lease/results/
[ -d benchmarks/results/gpu_skipfree_evidence ] && cp -rn benchmarks/results/gpu_skipfree_evidence/. /tmp/lease/results_sf/
LEFT=$(( LEASE - ($(date +%s) - T0) ))
matrix() {  # one gpu.sh matrix into its work folder until the lease's deadline, then its small files packed
  local name=$1 recipe=$2 concurrent=$3 pace=$4 work=$5
  DEADLINE=$LEFT PACE=$pace MATRIX=$name RECIPE=$recipe CONCURRENT=$concurrent DEVICE=$DEVICE OUT=$work \
    bash benchmarks/gpu.sh > "$OUT/gpu_$name.log" 2>&1
  echo "lease: gpu.sh MATRIX=$name exit $? at $(( $(date +%s) - T0 )) s"; tail -3 "$OUT/gpu_$name.log"
  (cd "$work" && tar czf "$OUT/results_$name.tgz" --exclude='*.pt' --exclude='*.safetensors' .)
}
[ "$SF_CONCURRENT" -gt 0 ] && matrix skipfree evidence "$SF_CONCURRENT" "${SF_PACE:-0}" /tmp/lease/results_sf &
[ "$NC_CONCURRENT" -gt 0 ] && matrix nc cifar-fast "$NC_CONCURRENT" "${NC_PACE:-0}" /tmp/lease/results &
wait
ls -la "$OUT"; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv 2>/dev/null | tail -1
