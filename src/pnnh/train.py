"""Training, top to bottom: config -> data -> model -> optimiser -> loop -> checkpoints and metrics.

Run as ``pnnh train ...``, or on N processes as ``torchrun --nproc_per_node=N -m pnnh train ...``.
``train()`` reads as the outline; an epoch is ``train_epoch``, its end ``end_epoch``; what a run holds
while it runs (model, optimiser, position, history) is one ``Run``.
"""
from __future__ import annotations

import json
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed, hub
from .checkpoint import load_training_state, save_atomic, save_weights
from .config import TrainConfig, resume_config
from .data import load_splits, make_loaders
from .data.loader import channel_stats, mix_batch
from .device import autocast, check_amp, hardware, resolve_device, to_channels_last
from .entries import RESERVED
from .errors import PnnhError
from .evaluate import evaluate
from .io import dumps, make_dir, remove_leftovers, write_atomic, write_csv, write_json
from .models import check_options
from .optim import build_optimizer, make_ema, update_ema
from .progress import bar, bars_enabled, log

__all__ = ["TrainConfig", "TrainingDiverged", "TrainingInterrupted", "train"]


class TrainingDiverged(PnnhError):
    """The loss (or gradient norm) became NaN or infinite at ``epoch``, ``step`` (1-based) of
    ``steps_per_epoch``; the last good checkpoint is kept."""

    exit_code = 3

    def __init__(self, message: str, epoch: int = 0, step: int = 0, steps_per_epoch: int = 0):
        super().__init__(message)
        self.epoch, self.step, self.steps_per_epoch = epoch, step, steps_per_epoch


class TrainingInterrupted(Exception):
    """Raised after the checkpoint of an interrupted run is safely written."""

    def __init__(self, checkpoint: Path, signum: int | None):
        super().__init__(f"interrupted: checkpoint saved to {checkpoint}; continue with --resume")
        self.checkpoint, self.signum = checkpoint, signum


def read_metrics(run_dir: Path) -> list[dict]:
    """The per-epoch rows of a run's metrics.jsonl (OSError or ValueError if missing or unreadable)."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """metrics.jsonl and metrics.csv, rewritten whole (atomically) from the run's history."""
    write_atomic(run_dir / "metrics.jsonl", "".join(dumps(row, indent=None) + "\n" for row in history))
    write_csv(run_dir / "metrics.csv", history)  # every key: rows resumed from older runs lack newer ones


