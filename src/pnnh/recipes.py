"""Named recipes: a set of training settings selected with one flag (``pnnh train --recipe cifar-fast``).

A recipe gives the settings of ``TrainConfig`` that make a method; a ``--config`` file and flags on the
command line still win. Every setting ends up in the run's ``config.json`` (with the recipe's name), so
``compare`` refuses to mix runs of different recipes, or of one recipe on machines of other precision.
"""
from __future__ import annotations

from typing import Any

from .config import TrainConfig
from .device import bf16_units, resolve_device
from .errors import PnnhError
from .progress import log

RECIPES: dict[str, dict[str, Any]] = {
    # The CIFAR ResNets on the full training set, near convergence on a CPU: large batches with a short
    # warm-up and a linear decay to 0, Nesterov SGD, label smoothing, an average of the weights (what is
    # tested and saved), flip test-time augmentation reported beside the plain accuracy, channels-last,
    # and bf16 where the CPU has bf16 units ("amp": "auto"). 25 epochs: the shortest length measured that
    # brings the residual resnet56 to about 88% (benchmarks/results/time_to_accuracy/README.md: what each
    # length reaches and costs); the near-convergence evidence's budget.
    "cifar-fast": {
        "epochs": 25, "batch_size": 512, "opt": "sgd", "lr": 0.8, "momentum": 0.9, "weight_decay": 5e-4,
        "sched": "onecycle", "warmup_epochs": 2.0, "label_smoothing": 0.1, "crop_padding": 4, "flip": True,
        "ema": 0.98, "eval_flip": True, "channels_last": True, "amp": "auto",
    },
}


def bf16_available(device: str = "auto") -> bool:
    """Whether bf16 runs on real units where ``device`` resolves: a CUDA GPU, or a CPU with AMX/AVX512-BF16."""
    return resolve_device(device).type == "cuda" or bool(bf16_units())


def recipe_options(name: str, device: str = "auto") -> dict[str, Any]:
    """The settings of recipe ``name`` as TrainConfig fields (``recipe`` included), its ``amp: auto``
    resolved for ``device``: bf16 where it has bf16 units, float32 (none) elsewhere."""
    if name not in RECIPES:
        raise PnnhError(f"unknown recipe {name!r}; recipes: {', '.join(sorted(RECIPES))}")
    options = {**RECIPES[name], "recipe": name}
    if options.get("amp") == "auto":
        options["amp"] = "bf16" if bf16_available(device) else "none"
        if options["amp"] == "none":
            log.info("recipe %s: this CPU has no bf16 units (amx_bf16, avx512_bf16), so it trains in float32 "
                     "channels-last, at about a third of the speed of a CPU with them", name)
    return options


def recipe_config(name: str, **overrides: Any) -> TrainConfig:
    """A TrainConfig of recipe ``name`` with ``overrides`` (model, data, seed, ...) on top."""
    options = recipe_options(name, overrides.get("device", "auto"))
    return TrainConfig.from_dict({**options, **overrides})


__all__ = ["RECIPES", "bf16_available", "recipe_config", "recipe_options"]
