"""Checkpoints: written atomically, checksummed, read without unpickling arbitrary objects."""
from __future__ import annotations

import hashlib
import io
import json
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


SAFETENSORS_FORMAT = "pnnh-weights-v1"


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict) -> None:
    """Weights that leave a run (best weights, exports) as safetensors: no pickle, the model's config and
    anything else in ``metadata`` as JSON strings in the header, and a SHA-256 of the tensors."""
    from safetensors.torch import save

    # standard layout (a channels-last tensor is not "contiguous" to safetensors), and copies: it refuses shared storage
    state = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    header = {"format": SAFETENSORS_FORMAT, "sha256": digest(state),
              **{k: json.dumps(v, allow_nan=False) for k, v in metadata.items()}}
    write_atomic(path, save(state, metadata=header))


def _load_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        raw = path.read_bytes()
        state = load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, OSError, ValueError, UnicodeDecodeError) as e:
        raise PnnhError(f"cannot load {path}: not a safetensors file, or truncated ({str(e)[:200]})") from None
    if header.get("format") != SAFETENSORS_FORMAT:
        return {"model": state}  # someone else's safetensors: weights only
    if header.get("sha256") != digest(state):
        raise PnnhError(f"{path} is corrupt: its tensors do not match their checksum; export or train again")
    try:
        extra = {k: json.loads(v) for k, v in header.items() if k not in ("format", "sha256")}
    except ValueError:
        raise PnnhError(f"{path} is corrupt: its metadata is not JSON") from None
    return {**extra, "model": state}


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint written by ``pnnh train`` (``last.pt``), weights (``best.safetensors``, exports), or a
    bare state_dict (returned as ``{"model": state_dict}``).

    ``.pt`` files are read with ``weights_only=True``: tensors, numbers, strings and containers only, so a
    hostile file cannot run code; ``.safetensors`` hold no code at all. Contents that do not match their
    checksum are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise PnnhError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
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
                            f"use another checkpoint of the run (last.pt, best.safetensors) or train again")
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
    from .models import create_model, model_info

    kwargs = dict(config["kwargs"])
    if model_info(config["name"])["img_size_option"]:  # a ViT is built for its data's image size
        kwargs.setdefault("img_size", config["input_size"][-1])
    return create_model(config["name"], kind=config["kind"], num_classes=config["num_classes"],
                        in_chans=config["in_chans"], **kwargs)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The trained model of a checkpoint (``last.pt``, ``best.safetensors``) or export, in eval mode.

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
        if checkpoint.get("plain_layers"):  # an export's plain chain
            from .convert import chain_from_spec
            model = chain_from_spec(checkpoint["plain_layers"])
        else:
            model = build_model(config)
    model = model.to_empty(device=device)
    load_model_state(model, checkpoint["model"], path)
    model.pretrained_cfg = config
    return model.eval()
