"""Data-parallel helpers for ``torchrun``: process group set-up, and a SyncBatchNorm that also runs on CPU."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return info


def finish(info: DistInfo) -> None:
    """End a data-parallel run: wait for every process, then close the process group while Python still runs.

    gloo's worker threads drop their last reference to a collective's tensors just after the collective
    returns, and that needs the interpreter; a process that exits at once can lose the race and abort in
    interpreter shutdown ("terminate called without an active exception", SIGABRT). Call it after the
    model's DistributedDataParallel wrapper is gone, and only when every process got there (a barrier
    with a failed process would wait forever).
    """
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


class _SumOverProcesses(torch.autograd.Function):
    """all_reduce(SUM) whose gradient is the all_reduce(SUM) of the incoming gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose batch statistics cover the batches of all processes, with gradients (any backend).

    torch's SyncBatchNorm runs on GPUs only. This one sums over processes with a
    differentiable all_reduce, so each process's loss reaches every process's
    input through the shared statistics; the variance is computed in a second
    pass around the global mean (a one-pass E[x^2] - E[x]^2 loses float32 digits).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        local_count = torch.full((1,), x.numel() / x.shape[1], dtype=x.dtype, device=x.device)
        sums = _SumOverProcesses.apply(torch.cat([x.sum((0, 2, 3)), local_count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = x - mean[None, :, None, None]
        var = _SumOverProcesses.apply(centred.square().sum((0, 2, 3))) / n
        tracked, running_mean, running_var = self.num_batches_tracked, self.running_mean, self.running_var
        if tracked is not None and running_mean is not None and running_var is not None:  # track_running_stats
            with torch.no_grad():
                tracked += 1
                m = self.momentum if self.momentum is not None else 1 / float(tracked)
                running_mean.mul_(1 - m).add_(m * mean)
                running_var.mul_(1 - m).add_(m * var * n / (n - 1))
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        out = centred * scale[None, :, None, None]
        return out + self.bias[None, :, None, None] if self.bias is not None else out


def convert_sync_batchnorm(model: nn.Module, device_type: str) -> nn.Module:
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            like = next(t for t in child.state_dict().values() if t.is_floating_point())
            sync = CpuSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats, device=like.device, dtype=like.dtype)
            sync.load_state_dict(child.state_dict())
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child, device_type)
    return model


def launch(nproc: int, argv: list[str]) -> int:
    """``pnnh train --nproc N ...`` as ``torchrun --standalone --nproc_per_node=N -m pnnh train ...``
    (``argv``: the command line after ``pnnh``; its ``--nproc N`` / ``--nproc=N`` is dropped)."""
    rest = [a for i, a in enumerate(argv) if a != "--nproc" and not a.startswith("--nproc=")
            and (i == 0 or argv[i - 1] != "--nproc")]
    return subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            f"--nproc_per_node={nproc}", "-m", "pnnh", *rest])
