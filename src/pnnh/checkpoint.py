"""Checkpoints: written atomically, checksummed, read without unpickling arbitrary objects."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

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
            h.update(t.view(torch.uint8).numpy().data)
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
    # standard layout (a channels-last tensor is not "contiguous" to safetensors), and copies: it refuses shared storage
    state = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    header = {"format": SAFETENSORS_FORMAT, "sha256": digest(state),
              **{k: json.dumps(v, allow_nan=False) for k, v in metadata.items()}}
    write_atomic(path, save(state, metadata=header))


def _load_safetensors(path: Path) -> dict:
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


WEIGHTS = ("auto", "ema", "raw")


def checkpoint_state(checkpoint: dict, path: str | Path | None, weights: str = "auto") -> tuple[dict, str]:
    """The state dict to build a model with from ``checkpoint``, and which weights it is.

    A run's ``last.pt`` holds two sets when it trained with ``--ema``: the trained weights (``raw``) and
    their average (``ema``), the one the run tested and saved as ``best.safetensors``. ``auto`` takes
    the average where there is one, so every figure of a run and every model rebuilt from it agree.
    Other files hold one set: ``auto`` is the only choice there (named ``ema`` where the file records a
    run that kept the average, ``saved`` otherwise).
    """
    if weights not in WEIGHTS:
        raise PnnhError(f"unknown weights {weights!r}: choose one of {', '.join(WEIGHTS)}")
    if "ema" not in checkpoint:  # best.safetensors, an export, a bare state dict: one set of weights
        if weights != "auto":
            raise PnnhError(f"{path} holds one set of weights, not a run's trained weights and their average: "
                            f"--weights {weights} applies to a run's last.pt; drop it here")
        saved_average = bool((checkpoint.get("config") or {}).get("ema"))  # best.safetensors of an --ema run
        return checkpoint["model"], "ema" if saved_average else "saved"
    if weights == "raw" or (weights == "auto" and checkpoint["ema"] is None):
        return checkpoint["model"], "raw"
    if checkpoint["ema"] is None:
        raise PnnhError(f"{path} holds no average of the weights (its run trained without --ema): "
                        f"use --weights raw or auto")
    return checkpoint["ema"], "ema"


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
    except Exception as e:  # noqa: BLE001 -- torch.load raises many types on a damaged or unsafe file
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


def load_training_state(path: str | Path) -> dict:
    """A run's ``last.pt``: weights, optimiser, schedule, RNG and position, to continue training from."""
    checkpoint = load_checkpoint(path)
    if "optimizer" not in checkpoint or "config" not in checkpoint:
        raise PnnhError(f"{path} holds weights only, not a training state; resume from the run's last.pt")
    return checkpoint
