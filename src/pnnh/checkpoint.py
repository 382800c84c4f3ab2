"""Checkpoints: written atomically, read without unpickling arbitrary objects."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import PnnhError

FORMAT = "pnnh-checkpoint-v1"


def save_atomic(obj: dict, path: Path) -> None:
    """Write to a temporary file beside ``path``, then rename: a crash never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint written by ``pnnh train`` (or a bare state_dict, as ``{"model": state_dict}``).

    ``weights_only=True``: tensors, numbers, strings and containers only, so a hostile file cannot run code.
    """
    path = Path(path)
    if not path.is_file():
        raise PnnhError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PnnhError(f"cannot load checkpoint {path}: not a pnnh/PyTorch weights file, truncated, or unsafe "
                        f"to load ({first_line[:200]})") from None
    if not isinstance(obj, dict):
        raise PnnhError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    if obj.get("format") != FORMAT:
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {"model": obj}
        raise PnnhError(f"checkpoint {path} is not a pnnh checkpoint (no '{FORMAT}' tag)")
    return obj


def load_model_state(model: torch.nn.Module, state: dict, path: str | Path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise PnnhError(f"checkpoint {path} does not fit this model ({detail}); "
                        f"pass the --model, --kind and options it was trained with") from None
