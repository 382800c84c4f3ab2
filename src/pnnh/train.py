"""Training, top to bottom: config -> data -> model -> optimiser -> loop -> checkpoints and metrics.

Run as ``pnnh train ...``, or on N processes as ``torchrun --nproc_per_node=N -m pnnh train ...``.
"""
from __future__ import annotations

import json
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed
from .checkpoint import build_model, load_checkpoint, load_model_state, model_config, save_atomic, save_weights
from .data import load_dataset, make_loader
from .data.loader import channel_stats, mix_batch
from .errors import PnnhError
from .io import dumps, make_dir, remove_leftovers, write_atomic, write_csv, write_json
from .progress import bar, bars_enabled, log


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
    image_pipeline: str = "auto"      # image folders: auto | memory | stream
    epochs: int = 10
    batch_size: int = 128             # per process
    opt: str = "sgd"                  # sgd (Nesterov) | adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4        # not applied to norm, bias and coder weights
    sched: str = "cosine"             # cosine | step | onecycle | constant
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    mixup: float = 0.0                # Beta alpha of mixup on the batch (0: off)
    cutmix: float = 0.0               # Beta alpha of CutMix on the batch (0: off; both set: one or the other)
    clip_grad: float | None = None    # clip the gradient's global norm to this
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
    log: str = "none"                 # none | tensorboard (per-epoch metrics and lr, beside metrics.jsonl)
    eval_every: int = 1               # evaluate on the test split every N epochs, and always after the last
    checkpoint_every: int = 0         # also write last.pt every N steps (0: only by time and at epoch ends)
    checkpoint_minutes: float = 10.0  # write last.pt at least this often during an epoch (0: off)
    stop_after_steps: int | None = None  # behave as if interrupted after this many steps (for testing resume)

    def validate(self) -> None:
        """Every value checked by type and range; the first bad one is a one-line PnnhError."""
        types = {f.name: str(f.type) for f in fields(self)}
        for key, annotation in types.items():
            value = getattr(self, key)
            if not _type_ok(value, annotation):
                raise PnnhError(f"{flag(key)} must be {_TYPE_WORDS[annotation]}, got {value!r}")
        for key, valid in CHOICES.items():
            if getattr(self, key) not in valid:
                raise PnnhError(f"unknown {flag(key)} {getattr(self, key)!r}; valid: {', '.join(valid)}")
        for key, (ok, words) in RANGES.items():
            value = getattr(self, key)
            if value is not None and not ok(value):
                raise PnnhError(f"{flag(key)} must be {words}, got {value!r}")
        if self.warmup_epochs > self.epochs:
            raise PnnhError(f"--warmup-epochs ({self.warmup_epochs}) is longer than --epochs ({self.epochs})")

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


CHOICES = {"opt": ("sgd", "adamw"), "sched": ("cosine", "step", "onecycle", "constant"),
           "amp": ("none", "bf16", "fp16"), "image_pipeline": ("auto", "memory", "stream"),
           "log": ("none", "tensorboard")}
RANGES = {
    "epochs": (lambda v: v >= 1, "at least 1"), "batch_size": (lambda v: v >= 1, "at least 1"),
    "lr": (lambda v: v > 0, "positive"), "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, "0 or more"), "warmup_epochs": (lambda v: v >= 0, "0 or more"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"), "clip_grad": (lambda v: v > 0, "positive"),
    "mixup": (lambda v: v >= 0, "0 or more"), "cutmix": (lambda v: v >= 0, "0 or more"),
    "crop_padding": (lambda v: v >= 0, "0 or more"), "cutout": (lambda v: v >= 0, "0 or more"),
    "image_size": (lambda v: v >= 8, "at least 8"), "seed": (lambda v: v >= 0, "0 or more"),
    "workers": (lambda v: v >= 0, "0 or more"), "train_subset": (lambda v: v >= 1, "at least 1"),
    "test_subset": (lambda v: v >= 1, "at least 1"), "stop_after_steps": (lambda v: v >= 1, "at least 1"),
    "checkpoint_every": (lambda v: v >= 0, "0 or more"), "checkpoint_minutes": (lambda v: v >= 0, "0 or more"),
    "eval_every": (lambda v: v >= 1, "at least 1"),
}
# What a resumed run (or a compare reusing a run) may differ in: where and how it runs, not what it computes.
RESUME_SAFE = ("device", "workers", "output", "checkpoint_every", "checkpoint_minutes", "stop_after_steps", "log", "cache_dir")
_TYPE_WORDS = {"int": "an integer", "int | None": "an integer", "float": "a finite number",
               "float | None": "a finite number", "str": "a string", "str | None": "a string",
               "bool": "true or false", "dict": "a mapping of option: value"}


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _type_ok(value, annotation: str) -> bool:
    base, optional = annotation.removesuffix(" | None"), annotation.endswith(" | None")
    if value is None:
        return optional
    if base == "bool":
        return isinstance(value, bool)
    if base == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if base == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, {"str": str, "dict": dict}[base])


