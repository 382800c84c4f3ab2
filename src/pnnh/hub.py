"""Models from records and files: the build record (``model_config``), and weights loaded into a model.

This module sits above both the model zoo (which knows no files) and the checkpoint formats (which know
no models). ``pnnh.create_model(..., checkpoint_path=...)`` and ``pnnh.load_model(path)`` live here.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from . import models
from .checkpoint import checkpoint_state, load_checkpoint
from .convert import chain_from_spec
from .errors import PnnhError


def model_config(name: str, kind: str, kwargs: dict, num_classes: int, input_size: tuple[int, int, int],
                 mean: list[float] | None = None, std: list[float] | None = None,
                 classes: list[str] | None = None) -> dict:
    """The build record: what rebuilds a model and feeds it (constructor arguments, input size,
    normalisation, class names).

    Every checkpoint and export carries one under the key ``model_config``, a run folder as
    ``model.json``, and a loaded model as its ``model_config`` attribute.
    """
    return {"name": name, "kind": kind, "kwargs": dict(kwargs), "num_classes": int(num_classes),
            "in_chans": int(input_size[0]), "input_size": [int(s) for s in input_size],
            "mean": None if mean is None else [float(v) for v in mean],
            "std": None if std is None else [float(v) for v in std],
            "classes": None if classes is None else list(classes)}


def build_model(model_config: dict) -> models.PnnhNet:
    """The model a build record describes, freshly initialised (on the current default device)."""
    kwargs = dict(model_config["kwargs"])
    if models.model_info(model_config["name"])["img_size_option"]:  # a ViT is built for its data's image size
        kwargs.setdefault("img_size", model_config["input_size"][-1])
    return models.create_model(model_config["name"], kind=model_config["kind"],
                               num_classes=model_config["num_classes"], in_chans=model_config["in_chans"], **kwargs)


def load_model_state(model: nn.Module, state: dict, path: str | Path | None) -> None:
    """``model.load_state_dict(state)``, refused in one line (naming ``path``) when the weights do not fit."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise PnnhError(f"checkpoint {path} does not fit this model ({detail}); "
                        f"pass the --model, --kind and options it was trained with") from None


def create_model(name: str, kind: str = "residual", checkpoint_path: str | Path | None = None,
                 **kwargs) -> models.PnnhNet:
    """Build a registered model, e.g. ``create_model("resnet56", kind="pnnh", learner_ratio=0.5)``.

    Keyword options (``num_classes``, ``in_chans``, ``learner_ratio``, the coder's
    ``coder``/``coder_share``/``code_ratio``, ...) go to the family's constructor.
    ``checkpoint_path``: load these weights (a run's last.pt or best.safetensors) into it, as timm does;
    ``load_model(path)`` instead rebuilds the model a checkpoint records.
    """
    model = models.create_model(name, kind=kind, **kwargs)
    if checkpoint_path is not None:
        load_model_state(model, checkpoint_state(load_checkpoint(checkpoint_path), checkpoint_path)[0],
                         checkpoint_path)
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu", weights: str = "auto") -> nn.Module:
    """The trained model of a checkpoint (``last.pt``, ``best.safetensors``) or export, in eval mode.

    Its ``model_config`` attribute holds the build record: input size, mean and std, class names.
    ``weights``: of a ``last.pt`` trained with ``--ema``, the average (``auto``, ``ema``: what the run
    tested) or the trained weights themselves (``raw``).
    """
    return model_from_checkpoint(load_checkpoint(path), path, device, weights)


def model_from_checkpoint(checkpoint: dict, path: str | Path | None, device: str | torch.device = "cpu",
                          weights: str = "auto") -> nn.Module:
    """``load_model`` for a checkpoint already read with ``load_checkpoint``."""
    model_config = checkpoint.get("model_config")
    if model_config is None:
        raise PnnhError(f"{path} does not record how to build its model (a bare state dict, or a checkpoint from "
                        f"pnnh 0.1): build it with create_model(...) and load_state_dict")
    with torch.device("meta"):
        plain_layers = checkpoint.get("plain_layers")  # an export's plain chain
        model = chain_from_spec(plain_layers) if plain_layers else build_model(model_config)
    state = checkpoint_state(checkpoint, path, weights)[0]
    model = model.to_empty(device=device)
    load_model_state(model, state, path)
    model.model_config = model_config
    return model.eval()