def tensorboard_writer(run_dir: Path, epoch: int):
    """A SummaryWriter in <run>/tensorboard; on resume, events after ``epoch`` are purged (TensorBoard's way)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional: the tensorboard extra
    except ImportError:
        raise PnnhError("--log tensorboard needs TensorBoard: pip install 'pnnh[tensorboard]'") from None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=epoch + 1 if epoch else None)


@dataclass
class Run:
    """What one training run holds while it runs: its setting, model and optimiser, and where it stands
    (``epoch``, ``step``, ``history``, ``best_acc``, ``partial``: what ``last.pt`` saves and resume restores)."""
    cfg: TrainConfig
    device: torch.device
    dist: distributed.DistInfo
    run_dir: Path
    model_config: dict           # the build record (hub.model_config)
    stats: Any                   # the training split's (mean, std), or None for streamed folders
    classes: list[str]
    model: nn.Module             # the model itself (not DDP- or compile-wrapped)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    steps_per_epoch: int
    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    best_acc: float = 0.0
    partial: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])  # loss, correct, images, seconds
    steps_done: int = 0          # optimiser steps taken by this process (not counting before a resume)
    start_global: int = 0        # the global step this process started at
    first_bad: Any = None        # first step with a non-finite loss/gradient, on the device (-1: none yet)
    stop_signal: int | None = None
    last_save: float = field(default_factory=time.monotonic)
    ema: nn.Module | None = None  # the average of the weights (--ema): what is tested and saved as best

    @property
    def delivered(self) -> nn.Module:
        """The model the run hands over (tested, saved as best, returned): the average of the weights, if kept."""
        return self.ema if self.ema is not None else self.model

    def weights(self) -> dict:
        """What resume, eval, the probe and load_model need: weights, how to rebuild the model, the config."""
        return {"config": asdict(self.cfg), "model_config": self.model_config, "model": self.model.state_dict(),
                "ema": None if self.ema is None else self.ema.state_dict(), "data_stats": self.stats,
                "classes": self.classes}

    def restore(self, checkpoint: dict, path: str | Path) -> None:
        """Continue exactly where ``checkpoint`` (a last.pt) stopped: weights, optimiser, schedule, RNG."""
        hub.load_model_state(self.model, checkpoint["model"], path)
        if self.ema is not None:
            hub.load_model_state(self.ema, checkpoint["ema"], path)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in checkpoint["rng"]:
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"], self.device)
        self.epoch, self.step = checkpoint["epoch"], checkpoint["step"]
        self.history, self.best_acc, self.partial = checkpoint["history"], checkpoint["best_acc"], checkpoint["partial"]

    def check_finite(self, where: str) -> None:
        """Refuse to go on (or to save) once the loss, the gradient norm or a weight is not finite."""
        bad = int(self.first_bad.item())
        state = [t for t in self.model.state_dict().values() if t.is_floating_point()]  # weights and BN statistics
        if bad < 0 and not bool(torch.stack([t.isfinite().all() for t in state]).all()):
            bad = self.steps_done
        if self.dist.enabled:
            bad = int(distributed.all_reduce_max([bad], self.device)[0])
        if bad >= 0:
            bad_epoch, bad_step = divmod(bad - 1 + self.start_global, self.steps_per_epoch)
            kept = (f"the last good checkpoint, {self.run_dir / 'last.pt'}, is kept"
                    if (self.run_dir / "last.pt").exists() else "no checkpoint had been written yet")
            raise TrainingDiverged(
                f"training diverged: the loss or gradient became NaN/inf at epoch {bad_epoch + 1}, step "
                f"{bad_step + 1} of {self.steps_per_epoch} (found {where}); {kept}: lower --lr (now "
                f"{self.cfg.lr}) or set --clip-grad", bad_epoch + 1, bad_step + 1, self.steps_per_epoch)

    def save(self, epoch: int, step: int, sums: torch.Tensor, seconds: float) -> None:
        """Write last.pt (checked finite first): the weights and everything ``restore`` needs."""
        self.check_finite("before writing a checkpoint")
        if self.dist.is_main:
            rng = {"torch": torch.get_rng_state()}
            if self.device.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state(self.device)
            save_atomic({**self.weights(), "optimizer": self.optimizer.state_dict(),
                         "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng,
                         "epoch": epoch, "step": step, "history": self.history, "best_acc": self.best_acc,
                         "partial": [*sums.tolist(), seconds]}, self.run_dir / "last.pt")
        self.last_save = time.monotonic()


def train_epoch(run: Run, forward: nn.Module, loader) -> tuple[torch.Tensor, float]:
    """One epoch (or its rest, after a resume) of optimiser steps; returns the summed (loss, correct,
    images) and the epoch's seconds. Host syncs only at the ten log points and at checkpoints."""
    cfg, device, dist_info = run.cfg, run.device, run.dist
    forward.train()
    sums = torch.tensor(run.partial[:3], dtype=torch.float64, device=device)  # loss sum, correct, images
    start, seconds_before = time.perf_counter(), run.partial[3]
    step = run.step
    check_every = max(1, run.steps_per_epoch // 10)  # log and divergence checks
    progress = bar(total=run.steps_per_epoch, initial=step, desc=f"epoch {run.epoch + 1}/{cfg.epochs}",
                   unit="step", enabled=dist_info.is_main)
    for x, y in loader.batches(run.epoch, start_step=run.step):
        if cfg.mixup or cfg.cutmix:
            x, partner, lam = mix_batch(x, cfg.mixup, cfg.cutmix, (cfg.seed, run.epoch, step, dist_info.rank))
        with autocast(device, cfg.amp):
            logits = forward(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            if cfg.mixup or cfg.cutmix:
                loss = lam * loss + (1 - lam) * F.cross_entropy(logits, y[partner], label_smoothing=cfg.label_smoothing)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        bad = ~torch.isfinite(loss.detach())
        if cfg.clip_grad:
            run.scaler.unscale_(run.optimizer)
            norm = nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_grad)
            if not run.scaler.is_enabled():  # fp16's scaler skips steps with inf gradients by design
                bad = bad | ~torch.isfinite(norm)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        if run.ema is not None:
            update_ema(run.ema, run.model, cfg.ema, run.start_global + run.steps_done + 1)
        step += 1
        run.steps_done += 1
        with torch.no_grad():  # accumulated on the device: no host sync per step
            sums += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double(),
                                 torch.full((), len(y), dtype=torch.float64, device=device)])
            run.first_bad = torch.where(bad & (run.first_bad < 0), run.steps_done, run.first_bad)
        progress.update()
        due = step % check_every == 0 or step == run.steps_per_epoch
        by_steps = cfg.checkpoint_every > 0 and run.steps_done % cfg.checkpoint_every == 0
        stop_now = run.stop_signal is not None or run.steps_done == cfg.stop_after_steps
        by_time = cfg.checkpoint_minutes > 0 and time.monotonic() - run.last_save >= 60 * cfg.checkpoint_minutes
        if dist_info.enabled:  # processes agree at shared check points only: no collective per step
            if not (due or by_steps or run.steps_done == cfg.stop_after_steps):
                continue
            stop_now, by_time = (v > 0 for v in distributed.all_reduce_max([stop_now, by_time], device))
        if due:
            run.check_finite("at a log point")
            loss_sum, correct, seen = sums.tolist()
            text = (f"loss {loss_sum / seen:.4f} acc {100 * correct / seen:5.2f}% "
                    f"{seen * dist_info.world_size / (seconds_before + time.perf_counter() - start):,.0f} img/s")
            progress.set_postfix_str(text, refresh=False)
            if dist_info.is_main and not bars_enabled() and step < run.steps_per_epoch:
                log.info(f"epoch {run.epoch + 1}/{cfg.epochs} step {step}/{run.steps_per_epoch} {text}")
        if stop_now or by_time or by_steps:
            run.save(run.epoch, step, sums, seconds_before + time.perf_counter() - start)
            if stop_now:
                progress.close()
                raise TrainingInterrupted(run.run_dir / "last.pt", run.stop_signal)
    progress.close()
    run.check_finite("at the end of the epoch")
    return sums, seconds_before + time.perf_counter() - start


