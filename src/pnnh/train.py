"""Training, top to bottom: config -> data -> model -> optimiser -> loop -> checkpoints and metrics.

Run as ``pnnh train ...``, or on N processes as ``torchrun --nproc_per_node=N -m pnnh train ...``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed
from .checkpoint import FORMAT, load_checkpoint, load_model_state, save_atomic
from .data import load_dataset, make_loader
from .data.loader import channel_stats
from .errors import PnnhError
from .models import create_model


@dataclass
class TrainConfig:
    model: str = "resnet20"
    kind: str = "residual"
    model_kwargs: dict = field(default_factory=dict)
    data: str = "cifar10"
    data_dir: str | None = None
    download: bool = False
    cache_dir: str | None = None
    train_subset: int | None = None   # a fixed, seeded subset of the training split
    test_subset: int | None = None
    image_size: int = 224             # crop size for image folders of large images
    epochs: int = 10
    batch_size: int = 128             # per process
    opt: str = "sgd"                  # sgd (Nesterov) | adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4        # not applied to norm, bias and coder weights
    sched: str = "cosine"             # cosine | step | onecycle | constant
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    crop_padding: int = 4
    flip: bool = True
    cutout: int = 0
    amp: str = "none"                 # none | bf16 | fp16
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False
    seed: int = 0
    device: str = "auto"
    workers: int = 4
    output: str | None = None         # run folder; default runs/<model>-<kind>-seed<seed>
    stop_after_steps: int | None = None  # behave as if interrupted after this many steps (for testing resume)

    def validate(self) -> None:
        choices = {"opt": ("sgd", "adamw"), "sched": ("cosine", "step", "onecycle", "constant"),
                   "amp": ("none", "bf16", "fp16")}
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise PnnhError(f"unknown --{key} {getattr(self, key)!r}; valid: {', '.join(valid)}")
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise PnnhError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise PnnhError(f"--lr must be positive, got {self.lr}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PnnhError(f"unknown config key(s): {', '.join(unknown)}")
        return cls(**d)

    @property
    def run_dir(self) -> Path:
        return Path(self.output or f"runs/{self.model}-{self.kind}-seed{self.seed}")


class TrainingInterrupted(Exception):
    """Raised after the checkpoint of an interrupted run is safely written."""

    def __init__(self, checkpoint: Path, signum: int | None):
        super().__init__(f"interrupted: checkpoint saved to {checkpoint}; continue with --resume")
        self.checkpoint, self.signum = checkpoint, signum


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PnnhError(f"unknown --device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PnnhError("--device cuda given but no CUDA device is available; use --device cpu")
    return device


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
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def autocast(device: torch.device, amp: str):
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: str = "none") -> dict:
    """Top-1, top-5 and mean loss over the loader (summed over processes), and images per second."""
    model.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    start = time.perf_counter()
    for x, y in loader.batches(0):
        with autocast(device, amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(1).sum().item()
        count += len(y)
    seconds = time.perf_counter() - start
    loss_sum, correct1, correct5, count = distributed.all_reduce_sum([loss_sum, correct1, correct5, count], device)
    return {"loss": loss_sum / count, "top1": correct1 / count, "top5": correct5 / count, "images": int(count),
            "img_per_s": count / seconds}


class Progress:
    """One status line on stderr: redrawn in place on a terminal, every tenth of an epoch in a log."""

    def __init__(self, enabled: bool):
        self.enabled, self.tty = enabled, sys.stderr.isatty()

    def update(self, text: str, step: int, steps: int) -> None:
        if not self.enabled:
            return
        if self.tty:
            print(f"\r{text}\033[K", end="", file=sys.stderr, flush=True)
        elif step == steps or step % max(1, steps // 10) == 0:
            print(text, file=sys.stderr, flush=True)

    def done(self, text: str) -> None:
        if self.enabled:
            print(("\r" if self.tty else "") + text + ("\033[K" if self.tty else ""), file=sys.stderr, flush=True)


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """metrics.jsonl and metrics.csv, rewritten whole (atomically) from the run's history."""
    jsonl = "".join(json.dumps(row) + "\n" for row in history)
    buf = io.StringIO()
    if history:
        writer = csv.DictWriter(buf, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    for name, text in (("metrics.jsonl", jsonl), ("metrics.csv", buf.getvalue())):
        tmp = run_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, run_dir / name)


