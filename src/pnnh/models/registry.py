"""A timm-style registry: every model family registers its constructors here."""
from __future__ import annotations

import fnmatch
import inspect
import math
import sys
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from ..errors import PnnhError

KINDS = ("residual", "plain", "pnnh")



class PnnhNet(nn.Module):
    """What every registered model is: an ``nn.Module`` with timm's ``default_cfg`` (input size, classes)
    and ``num_classes``; a model rebuilt by ``pnnh.hub`` also carries its build record, ``model_config``."""

    default_cfg: dict
    num_classes: int
    model_config: dict


_MODELS: dict[str, Callable[..., PnnhNet]] = {}
_FAMILY: dict[str, str] = {}
# What each family supports, stated by the family's module (FAMILY_INFO) and read by the tests and tools:
#   plain_form: kinds that to_plain converts; img_size_option: the constructor takes img_size (ViTs);
#   test_kwargs / test_input: a small instance and input for tests (C, H, W).
_FAMILY_INFO: dict[str, dict] = {}


def register_model(fn: Callable[..., PnnhNet]) -> Callable[..., PnnhNet]:
    """Decorator: register ``fn(kind=..., **kwargs)`` under its function name; its module's FAMILY_INFO
    (a dict, see ``model_info``) states what the family supports."""
    family = fn.__module__.rsplit(".", 1)[-1]
    _MODELS[fn.__name__] = fn
    _FAMILY[fn.__name__] = family
    _FAMILY_INFO[family] = getattr(sys.modules[fn.__module__], "FAMILY_INFO", {})
    return fn


def model_info(name: str) -> dict:
    """The family's statement for model ``name``: {"family", "plain_form", "img_size_option", "test_kwargs",
    "test_input", "first_conv", "classifier"} (defaults: plain form for plain and pnnh, no img_size option,
    3x32x32 test input, a CNN's layer names)."""
    check_model_name(name)
    info = {"plain_form": ("plain", "pnnh"), "img_size_option": False, "test_kwargs": {}, "test_input": (3, 32, 32),
            "first_conv": "stem.0.conv", "classifier": "fc"}
    return {"family": _FAMILY[name], **info, **_FAMILY_INFO[_FAMILY[name]]}


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names (optionally filtered by a shell-style pattern), sorted naturally."""
    names = [n for n in _MODELS if pattern is None or fnmatch.fnmatch(n, pattern)]

    def natural(name: str) -> tuple[str, int]:
        stem = name.rstrip("0123456789")
        return stem, int(name[len(stem):] or 0)

    return sorted(names, key=natural)


def model_family(name: str) -> str:
    check_model_name(name)
    return _FAMILY[name]


def check_model_name(name: str) -> None:
    if name not in _MODELS:
        raise PnnhError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise PnnhError(f"unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def model_options(name: str) -> dict[str, Any]:
    """The keyword options of model ``name`` and their defaults (its family's builder's signature, less the
    kind and the layer types)."""
    builder = model_info(name).get("builder")
    if builder is None:
        return {}
    return {k: p.default for k, p in inspect.signature(builder).parameters.items()
            if p.default is not inspect.Parameter.empty and k != "kind" and not callable(p.default)}


def check_options(name: str, kind: str, options: dict, reserved: tuple[str, ...] = ()) -> None:
    """Refuse in one line, before any work: an unknown model or kind, a model option the model does not
    take or that the caller sets itself (``reserved``, e.g. num_classes from the data), or a value of the
    wrong type for the option (a number where the default is one, finite; a string where it is one)."""
    check_model_name(name)
    check_kind(kind)
    allowed = model_options(name)
    for key, value in options.items():
        if key in reserved:
            raise PnnhError(f"model option {key} is set from the data and the command line, not by --model-kwargs: "
                            f"drop {key}={value}")
        if key not in allowed:
            raise PnnhError(f"unknown model option {key!r} for {name}; its options: "
                            f"{', '.join(k for k in allowed if k not in reserved)}")
        default = allowed[key]
        if isinstance(default, bool) or default is None:
            ok, words = isinstance(value, bool) or default is None, "true or false"
        elif isinstance(default, int):
            ok, words = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            words = "a finite number"
        elif isinstance(default, str):
            ok, words = isinstance(value, str), "a string"
        else:
            ok, words = isinstance(value, type(default)), f"a {type(default).__name__} (not settable from text)"
        if not ok:
            raise PnnhError(f"model option {key} must be {words} (default {default!r}), got {value!r}")


def create_model(name: str, kind: str = "residual", **kwargs) -> PnnhNet:
    """Build a registered model, e.g. ``create_model("resnet56", kind="pnnh", learner_ratio=0.5)``; keyword
    options (``num_classes``, ``in_chans``, ``learner_ratio``, the coder's ``coder``/``coder_share``/
    ``code_ratio``, ...) go to the family's constructor. ``pnnh.create_model`` also loads a checkpoint."""
    check_model_name(name)
    check_kind(kind)
    try:
        return _MODELS[name](kind=kind, **kwargs)
    except TypeError as e:  # an unknown keyword option
        raise PnnhError(f"bad option for {name}: {e}") from None
