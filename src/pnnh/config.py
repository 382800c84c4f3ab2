"""The training config: one dataclass, its checks, and what a resumed run may change.

Every ``pnnh train`` / ``pnnh compare`` flag is a field here (the CLI builds its flags from these fields),
and every default is set here once. A run folder records it as ``config.json``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .errors import PnnhError


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
    nesterov: bool = True             # sgd: Nesterov momentum (False: classical momentum)
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
    ema: float = 0.0                  # decay of an exponential moving average of the weights (0: off)
    eval_flip: bool = False           # also test with horizontal-flip test-time augmentation (test_acc_flip)
    recipe: str | None = None         # the named recipe (pnnh.recipes) these settings started from
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
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PnnhError(f"unknown config key(s): {', '.join(unknown)}")
        return cls(**d)

    @property
    def run_dir(self) -> Path:
        return Path(self.output or f"runs/{self.model}-{self.kind}-seed{self.seed}")


HELP = {  # the --help line of each field's flag (pnnh train, pnnh compare)
    "model": "model name (see `pnnh models`)",
    "kind": "residual | plain | pnnh | tat | looks_linear | dirac | repvgg (the last four: CIFAR ResNets)",
    "model_kwargs": "model options as key=value, separated by spaces or commas, e.g. learner_ratio=0.5 coder=learned",
    "data": "cifar10 | cifar100 | mnist | fashion-mnist | imagefolder",
    "data_dir": "folder of the data set (fashion-mnist: found in /usr/share/datasets if installed)",
    "download": "fetch the official CIFAR/MNIST/Fashion-MNIST files (MD5-checked) if they are not on disk",
    "cache_dir": "where decoded image folders are cached (default ~/.cache/pnnh, or $PNNH_CACHE_DIR)",
    "batch_size": "images per process and step", "opt": "sgd (Nesterov) | adamw",
    "nesterov": "sgd with Nesterov momentum; --no-nesterov: classical (heavy-ball) momentum",
    "sched": "cosine | step | onecycle | constant", "amp": "none | bf16 | fp16 (autocast)",
    "output": "run folder (default runs/<model>-<kind>-seed<seed>; compare: reports/<model>-<data>)",
    "stop_after_steps": "stop as if interrupted after N steps (checkpoint, exit 130): to test --resume",
    "log": "none | tensorboard: per-epoch metrics and lr as TensorBoard events in <output>/tensorboard",
    "image_pipeline": "image folders: auto (by image size; mixed sizes refused) | memory | stream",
    "checkpoint_every": "also write last.pt every N optimiser steps", "clip_grad": "clip the gradient norm to this",
    "eval_every": "evaluate on the test split every N epochs (and after the last; other epochs' test metrics are null)",
    "checkpoint_minutes": "write last.pt at least this often during an epoch (0: off)",
    "mixup": "Beta alpha of mixup on the batch (e.g. 0.8; 0: off)", "cutmix": "Beta alpha of CutMix (e.g. 1.0; 0: off)",
    "ema": "decay of an exponential moving average of the weights, updated every step; the average is what is "
           "tested and saved (e.g. 0.99; 0: off)",
    "eval_flip": "also test each evaluated epoch with horizontal-flip test-time augmentation (test_acc_flip)",
    "recipe": "start from a named recipe's settings (see pnnh.recipes; e.g. cifar-fast); --config and flags win",
}
CHOICES = {"opt": ("sgd", "adamw"), "sched": ("cosine", "step", "onecycle", "constant"),
           "amp": ("none", "bf16", "fp16"), "image_pipeline": ("auto", "memory", "stream"),
           "log": ("none", "tensorboard")}
RANGES = {
    "epochs": (lambda v: 1 <= v <= 100_000, "from 1 to 100,000"),
    "batch_size": (lambda v: 1 <= v <= 65_536, "from 1 to 65,536"),
    "lr": (lambda v: v > 0, "positive"), "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, "0 or more"), "warmup_epochs": (lambda v: v >= 0, "0 or more"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"), "clip_grad": (lambda v: v > 0, "positive"),
    "mixup": (lambda v: v >= 0, "0 or more"), "cutmix": (lambda v: v >= 0, "0 or more"),
    "crop_padding": (lambda v: 0 <= v <= 64, "from 0 to 64"), "cutout": (lambda v: 0 <= v <= 4096, "from 0 to 4,096"),
    "image_size": (lambda v: 8 <= v <= 4096, "from 8 to 4,096"),
    "seed": (lambda v: 0 <= v < 2**32, "from 0 to 4,294,967,295"),
    "workers": (lambda v: 0 <= v <= 256, "from 0 to 256"), "train_subset": (lambda v: v >= 1, "at least 1"),
    "test_subset": (lambda v: v >= 1, "at least 1"), "stop_after_steps": (lambda v: v >= 1, "at least 1"),
    "checkpoint_every": (lambda v: v >= 0, "0 or more"), "checkpoint_minutes": (lambda v: v >= 0, "0 or more"),
    "eval_every": (lambda v: v >= 1, "at least 1"), "ema": (lambda v: 0 <= v < 1, "in [0, 1)"),
}
# What a resumed run (or a compare reusing a run) may differ in: where and how it runs, not what it computes.
RESUME_SAFE = ("device", "workers", "output", "checkpoint_every", "checkpoint_minutes", "stop_after_steps", "log",
               "cache_dir")
_TYPE_WORDS = {"int": "an integer", "int | None": "an integer", "float": "a finite number",
               "float | None": "a finite number", "str": "a string", "str | None": "a string",
               "bool": "true or false", "dict": "a mapping of option: value"}


def precision(amp: str) -> str:
    """The number format a run's ``amp`` setting trains in, as reports name it: float32, bf16 or fp16."""
    return "float32" if amp == "none" else amp


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


def config_differences(a: TrainConfig, b: TrainConfig, ignore: tuple[str, ...] = RESUME_SAFE) -> list[str]:
    """The keys (outside ``ignore``) in which two configs differ."""
    return [f.name for f in fields(a) if f.name not in ignore and getattr(a, f.name) != getattr(b, f.name)]


def resume_config(cfg: TrainConfig, saved: TrainConfig, resume: str | Path, given: set[str] | None) -> TrainConfig:
    """The config to continue a run with: the checkpoint's own (``saved``), where ``cfg`` may differ only in
    RESUME_SAFE keys (anything else is refused, naming the keys); its output is the checkpoint's folder
    unless ``cfg`` names another.

    ``given``: the keys the user set (the command line); the others are taken from the checkpoint.
    None (a library call) compares every key of ``cfg``."""
    if given is not None:
        taken = {k: getattr(cfg, k) for k in (*given, *RESUME_SAFE) if hasattr(saved, k)}
        cfg = replace(saved, **{**taken, "output": cfg.output if "output" in given else None})
    conflicts = config_differences(cfg, saved)
    if conflicts:
        asked = ", ".join(f"{flag(k)} {getattr(cfg, k)!r}" for k in conflicts)
        was = ", ".join(f"{getattr(saved, k)!r}" for k in conflicts)
        raise PnnhError(f"--resume {resume} continues a run trained with {was}, not {asked}: drop "
                        f"{'that option' if len(conflicts) == 1 else 'those options'}, or start a new run "
                        f"in another --output")
    cfg = replace(saved, **{k: getattr(cfg, k) for k in RESUME_SAFE})
    return replace(cfg, output=cfg.output or str(Path(resume).parent))
