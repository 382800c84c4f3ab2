#!/usr/bin/env bash
# One lease of a GPU machine (this workplace's `device` tool: one command, a few minutes, a bare machine
# with PyTorch and without this package): check the machine, smoke-test every entry of the matrix on the
# GPU, then the near-convergence matrix (benchmarks/gpu.sh MATRIX=nc RECIPE=cifar-fast) until LEASE
# seconds after the start, and pack the finished runs' small files into $OUT/results.tgz.
# Before the lease, here: the data travel in an ignored folder named in the call's carry,
#   mkdir -p .gpu && echo /.gpu/ >> .git/info/exclude
#   (cd ../shared/data && tar czf "$OLDPWD/.gpu/cifar10-jpeg.tar.gz" cifar10-jpeg)      # 20 MB
# On the lease (2026-12-04, results in benchmarks/results/gpu_nc_cifar-fast/):
#   OUT=$OUT LEASE=555 CONCURRENT=6 bash benchmarks/gpu_lease.sh
# A rehearsal on the CPU (seconds of each run; nothing finishes):
#   PYTHON=.venv/bin/python OUT=/tmp/lease-out DEVICE=cpu LEASE=100 CONCURRENT=2 \
#     SMOKE_ARGS="--epochs 1 --warmup-epochs 0.5 --train-subset 512 --test-subset 256 --batch-size 64" bash benchmarks/gpu_lease.sh
set -u
T0=$(date +%s)
OUT=${OUT:?}
LEASE=${LEASE:-560}
DEVICE=${DEVICE:-cuda}
CONCURRENT=${CONCURRENT:-6}
SMOKE_ARGS=${SMOKE_ARGS:-"--epochs 1 --warmup-epochs 0.5 --train-subset 2048 --test-subset 1024"}
ROOT=$PWD
{ date -u; nvidia-smi 2>&1 | head -20; python3 -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  nproc; free -g; grep -m1 'model name' /proc/cpuinfo; } > "$OUT/machine.txt" 2>&1
mkdir -p /tmp/lease/data /tmp/lease/bin
tar xzf .gpu/cifar10-jpeg.tar.gz -C /tmp/lease/data || { echo "lease: data did not unpack" >&2; exit 1; }
printf '#!/bin/sh\nexec %s -m pnnh "$@"\n' "${PYTHON:-python3}" > /tmp/lease/bin/pnnh; chmod +x /tmp/lease/bin/pnnh
export PNNH=/tmp/lease/bin/pnnh PYTHONPATH=$ROOT/src PNNH_CACHE_DIR=/tmp/lease/cache OMP_NUM_THREADS=1 \
       PYTHONUNBUFFERED=1 DATA_DIR=/tmp/lease/data/cifar10-jpeg
# every entry of the matrix for one short epoch on this device (it also decodes the images into the cache)
# shellcheck disable=SC2086
$PNNH compare --recipe cifar-fast --data imagefolder --data-dir "$DATA_DIR" --workers 0 --device "$DEVICE" $SMOKE_ARGS \
  --entries resnet20:residual,resnet20:plain,resnet20:pnnh:code_ratio=0.5,resnet20:pnnh:coder=learned,coder_share=block,resnet20:pnnh:learner_ratio=0.5,resnet20:pnnh \
  --seeds 1 --output /tmp/lease/smoke --no-report > "$OUT/smoke.log" 2>&1 || { echo "lease: smoke failed"; tail -30 "$OUT/smoke.log"; exit 1; }
echo "lease: smoke passed at $(( $(date +%s) - T0 )) s"
# the committed finished runs come along (same data path, so compare counts them done): the matrix continues
mkdir -p /tmp/lease/results && cp -rn benchmarks/results/gpu_nc_cifar-fast/. /tmp/lease/results/
DEADLINE=$(( LEASE - ($(date +%s) - T0) )) MATRIX=nc RECIPE=cifar-fast CONCURRENT=$CONCURRENT DEVICE=$DEVICE \
  OUT=/tmp/lease/results bash benchmarks/gpu.sh > "$OUT/gpu.log" 2>&1
echo "lease: gpu.sh exit $? at $(( $(date +%s) - T0 )) s"
tail -5 "$OUT/gpu.log"
mkdir -p /tmp/lease/results; (cd /tmp/lease/results && tar czf "$OUT/results.tgz" --exclude='*.pt' --exclude='*.safetensors' .)
ls -la "$OUT"; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv 2>/dev/null | tail -1