def end_epoch(run: Run, forward: nn.Module, test_loader, sums: torch.Tensor, seconds: float, board) -> None:
    """Evaluate (every ``eval_every`` epochs and after the last), record the epoch's row, keep the best
    weights, write the metrics (and TensorBoard events), and checkpoint the epoch's end."""
    cfg, is_main = run.cfg, run.dist.is_main
    train_loss, train_correct, train_seen = distributed.all_reduce_sum(sums.tolist(), run.device)
    tested = (run.epoch + 1) % cfg.eval_every == 0 or run.epoch + 1 == cfg.epochs
    result: dict[str, Any] = {"loss": None, "top1": None, "top5": None}  # untested epochs: null
    if tested:
        result = evaluate(forward if run.ema is None else run.ema, test_loader, run.device, cfg.amp,
                          desc=f"eval {run.epoch + 1}/{cfg.epochs}", flip=cfg.eval_flip)
    run.history.append({"epoch": run.epoch + 1, "train_loss": train_loss / train_seen,
                        "train_acc": train_correct / train_seen, "test_loss": result["loss"],
                        "test_acc": result["top1"], "test_acc5": result["top5"],
                        "test_acc_flip": result.get("top1_flip"), "img_per_s": train_seen / seconds,
                        "lr": run.optimizer.param_groups[0]["lr"], "seconds": seconds,
                        "hardware": hardware(run.device, run.dist.world_size)})  # a run may resume elsewhere
    if is_main:
        test = f"test loss {result['loss']:.4f} acc {100 * result['top1']:.2f}%" if tested else "not tested"
        log.info(f"epoch {run.epoch + 1}/{cfg.epochs} train loss {train_loss / train_seen:.4f} "
                 f"acc {100 * train_correct / train_seen:.2f}% | {test} | {train_seen / seconds:,.0f} img/s")
    run.epoch, run.step, run.partial = run.epoch + 1, 0, [0.0, 0.0, 0.0, 0.0]
    if tested and result["top1"] >= run.best_acc and is_main:
        run.best_acc = result["top1"]
        save_weights(run.run_dir / "best.safetensors", run.delivered.state_dict(),
                     {"model_config": run.model_config, "config": asdict(cfg), "epoch": run.epoch,
                      "test_acc": run.best_acc})
    if is_main:
        write_metrics(run.run_dir, run.history)
    if board is not None:
        for key, value in run.history[-1].items():
            if key != "epoch" and isinstance(value, (int, float)):
                board.add_scalar(key, value, run.epoch)
        board.flush()
    run.save(run.epoch, 0, torch.zeros(3, dtype=torch.float64), 0.0)


