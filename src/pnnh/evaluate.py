"""Evaluation: top-1, top-5 and loss of a model over a loader, and of a checkpoint on a data set."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed
from .checkpoint import checkpoint_state, load_checkpoint
from .config import TrainConfig
from .data import load_splits, make_loaders
from .data.loader import channel_stats
from .device import autocast, resolve_device
from .distributed import DistInfo
from .entries import RESERVED
from .errors import PnnhError
from .hub import create_model, load_model_state, model_from_checkpoint
from .models import check_options, model_info
from .progress import bar

# The TrainConfig fields that evaluate_checkpoint reads (pnnh eval's options besides the model's).
EVAL_OPTIONS = ("data", "data_dir", "cache_dir", "test_subset", "image_size", "image_pipeline", "batch_size", "amp",
                "device", "workers", "eval_flip")


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: str = "none", desc: str = "eval",
             flip: bool = False) -> dict:
    """Top-1, top-5 and mean loss over the loader (summed over processes), and images per second; with
    ``flip``, also ``top1_flip``: top-1 of the mean of the logits of each image and its mirror image
    (test-time augmentation), else None.

    Sums stay on the device until the end: one host sync per evaluation, not one per batch."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1 hits, top-5 hits, flip top-1 hits
    seen = 0
    start = time.perf_counter()
    for x, y in bar(loader.batches(0), total=len(loader), desc=desc, unit="batch"):
        with autocast(device, amp):
            logits = model(x)
            both = (logits.float() + model(x.flip(3)).float()) if flip else logits
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        sums += torch.stack([F.cross_entropy(logits.float(), y, reduction="sum").double(),
                             (top[:, 0] == y).sum().double(), (top == y[:, None]).any(1).sum().double(),
                             (both.argmax(1) == y).sum().double()])
        seen += len(y)
    loss_sum, correct1, correct5, correct_flip, count = distributed.all_reduce_sum([*sums.tolist(), seen], device)
    seconds = time.perf_counter() - start
    return {"loss": loss_sum / count, "top1": correct1 / count, "top5": correct5 / count,
            "top1_flip": correct_flip / count if flip else None, "images": int(count), "img_per_s": count / seconds}


def evaluate_checkpoint(path: str | Path, cfg: TrainConfig, model_name: str | None = None, kind: str | None = None,
                        model_kwargs: dict | None = None, weights: str = "auto") -> dict:
    """``pnnh eval``: the model of ``path`` on the test split of ``cfg``'s data (``cfg`` says the data, batch
    size, device and precision). A pnnh checkpoint records its model (``model_name``/``kind``, if given,
    are checked against it) and its normalisation; a bare state dict needs ``model_name`` (and ``kind``,
    ``model_kwargs``) and is normalised with the training split's statistics. ``weights``: which set of a
    ``last.pt`` (``checkpoint_state``); the result names it."""
    checkpoint = load_checkpoint(path)
    state, which = checkpoint_state(checkpoint, path, weights)  # refused before any data is read
    model_config = checkpoint.get("model_config")
    if model_config:
        held = (model_config["name"], model_config["kind"])
        if (model_name or held[0], kind or held[1]) != held:
            raise PnnhError(f"checkpoint {path} holds {held[0]} ({held[1]}), not {model_name or held[0]} "
                            f"({kind or held[1]}): drop --model/--kind or pass --model {held[0]} --kind {held[1]}")
    name = model_config["name"] if model_config else model_name
    if name is None:
        raise PnnhError(f"{path} is a bare state dict: pass --model (and --kind, --model-kwargs) to say what it holds")
    cfg = replace(cfg, model=name, kind=model_config["kind"] if model_config else kind or "residual")
    cfg.validate()
    if not model_config:  # a bare state dict's model, checked before any data is read
        check_options(cfg.model, cfg.kind, model_kwargs or {}, RESERVED)
    device = resolve_device(cfg.device)
    stats = (model_config["mean"], model_config["std"]) if model_config and model_config["mean"] else None
    splits = load_splits(cfg, ("test",) if stats or model_config else ("train", "test"))
    if stats is None and "train" in splits and hasattr(splits["train"], "images"):
        stats = channel_stats(splits.pop("train").images)
    test_set = splits["test"]
    if model_config:
        check_fits(model_config, test_set, f"{path}", cfg.data)
        model = model_from_checkpoint(checkpoint, path, weights=weights)
    else:
        model = create_model(cfg.model, kind=cfg.kind, num_classes=len(test_set.classes),
                             in_chans=test_set.input_size[0], **(model_kwargs or {}))
        load_model_state(model, state, path)
    loader = make_loaders(cfg, {"test": test_set}, device, DistInfo(), stats)["test"]
    model.to(device)
    result = evaluate(model, loader, device, cfg.amp, flip=cfg.eval_flip)
    return {**result, "model": cfg.model, "kind": cfg.kind, "checkpoint": str(path), "weights": which,
            "data": cfg.data}


def check_fits(model_config: dict, data, source: str, data_name: str) -> None:
    """Refuse, naming both sides, data that a model of ``model_config`` cannot read or score: other channels,
    another number of classes, or (for a model built for one image size, a ViT) another image size."""
    channels, size = data.input_size[0], tuple(data.input_size[1:])
    if model_config["in_chans"] != channels:
        raise PnnhError(f"{source} takes {model_config['in_chans']}-channel images, the test split of {data_name} "
                        f"has {channels}-channel images: evaluate it on the data it was trained on")
    if model_config["classes"] and len(model_config["classes"]) != len(data.classes):
        raise PnnhError(f"{source} was trained on {len(model_config['classes'])} classes, the test split of "
                        f"{data_name} has {len(data.classes)}: evaluate it on the data it was trained on")
    if model_config["num_classes"] < len(data.classes):
        raise PnnhError(f"{source} scores {model_config['num_classes']} classes, the test split of {data_name} has "
                        f"{len(data.classes)}: evaluate it on data with at most {model_config['num_classes']} classes")
    if model_info(model_config["name"])["img_size_option"] and tuple(model_config["input_size"][1:]) != size:
        raise PnnhError(f"{source} is built for {model_config['input_size'][1]}x{model_config['input_size'][2]} "
                        f"images, the test split of {data_name} has {size[0]}x{size[1]}: evaluate it on images of "
                        f"its size")


def format_eval(r: dict) -> str:
    weights = {"ema": ", the average of its weights (EMA)", "raw": ", its trained weights (not the average)"}
    model = f"{r['model']} ({r['kind']}{weights.get(r.get('weights', ''), '')})"
    return (f"{model} on {r['data']}: top-1 {100 * r['top1']:.2f}%  top-5 {100 * r['top5']:.2f}%  "
            + (f"top-1 with flips {100 * r['top1_flip']:.2f}%  " if r.get("top1_flip") is not None else "")
            + f"loss {r['loss']:.4f}  {r['img_per_s']:,.0f} img/s  ({r['images']} images)")