def config_differences(a: "TrainConfig", b: "TrainConfig", ignore: tuple[str, ...] = RESUME_SAFE) -> list[str]:
    """The keys (outside ``ignore``) in which two configs differ."""
    return [f.name for f in fields(a) if f.name not in ignore and getattr(a, f.name) != getattr(b, f.name)]


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


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def cpu_name() -> str:
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                        platform.processor())
    except OSError:
        return platform.processor()


def hardware(device: torch.device, world_size: int = 1) -> str:
    """Where an epoch ran, as its metrics row records it: the CPU model and torch threads, or the GPU."""
    if device.type == "cpu":
        threads = torch.get_num_threads()
        where = (f"{cpu_name()}{' (AMX)' if 'amx_bf16' in cpu_flags() else ''}, {threads} torch "
                 f"thread{'s' if threads > 1 else ''}")
    else:
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return where if world_size == 1 else f"{world_size} processes x {where}"


def check_amp(device: torch.device, amp: str) -> None:
    """Refuse fp16 on a CPU (emulated); warn about bf16 on a CPU without bf16 units (emulated, ~10x slower)."""
    if device.type != "cpu":
        return
    if amp == "fp16":
        raise PnnhError("--amp fp16 on a CPU is emulated (about 25x slower than float32): use --amp bf16 on a CPU "
                        "with AMX or AVX512-BF16 units, or --amp none")
    if amp == "bf16" and not cpu_flags() & {"amx_bf16", "avx512_bf16"}:
        log.warning("warning: this CPU has no bf16 units (no amx_bf16 or avx512_bf16 in /proc/cpuinfo): --amp bf16 "
                    "is emulated here and runs several times slower than float32 (--amp none)")