def load_splits(cfg: TrainConfig, splits: tuple[str, ...] = ("train", "test")) -> dict:
    """The requested splits of cfg's data set, with cfg's seeded subsets applied."""
    out = {}
    for split in splits:
        data = load_dataset(cfg.data, cfg.data_dir, split, cfg.download, cfg.cache_dir, cfg.image_size)
        n = cfg.train_subset if split == "train" else cfg.test_subset
        if hasattr(data, "subset"):
            data = data.subset(n, cfg.seed if split == "train" else 0)
        elif n:
            raise PnnhError("--train-subset/--test-subset apply to in-memory data sets, not streamed image folders")
        out[split] = data
    return out


def make_loaders(cfg: TrainConfig, splits: dict, device: torch.device, dist_info: distributed.DistInfo,
                 stats: tuple[list[float], list[float]] | None) -> dict:
    """A loader per split; ``stats`` (mean, std) normalise every split as the training split was."""
    mean, std = stats if stats else (None, None)
    loaders = {}
    for split, data in splits.items():
        train = split == "train"
        try:
            loaders[split] = make_loader(data, cfg.batch_size, train, device, seed=cfg.seed, rank=dist_info.rank,
                                         world_size=dist_info.world_size, workers=cfg.workers,
                                         channels_last=cfg.channels_last, crop_padding=cfg.crop_padding,
                                         flip=cfg.flip, cutout=cfg.cutout, mean=mean, std=std)
        except ValueError as e:
            raise PnnhError(f"{e}: use a smaller --batch-size or a larger --train-subset") from None
    return loaders