def train(cfg: TrainConfig, resume: str | Path | None = None, given: set[str] | None = None) -> dict:
    """Train ``cfg``; with ``resume`` (a last.pt), continue that run exactly where it stopped.

    A resumed run keeps the checkpoint's config: ``cfg`` may change only where and how it runs
    (RESUME_SAFE: device, workers, output folder, checkpoint frequency). It writes into
    ``cfg.output``, or the checkpoint's own folder when that is unset; ``given``: see ``config.resume_config``.
    """
    checkpoint = None
    if resume is not None:
        try:
            checkpoint = load_training_state(resume)
        except PnnhError as e:
            raise PnnhError(f"--resume: {e}") from None
        cfg = resume_config(cfg, TrainConfig.from_dict(checkpoint["config"]), resume, given)
    cfg.validate()
    check_options(cfg.model, cfg.kind, cfg.model_kwargs, RESERVED)  # before any data is read
    device = resolve_device(cfg.device)
    check_amp(device, cfg.amp)
    dist_info = distributed.init_distributed(device.type)
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN picks the fastest kernels once
    run_dir = cfg.run_dir
    same_folder = resume is not None and run_dir.resolve() == Path(resume).resolve().parent
    if not same_folder and (run_dir / "last.pt").exists():
        raise PnnhError(f"{run_dir} already holds a run: continue it with --resume {run_dir / 'last.pt'}, "
                        f"or choose another --output")

    # ---- data and model
    splits = load_splits(cfg)
    train_set = splits["train"]
    stats = channel_stats(train_set.images) if hasattr(train_set, "images") else None
    if checkpoint is not None and (checkpoint.get("classes"), checkpoint.get("data_stats")) != (
            train_set.classes, stats):
        raise PnnhError(f"the training data differ from those {resume} was trained on (class names or "
                        f"pixel statistics changed): resume with the same data")
    loaders = make_loaders(cfg, splits, device, dist_info, stats)
    torch.manual_seed(cfg.seed)
    mean, std = stats if stats else (None, None)
    model_config = hub.model_config(cfg.model, cfg.kind, cfg.model_kwargs, len(train_set.classes), train_set.input_size,
                                    mean, std, train_set.classes)
    model: nn.Module = hub.build_model(model_config)
    if cfg.sync_bn and dist_info.enabled:
        model = distributed.convert_sync_batchnorm(model, device.type)
    model.to(device)
    if cfg.channels_last:
        to_channels_last(model)
    steps_per_epoch = len(loaders["train"])
    optimizer, scheduler, scaler = build_optimizer(cfg, model, steps_per_epoch, device)
    run = Run(cfg, device, dist_info, run_dir, model_config, stats, train_set.classes, model, optimizer, scheduler,
              scaler, steps_per_epoch, ema=make_ema(model) if cfg.ema else None)

    # ---- state: fresh, or where the checkpoint left off
    if checkpoint is not None and resume is not None:
        run.restore(checkpoint, resume)
    if dist_info.is_main:
        make_dir(run_dir, "--output")
        remove_leftovers(run_dir)  # left by a process killed while writing
        write_json(run_dir / "config.json", asdict(cfg))
        write_json(run_dir / "model.json", model_config)  # how to rebuild the model, beside the metrics
    board = tensorboard_writer(run_dir, run.epoch) if cfg.log == "tensorboard" and dist_info.is_main else None
    forward: nn.Module = model
    if dist_info.enabled:
        forward = nn.parallel.DistributedDataParallel(model,
                                                      device_ids=[device.index] if device.type == "cuda" else None)
    forward = cast(nn.Module, torch.compile(forward)) if cfg.compile else forward

    # ---- the loop: an interrupt (Ctrl-C, SIGTERM) checkpoints at the next step and stops
    def on_signal(signum, frame):
        run.stop_signal = signum

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    run.start_global = run.epoch * steps_per_epoch + run.step
    run.first_bad = torch.full((), -1, dtype=torch.long, device=device)
    run.last_save = time.monotonic()
    try:
        while run.epoch < cfg.epochs:
            sums, seconds = train_epoch(run, forward, loaders["train"])
            end_epoch(run, forward, loaders["test"], sums, seconds, board)
            if run.stop_signal is not None and run.epoch < cfg.epochs:
                raise TrainingInterrupted(run_dir / "last.pt", run.stop_signal)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if board is not None:
            board.close()
    if dist_info.is_main:
        write_metrics(run_dir, run.history)
        if run.history and run.history[-1]["test_acc"] is not None:
            log.info(f"done: test acc {100 * run.history[-1]['test_acc']:.2f}% (best {100 * run.best_acc:.2f}%), "
                     f"run folder {run_dir}")
    del forward  # the DistributedDataParallel wrapper holds the process group
    distributed.finish(dist_info)
    return {"run_dir": str(run_dir), "history": run.history, "best_acc": run.best_acc,
            "final": run.history[-1] if run.history else None, "model": run.delivered}
