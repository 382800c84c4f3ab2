"""Checkpoints: written atomically, checksummed, read without unpickling arbitrary objects."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch

from .errors import PnnhError
from .io import write_atomic

FORMAT = "pnnh-checkpoint-v2"
OLD_FORMATS = ("pnnh-checkpoint-v1",)  # written before checksums: read, but cannot be verified


def digest(obj) -> str:
    """SHA-256 of a checkpoint's contents: every tensor's dtype, shape and bytes, and every other value's repr.

    ``torch.load`` does not check the CRCs of its zip records, so a flipped byte in a tensor loads
    silently; this digest, stored in the file and checked on load, is what catches it.
    """
    h = hashlib.sha256()

    def walk(o) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(o.shape)}".encode())
            h.update(memoryview(t.view(torch.uint8).numpy()))
        elif isinstance(o, dict):
            h.update(b"{")
            for k in sorted(o, key=repr):
                h.update(repr(k).encode())
                walk(o[k])
            h.update(b"}")
        elif isinstance(o, (list, tuple)):
            h.update(b"[")
            for v in o:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(o).encode())

    walk(obj)
    return h.hexdigest()


def save_atomic(obj: dict, path: Path) -> None:
    """Tag, checksum and write a checkpoint atomically: a crash or a full disk never leaves half a checkpoint."""
    obj = {**obj, "format": FORMAT}
    obj["checksum"] = digest(obj)
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint written by ``pnnh train`` (or a bare state_dict, as ``{"model": state_dict}``).

    ``weights_only=True``: tensors, numbers, strings and containers only, so a hostile file cannot run code.
    A pnnh checkpoint whose contents do not match its checksum is refused.
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
    if obj.get("format") == FORMAT:
        stored = obj.pop("checksum", None)
        if stored != digest(obj):
            raise PnnhError(f"checkpoint {path} is corrupt: its contents do not match its checksum; "
                            f"use another checkpoint of the run (last.pt, best.pt) or train again")
        return obj
    if obj.get("format") in OLD_FORMATS:
        return obj
    if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return {"model": obj}
    raise PnnhError(f"checkpoint {path} is not a pnnh checkpoint (no '{FORMAT}' tag) nor a state dict")


def load_model_state(model: torch.nn.Module, state: dict, path: str | Path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise PnnhError(f"checkpoint {path} does not fit this model ({detail}); "
                        f"pass the --model, --kind and options it was trained with") from None


def model_config(name: str, kind: str, kwargs: dict, num_classes: int, input_size: tuple[int, int, int],
                 mean: list[float] | None = None, std: list[float] | None = None,
                 classes: list[str] | None = None) -> dict:
    """What rebuilds a model and feeds it: constructor arguments, input size, normalisation, class names.

    Every checkpoint and export carries one; ``build_model`` and ``load_model`` read it.
    """
    return {"name": name, "kind": kind, "kwargs": dict(kwargs), "num_classes": int(num_classes),
            "in_chans": int(input_size[0]), "input_size": [int(s) for s in input_size],
            "mean": None if mean is None else [float(v) for v in mean],
            "std": None if std is None else [float(v) for v in std],
            "classes": None if classes is None else list(classes)}


def build_model(config: dict) -> torch.nn.Module:
    """The model a ``model_config`` describes, freshly initialised (on the current default device)."""
    from .models import create_model

    return create_model(config["name"], kind=config["kind"], num_classes=config["num_classes"],
                        in_chans=config["in_chans"], **config["kwargs"])


def load_model(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The trained model of a checkpoint (``last.pt``, ``best.pt``) or export, in eval mode.

    Its ``pretrained_cfg`` holds the ``model_config``: input size, mean and std, class names.
    """
    return model_from_checkpoint(load_checkpoint(path), path, device)


def model_from_checkpoint(checkpoint: dict, path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """``load_model`` for a checkpoint already read with ``load_checkpoint``."""
    config = checkpoint.get("model_config")
    if config is None:
        raise PnnhError(f"{path} does not record how to build its model (a bare state dict, or a checkpoint from "
                        f"pnnh 0.1): build it with create_model(...) and load_state_dict")
    with torch.device("meta"):
        model = build_model(config)
    model = model.to_empty(device=device)
    load_model_state(model, checkpoint["model"], path)
    model.pretrained_cfg = config
    return model.eval()
