"""Parameter and MAC counts, computed on the meta device so even resnet152 costs no arithmetic."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import PnnhError
from .models import KINDS, create_model, list_models, model_family, model_info
from .progress import bar


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
    with torch.device("meta"):
        model = create_model(name, kind=kind, **kwargs)
    input_size = tuple(model.default_cfg["input_size"])
    return {"model": name, "kind": kind, "params": count_params(model),
            "macs": count_macs(model, input_size), "input_size": list(input_size)}


def model_table(pattern: str | None = None) -> list[dict]:
    """``pnnh models``: every registered model (matching ``pattern``) with its parameters and MACs per kind."""
    names = list_models(pattern)
    if not names:
        raise PnnhError(f"no model matches the pattern {pattern!r}; try `pnnh models` for the full list")
    rows = []
    for name in bar(names, desc="models", unit="model"):
        kinds = model_info(name)["kinds"]
        per_kind = {kind: model_summary(name, kind) for kind in kinds}
        rows.append({"model": name, "family": model_family(name), "kinds": list(kinds),
                     "input_size": per_kind["residual"]["input_size"],
                     "params": {k: s["params"] for k, s in per_kind.items()},
                     "macs": {k: s["macs"] for k, s in per_kind.items()}})
    return rows


def format_model_table(rows: list[dict]) -> str:
    """One line per model: parameters (millions) and GMACs of each kind, "-" where its family does not build it."""
    width = {k: max(15, len(k) + 7) for k in KINDS}  # "looks_linear params" is wider than a number
    lines = [f"{'model':<13} {'family':<13} {'input':<11} " + " ".join(
        f"{k + ' params':>{width[k]}} {k + ' GMACs':>{width[k]}}" for k in KINDS)]
    for r in rows:
        size = "x".join(str(s) for s in r["input_size"])
        cells = " ".join(f"{r['params'][k] / 1e6:>{width[k] - 1}.3f}M {r['macs'][k] / 1e9:>{width[k]}.3f}"
                         if k in r["params"] else f"{'-':>{width[k]}} {'-':>{width[k]}}" for k in KINDS)
        lines.append(f"{r['model']:<13} {r['family']:<13} {size:<11} {cells}")
    return "\n".join(lines)
