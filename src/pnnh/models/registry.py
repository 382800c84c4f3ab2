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

# Every kind; a family states which of them it builds (FAMILY_INFO["kinds"], default BASE_KINDS).
BASE_KINDS = ("residual", "plain", "pnnh")
SKIP_FREE_KINDS = ("tat", "looks_linear", "dirac", "repvgg")  # the other ways to train a deep plain net
KINDS = BASE_KINDS + SKIP_FREE_KINDS
# Model options that only one kind takes (a residual net has no coder to set).
KIND_OPTIONS = {"coder": "pnnh", "coder_share": "pnnh", "code_ratio": "pnnh"}

class PnnhNet(nn.Module):
    """What every registered model is: an ``nn.Module`` with timm's ``default_cfg`` (input size, classes)
    and ``num_classes``; a model rebuilt by ``pnnh.hub`` also carries its build record, ``model_config``."""

    default_cfg: dict
    num_classes: int
    model_config: dict


_MODELS: dict[str, Callable[..., PnnhNet]] = {}
_FAMILY: dict[str, str] = {}
# What each family supports, stated by the family's module (FAMILY_INFO) and read by the tests and tools:
#   kinds: the kinds it builds; plain_form: kinds that to_plain converts;
#   img_size_option: the constructor takes img_size (ViTs);
#   test_kwargs / test_input: a small instance and input for tests (C, H, W).
_FAMILY_INFO: dict[str, dict] = {}
# kind -> fn(model): turns a freshly built ConvNet (plain structure) into that kind, in place; each
# skip-free kind's module registers one (models/tat.py, looks_linear.py, dirac.py, repvgg.py).
_KIND_TRANSFORMS: dict[str, Callable[[nn.Module], None]] = {}


def register_kind(name: str) -> Callable[[Callable[[nn.Module], None]], Callable[[nn.Module], None]]:
    """Decorator: ``fn(model)`` makes kind ``name`` out of a ConvNet built with plain blocks (it swaps
    layers and initialises weights; ConvNet calls it at the end of its constructor)."""
    if name not in SKIP_FREE_KINDS:
        raise PnnhError(f"register_kind: {name!r} is not one of {', '.join(SKIP_FREE_KINDS)}")

    def register(fn: Callable[[nn.Module], None]) -> Callable[[nn.Module], None]:
        _KIND_TRANSFORMS[name] = fn
        return fn
    return register


def kind_transform(kind: str) -> Callable[[nn.Module], None] | None:
    return _KIND_TRANSFORMS.get(kind)


def register_model(fn: Callable[..., PnnhNet]) -> Callable[..., PnnhNet]:
    """Decorator: register ``fn(kind=..., **kwargs)`` under its function name; its module's FAMILY_INFO
    (a dict, see ``model_info``) states what the family supports."""
    family = fn.__module__.rsplit(".", 1)[-1]
    _MODELS[fn.__name__] = fn
    _FAMILY[fn.__name__] = family
    _FAMILY_INFO[family] = getattr(sys.modules[fn.__module__], "FAMILY_INFO", {})
    return fn


def model_info(name: str) -> dict:
    """The family's statement for model ``name``: {"family", "kinds", "plain_form", "img_size_option",
    "test_kwargs", "test_input", "first_conv", "classifier"} (defaults: the base kinds, plain form for plain
    and pnnh, no img_size option, 3x32x32 test input, a CNN's layer names)."""
    check_model_name(name)
    info = {"kinds": BASE_KINDS, "plain_form": ("plain", "pnnh"), "img_size_option": False, "test_kwargs": {},
            "test_input": (3, 32, 32), "first_conv": "stem.0.conv", "classifier": "fc"}
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


def check_kind(kind: str, name: str | None = None) -> None:
    """Refuse an unknown kind, or (with a model ``name``) a kind that the model's family does not build."""
    if kind not in KINDS:
        raise PnnhError(f"unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if name is not None and kind not in model_info(name)["kinds"]:
        builders = [m for m in list_models() if kind in model_info(m)["kinds"]]
        raise PnnhError(f"kind {kind!r} is not built for {name} (family {model_family(name)}, kinds: "
                        f"{', '.join(model_info(name)['kinds'])}); {kind} is built for: {', '.join(builders)}")


def check_kind_options(kind: str, options: dict) -> None:
    """Refuse an option that only another kind takes (KIND_OPTIONS: the coder's options are pnnh's)."""
    for key, value in options.items():
        if KIND_OPTIONS.get(key, kind) != kind:
            raise PnnhError(f"model option {key} applies to kind {KIND_OPTIONS[key]} only, not {kind}: drop "
                            f"{key}={value}")


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
    check_kind(kind, name)
    allowed = model_options(name)
    check_kind_options(kind, {k: v for k, v in options.items() if k in allowed})
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
    check_kind(kind, name)
    check_kind_options(kind, kwargs)
    try:
        return _MODELS[name](kind=kind, **kwargs)
    except TypeError as e:  # an unknown keyword option
        raise PnnhError(f"bad option for {name}: {e}") from None
