"""Parameter and MAC counts, computed on the meta device so even resnet152 costs no arithmetic."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Learned parameters (shared ones once; a frozen coder's buffer is not a parameter)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one image of ``input_size`` (C, H, W)."""
    device = next(model.parameters()).device
    x = torch.empty(1, *input_size, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2


def model_summary(name: str, kind: str, **kwargs) -> dict:
    """{"model", "kind", "params", "macs", "input_size"} of a registered model, built on the meta device."""
    from .models import create_model

    with torch.device("meta"):
        model = create_model(name, kind=kind, **kwargs)
    input_size = tuple(model.default_cfg["input_size"])
    return {"model": name, "kind": kind, "params": count_params(model),
            "macs": count_macs(model, input_size), "input_size": list(input_size)}