def autocast(device: torch.device, amp: str):
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: str = "none", desc: str = "eval") -> dict:
    """Top-1, top-5 and mean loss over the loader (summed over processes), and images per second.

    Sums stay on the device until the end: one host sync per evaluation, not one per batch."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top-1 hits, top-5 hits
    count = 0
    start = time.perf_counter()
    for x, y in bar(loader.batches(0), total=len(loader), desc=desc, unit="batch"):
        with autocast(device, amp):
            logits = model(x)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        sums += torch.stack([F.cross_entropy(logits.float(), y, reduction="sum").double(),
                             (top[:, 0] == y).sum().double(), (top == y[:, None]).any(1).sum().double()])
        count += len(y)
    loss_sum, correct1, correct5, count = distributed.all_reduce_sum([*sums.tolist(), count], device)
    seconds = time.perf_counter() - start
    return {"loss": loss_sum / count, "top1": correct1 / count, "top5": correct5 / count, "images": int(count),
            "img_per_s": count / seconds}


def read_metrics(run_dir: Path) -> list[dict]:
    """The per-epoch rows of a run's metrics.jsonl (OSError or ValueError if missing or unreadable)."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """metrics.jsonl and metrics.csv, rewritten whole (atomically) from the run's history."""
    write_atomic(run_dir / "metrics.jsonl", "".join(dumps(row, indent=None) + "\n" for row in history))
    write_csv(run_dir / "metrics.csv", history)  # every key: rows resumed from older runs lack newer ones


def load_splits(cfg: TrainConfig, splits: tuple[str, ...] = ("train", "test")) -> dict:
    """The requested splits of cfg's data set, with cfg's seeded subsets applied."""
    out = {}
    for split in splits:
        data = load_dataset(cfg.data, cfg.data_dir, split, cfg.download, cfg.cache_dir, cfg.image_size,
                            cfg.image_pipeline)
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


def tensorboard_writer(run_dir: Path, epoch: int):
    """A SummaryWriter in <run>/tensorboard; on resume, events after ``epoch`` are purged (TensorBoard's way)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise PnnhError("--log tensorboard needs TensorBoard: pip install 'pnnh[tensorboard]'") from None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=epoch + 1 if epoch else None)


def _resume_state(cfg: TrainConfig, resume: str | Path, given: set[str] | None) -> tuple[TrainConfig, dict]:
    """The checkpoint to continue and the config to continue it with: the checkpoint's own, where
    ``cfg`` may differ only in RESUME_SAFE keys (anything else is refused, naming the keys).

    ``given``: the keys the user set (the command line); the others are taken from the checkpoint.
    None (a library call) compares every key of ``cfg``."""
    checkpoint = load_checkpoint(resume)
    if "optimizer" not in checkpoint or "config" not in checkpoint:
        raise PnnhError(f"{resume} holds weights only, not a training state; resume from the run's last.pt")
    saved = TrainConfig.from_dict(checkpoint["config"])
    if given is not None:
        taken = {k: getattr(cfg, k) for k in (*given, *RESUME_SAFE) if hasattr(saved, k)}
        cfg = replace(saved, **{**taken, "output": cfg.output if "output" in given else None})
    conflicts = config_differences(cfg, saved)
    if conflicts:
        given = ", ".join(f"{flag(k)} {getattr(cfg, k)!r}" for k in conflicts)
        was = ", ".join(f"{getattr(saved, k)!r}" for k in conflicts)
        raise PnnhError(f"--resume {resume} continues a run trained with {was}, not {given}: drop "
                        f"{'that option' if len(conflicts) == 1 else 'those options'}, or start a new run "
                        f"in another --output")
    cfg = replace(saved, **{k: getattr(cfg, k) for k in RESUME_SAFE})
    return replace(cfg, output=cfg.output or str(Path(resume).parent)), checkpoint


def train(cfg: TrainConfig, resume: str | Path | None = None, given: set[str] | None = None) -> dict:
    """Train ``cfg``; with ``resume`` (a last.pt), continue that run exactly where it stopped.

    A resumed run keeps the checkpoint's config: ``cfg`` may change only where and how it runs
    (RESUME_SAFE: device, workers, output folder, checkpoint frequency). It writes into
    ``cfg.output``, or the checkpoint's own folder when that is unset; ``given``: see ``_resume_state``.
    """
    checkpoint = None
    if resume is not None:
        cfg, checkpoint = _resume_state(cfg, resume, given)
    cfg.validate()
    device = resolve_device(cfg.device)
    check_amp(device, cfg.amp)
    dist_info = distributed.init_distributed(device.type)
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
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
    train_loader, test_loader = loaders["train"], loaders["test"]
    torch.manual_seed(cfg.seed)
    spec = model_config(cfg.model, cfg.kind, cfg.model_kwargs, len(train_set.classes), train_set.input_size,
                        *(stats or (None, None)), train_set.classes)
    model = build_model(spec)
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
        if device.type == "cuda" and "cuda" in checkpoint["rng"]:
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"], device)
        epoch, step_in_epoch = checkpoint["epoch"], checkpoint["step"]
        history, best_acc, partial = checkpoint["history"], checkpoint["best_acc"], checkpoint["partial"]
    if dist_info.is_main:
        make_dir(run_dir)
        remove_leftovers(run_dir)  # left by a process killed while writing
        write_json(run_dir / "config.json", asdict(cfg))
        write_json(run_dir / "model.json", spec)  # how to rebuild the model, beside the metrics

    board = tensorboard_writer(run_dir, epoch) if cfg.log == "tensorboard" and dist_info.is_main else None
    raw_model = model
    if dist_info.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(model) if cfg.compile else model

    def weights() -> dict:
        """What resume, eval, the probe and load_model need: weights, how to rebuild the model, the run's config."""
        return {"config": asdict(cfg), "model_config": spec, "model": raw_model.state_dict(), "data_stats": stats,
                "classes": train_set.classes}

    def check_finite(where: str) -> None:
        """Refuse to go on (or to save) once the loss, the gradient norm or a weight is not finite."""
        bad = int(first_bad.item())
        state = [t for t in raw_model.state_dict().values() if t.is_floating_point()]  # weights and BN statistics
        if bad < 0 and not bool(torch.stack([t.isfinite().all() for t in state]).all()):
            bad = steps_done
        if dist_info.enabled:
            bad = int(distributed.all_reduce_max([bad], device)[0])
        if bad >= 0:
            bad_epoch, bad_step = divmod(bad - 1 + start_global, steps_per_epoch)
            kept = (f"the last good checkpoint, {run_dir / 'last.pt'}, is kept" if (run_dir / "last.pt").exists()
                    else "no checkpoint had been written yet")
            raise TrainingDiverged(
                f"training diverged: the loss or gradient became NaN/inf at epoch {bad_epoch + 1}, step "
                f"{bad_step + 1} of {steps_per_epoch} (found {where}); {kept}: lower --lr (now {cfg.lr}) "
                f"or set --clip-grad",
                bad_epoch + 1, bad_step + 1, steps_per_epoch)

    def save(epoch: int, step: int, sums: torch.Tensor, seconds: float) -> None:
        check_finite("before writing a checkpoint")
        if dist_info.is_main:
            rng = {"torch": torch.get_rng_state()}
            if device.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state(device)
            save_atomic({**weights(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "scaler": scaler.state_dict(), "rng": rng, "epoch": epoch, "step": step,
                         "history": history, "best_acc": best_acc, "partial": [*sums.tolist(), seconds]},
                        run_dir / "last.pt")

    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signum

    ran_on = hardware(device, dist_info.world_size)  # recorded in each epoch's row: a run may resume elsewhere
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    check_every = max(1, steps_per_epoch // 10)  # log and divergence checks: the only host syncs of an epoch
    start_global = epoch * steps_per_epoch + step_in_epoch
    steps_done = 0
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first step with a non-finite loss/gradient
    last_save = time.monotonic()
    try:
        while epoch < cfg.epochs:
            model.train()
            sums = torch.tensor(partial[:3], dtype=torch.float64, device=device)  # loss sum, correct, images
            start, seconds_before = time.perf_counter(), partial[3]
            step = step_in_epoch
            progress = bar(total=steps_per_epoch, initial=step, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
                           enabled=dist_info.is_main)
            for x, y in train_loader.batches(epoch, start_step=step_in_epoch):
                if cfg.mixup or cfg.cutmix:
                    x, partner, lam = mix_batch(x, cfg.mixup, cfg.cutmix, (cfg.seed, epoch, step, dist_info.rank))
                with autocast(device, cfg.amp):
                    logits = forward(x)
                    loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                    if cfg.mixup or cfg.cutmix:
                        loss = lam * loss + (1 - lam) * F.cross_entropy(logits, y[partner],
                                                                        label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                bad = ~torch.isfinite(loss.detach())
                if cfg.clip_grad:
                    scaler.unscale_(optimizer)
                    norm = nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.clip_grad)
                    if not scaler.is_enabled():  # fp16's scaler skips steps with inf gradients by design
                        bad = bad | ~torch.isfinite(norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                steps_done += 1
                with torch.no_grad():  # accumulated on the device: no host sync per step
                    sums += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double(),
                                         torch.full((), len(y), dtype=torch.float64, device=device)])
                    first_bad = torch.where(bad & (first_bad < 0), steps_done, first_bad)
                progress.update()
                due = step % check_every == 0 or step == steps_per_epoch
                by_steps = cfg.checkpoint_every > 0 and steps_done % cfg.checkpoint_every == 0
                stop_now = stop["signal"] is not None or steps_done == cfg.stop_after_steps
                by_time = cfg.checkpoint_minutes > 0 and time.monotonic() - last_save >= 60 * cfg.checkpoint_minutes
                if dist_info.enabled:  # processes agree at shared check points only: no collective per step
                    if not (due or by_steps or steps_done == cfg.stop_after_steps):
                        continue
                    stop_now, by_time = (v > 0 for v in distributed.all_reduce_max([stop_now, by_time], device))
                if due:
                    check_finite("at a log point")
                    loss_sum, correct, seen = sums.tolist()
                    text = (f"loss {loss_sum / seen:.4f} acc {100 * correct / seen:5.2f}% "
                            f"{seen * dist_info.world_size / (seconds_before + time.perf_counter() - start):,.0f} img/s")
                    progress.set_postfix_str(text, refresh=False)
                    if dist_info.is_main and not bars_enabled() and step < steps_per_epoch:
                        log.info(f"epoch {epoch + 1}/{cfg.epochs} step {step}/{steps_per_epoch} {text}")
                if stop_now or by_time or by_steps:
                    save(epoch, step, sums, seconds_before + time.perf_counter() - start)
                    last_save = time.monotonic()
                    if stop_now:
                        progress.close()
                        raise TrainingInterrupted(run_dir / "last.pt", stop["signal"])
            progress.close()
            check_finite("at the end of the epoch")
            seconds = seconds_before + time.perf_counter() - start
            train_loss, train_correct, train_seen = distributed.all_reduce_sum(sums.tolist(), device)
            tested = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
            result = (evaluate(forward, test_loader, device, cfg.amp, desc=f"eval {epoch + 1}/{cfg.epochs}")
                      if tested else {"loss": None, "top1": None, "top5": None})  # untested epochs: null
            history.append({"epoch": epoch + 1, "train_loss": train_loss / train_seen,
                            "train_acc": train_correct / train_seen, "test_loss": result["loss"],
                            "test_acc": result["top1"], "test_acc5": result["top5"],
                            "img_per_s": train_seen / seconds, "lr": optimizer.param_groups[0]["lr"],
                            "seconds": seconds, "hardware": ran_on})
            if dist_info.is_main:
                test = f"test loss {result['loss']:.4f} acc {100 * result['top1']:.2f}%" if tested else "not tested"
                log.info(f"epoch {epoch + 1}/{cfg.epochs} train loss {train_loss / train_seen:.4f} "
                         f"acc {100 * train_correct / train_seen:.2f}% | {test} | {train_seen / seconds:,.0f} img/s")
            epoch, step_in_epoch, partial = epoch + 1, 0, [0.0, 0.0, 0.0, 0.0]
            if tested and result["top1"] >= best_acc and dist_info.is_main:
                best_acc = result["top1"]
                save_weights(run_dir / "best.safetensors", raw_model.state_dict(),
                             {"model_config": spec, "config": asdict(cfg), "epoch": epoch, "test_acc": best_acc})
            if dist_info.is_main:
                write_metrics(run_dir, history)
            if board is not None:
                for key, value in history[-1].items():
                    if key != "epoch" and isinstance(value, (int, float)):
                        board.add_scalar(key, value, epoch)
                board.flush()
            save(epoch, 0, torch.zeros(3, dtype=torch.float64), 0.0)
            last_save = time.monotonic()
            if stop["signal"] is not None and epoch < cfg.epochs:
                raise TrainingInterrupted(run_dir / "last.pt", stop["signal"])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if board is not None:
            board.close()
    if dist_info.is_main:
        write_metrics(run_dir, history)
    return {"run_dir": str(run_dir), "history": history, "best_acc": best_acc,
            "final": history[-1] if history else None, "model": raw_model}