def train(cfg: TrainConfig, resume: str | Path | None = None) -> dict:
    """Train ``cfg``; with ``resume`` (a checkpoint path), continue that run exactly where it stopped."""
    checkpoint = None
    if resume is not None:
        checkpoint = load_checkpoint(resume)
        if "config" not in checkpoint:
            raise PnnhError(f"{resume} holds weights only, not a training state; it cannot be resumed")
        overrides = {"device": cfg.device, "workers": cfg.workers, "stop_after_steps": cfg.stop_after_steps}
        cfg = TrainConfig.from_dict({**checkpoint["config"], **overrides})
    cfg.validate()
    device = resolve_device(cfg.device)
    dist_info = distributed.init_distributed(device.type)
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    run_dir = cfg.run_dir
    if checkpoint is None and (run_dir / "last.pt").exists():
        raise PnnhError(f"{run_dir} already holds a run: continue it with --resume {run_dir / 'last.pt'}, "
                        f"or choose another --output")

    # ---- data and model
    splits = load_splits(cfg)
    train_set = splits["train"]
    stats = channel_stats(train_set.images) if hasattr(train_set, "images") else None
    loaders = make_loaders(cfg, splits, device, dist_info, stats)
    train_loader, test_loader = loaders["train"], loaders["test"]
    c, h, w = train_set.input_size
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, kind=cfg.kind, num_classes=len(train_set.classes), in_chans=c,
                         **cfg.model_kwargs)
    if cfg.sync_bn and dist_info.enabled:
        model = distributed.convert_sync_batchnorm(model, device.type)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    steps_per_epoch = len(train_loader)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    groups = param_groups(model, cfg.weight_decay)
    if cfg.opt == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, cfg.sched))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16" and device.type == "cuda")

    # ---- state: fresh, or where the checkpoint left off
    epoch, step_in_epoch, history, best_acc = 0, 0, [], 0.0
    partial = [0.0, 0.0, 0.0, 0.0]  # loss sum, correct, images, seconds of the epoch in progress
    if checkpoint is not None:
        load_model_state(model, checkpoint["model"], resume)
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        epoch, step_in_epoch = checkpoint["epoch"], checkpoint["step"]
        history, best_acc, partial = checkpoint["history"], checkpoint["best_acc"], checkpoint["partial"]
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")

    raw_model = model
    if dist_info.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(model) if cfg.compile else model

    def weights() -> dict:
        """What eval and the probe need: the weights, the config, the normalisation and the classes."""
        return {"format": FORMAT, "config": asdict(cfg), "model": raw_model.state_dict(), "data_stats": stats,
                "classes": train_set.classes}

    def save(path: Path, epoch: int, step: int) -> None:
        if dist_info.is_main:
            save_atomic({**weights(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "scaler": scaler.state_dict(), "rng": {"torch": torch.get_rng_state()},
                         "epoch": epoch, "step": step, "history": history, "best_acc": best_acc,
                         "partial": partial}, path)

    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signum

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    progress = Progress(dist_info.is_main)
    steps_done = 0
    try:
        while epoch < cfg.epochs:
            model.train()
            loss_sum, correct, seen, seconds = partial
            start = time.perf_counter()
            step = step_in_epoch
            for x, y in train_loader.batches(epoch, start_step=step_in_epoch):
                with autocast(device, cfg.amp):
                    logits = forward(x)
                    loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                steps_done += 1
                loss_sum += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(y)
                elapsed = seconds + time.perf_counter() - start
                progress.update(f"epoch {epoch + 1}/{cfg.epochs} {step:>5}/{steps_per_epoch} "
                                f"loss {loss_sum / seen:.4f} acc {100 * correct / seen:5.2f}% "
                                f"{seen * dist_info.world_size / elapsed:,.0f} img/s", step, steps_per_epoch)
                interrupted = stop["signal"] is not None or steps_done == cfg.stop_after_steps
                if dist_info.enabled:  # every process stops at the same step
                    interrupted = bool(distributed.all_reduce_sum([float(interrupted)], device)[0])
                if interrupted and step < steps_per_epoch:
                    partial = [loss_sum, correct, seen, elapsed]
                    save(run_dir / "last.pt", epoch, step)
                    raise TrainingInterrupted(run_dir / "last.pt", stop["signal"])
            seconds += time.perf_counter() - start
            train_loss, train_correct, train_seen = distributed.all_reduce_sum([loss_sum, correct, seen], device)
            result = evaluate(forward, test_loader, device, cfg.amp)
            history.append({"epoch": epoch + 1, "train_loss": train_loss / train_seen,
                            "train_acc": train_correct / train_seen, "test_loss": result["loss"],
                            "test_acc": result["top1"], "test_acc5": result["top5"],
                            "img_per_s": train_seen / seconds, "lr": optimizer.param_groups[0]["lr"],
                            "seconds": seconds})
            progress.done(f"epoch {epoch + 1}/{cfg.epochs} train loss {train_loss / train_seen:.4f} "
                          f"acc {100 * train_correct / train_seen:.2f}% | test loss {result['loss']:.4f} "
                          f"acc {100 * result['top1']:.2f}% | {train_seen / seconds:,.0f} img/s")
            epoch, step_in_epoch, partial = epoch + 1, 0, [0.0, 0.0, 0.0, 0.0]
            if result["top1"] >= best_acc and dist_info.is_main:
                best_acc = result["top1"]
                save_atomic({**weights(), "epoch": epoch, "test_acc": best_acc}, run_dir / "best.pt")
            save(run_dir / "last.pt", epoch, 0)
            if dist_info.is_main:
                write_metrics(run_dir, history)
            if stop["signal"] is not None or (cfg.stop_after_steps and steps_done >= cfg.stop_after_steps
                                              and epoch < cfg.epochs):
                raise TrainingInterrupted(run_dir / "last.pt", stop["signal"])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return {"run_dir": str(run_dir), "history": history, "best_acc": best_acc,
            "final": history[-1] if history else None, "model": raw_model}
