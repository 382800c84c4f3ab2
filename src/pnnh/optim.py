"""The optimiser and its learning-rate schedule, per optimiser step."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from .config import TrainConfig


def lr_factor(step: int, total: int, warmup: int, sched: str) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` of ``total``."""
    if sched == "onecycle":  # linear up over the first 30% (or the warm-up), linear down to 0
        peak = warmup or max(1, int(0.3 * total))
        return (0.04 + 0.96 * step / peak) if step < peak else max(0.0, (total - step) / max(1, total - peak))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if sched == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if sched == "step":  # He et al.: divide by 10 at 50% and 75% of training
        return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
    return 1.0


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    no_weight_decay = getattr(model, "no_weight_decay", None)  # timm's convention: names to leave undecayed
    skip = no_weight_decay() if callable(no_weight_decay) else set()
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: TrainConfig, model: nn.Module, steps_per_epoch: int, device: torch.device
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, torch.amp.GradScaler]:
    """The optimiser (SGD, Nesterov unless ``cfg.nesterov`` is off, or AdamW; no weight decay on norms,
    biases and coders), its per-step learning-rate schedule, and the fp16 gradient scaler (a no-op
    otherwise)."""
    groups = param_groups(model, cfg.weight_decay)
    optimizer: torch.optim.Optimizer
    if cfg.opt == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                    nesterov=cfg.nesterov and cfg.momentum > 0)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    total, warmup = cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, cfg.sched))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16" and device.type == "cuda")
    return optimizer, scheduler, scaler


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` to hold the exponential moving average of its weights."""
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """After optimiser step ``step`` (1-based): ema <- d ema + (1 - d) model for every floating tensor of the
    state (weights and BatchNorm statistics; counters are copied), with d = min(decay, (1 + step) / (10 + step))
    so that the average does not lean on the initial weights early on (timm's ModelEma warm-up)."""
    d = min(decay, (1 + step) / (10 + step))
    pairs = list(zip(ema.state_dict().values(), model.state_dict().values()))
    floats = [(average, current) for average, current in pairs if average.is_floating_point()]
    if floats:  # one call for all of them, not one per tensor (each a kernel launch on a GPU)
        torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1 - d)
    for average, current in pairs:
        if not average.is_floating_point():
            average.copy_(current)
