"""pnnh models in timm's registry: ``import pnnh.timm``, then ``timm.create_model("pnnh_resnet56_pnnh")``.

Every registered model and kind becomes ``pnnh_<model>_<kind>`` with a timm default config (input size,
mean, std, crop, interpolation), so timm's data config, ``train.py``, ``validate.py`` and ``benchmark.py``
accept them. Those scripts do not import pnnh themselves; run them through this module, which registers
the models first and then runs the script as ``__main__``:

    python -m pnnh.timm path/to/timm/train.py --model pnnh_resnet56_pnnh --data-dir ... [train.py's flags]

Needs the ``timm`` extra (timm needs torchvision; pnnh's core needs neither).
"""
from __future__ import annotations

import runpy
import sys

try:
    import timm
    from timm.models import register_model
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("pnnh.timm needs timm: pip install 'pnnh[timm]'") from e

from .errors import PnnhError
from .models import create_model, list_models, model_info

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_TIMM_ONLY_ZERO = ("drop_rate", "drop_path_rate", "drop_block_rate")  # accepted only at their default, 0
_TIMM_IGNORED = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "pretrained_model_args")

default_cfgs: dict[str, dict] = {}  # timm reads this module attribute when each model is registered


def timm_name(model: str, kind: str) -> str:
    return f"pnnh_{model}_{kind}"


def _default_cfg(model: str) -> dict:
    with __import__("torch").device("meta"):
        size = tuple(create_model(model).default_cfg["input_size"])
    small = size[1] <= 64
    return {"url": "", "num_classes": 10 if small else 1000, "input_size": size, "pool_size": None,
            "crop_pct": 1.0 if small else 0.875, "interpolation": "bilinear",
            "mean": CIFAR_MEAN if small else IMAGENET_MEAN, "std": CIFAR_STD if small else IMAGENET_STD,
            "first_conv": model_info(model)["first_conv"], "classifier": model_info(model)["classifier"],
            "license": "mit"}


def _entrypoint(model: str, kind: str, cfg: dict):
    def create(pretrained: bool = False, **kwargs):
        if pretrained:
            raise PnnhError(f"{timm_name(model, kind)} has no pretrained weights: train it (pnnh train or timm's "
                            f"train.py) and pass checkpoint_path=")
        for key in _TIMM_ONLY_ZERO:
            if kwargs.pop(key, 0):
                raise PnnhError(f"pnnh models do not implement {key}; leave it at 0")
        if kwargs.pop("global_pool", "avg") not in ("avg", ""):
            raise PnnhError("pnnh models pool with global average pooling only (global_pool='avg')")
        for key in _TIMM_IGNORED:
            kwargs.pop(key, None)
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        kwargs.setdefault("num_classes", cfg["num_classes"])
        net = create_model(model, kind=kind, **kwargs)
        if device is not None or dtype is not None:
            net.to(device=device, dtype=dtype)
        net.default_cfg = {**cfg, "architecture": timm_name(model, kind), "num_classes": net.num_classes}
        setattr(net, "pretrained_cfg", net.default_cfg)  # noqa: B010 -- timm's own name, not one of pnnh's
        return net

    create.__name__ = timm_name(model, kind)
    create.__qualname__ = create.__name__
    create.__module__ = __name__
    return create


def register_all() -> list[str]:
    """Register every pnnh model and kind with timm (idempotent); returns the timm names."""
    names, registered = [], set(timm.list_models("pnnh_*"))
    for model in list_models():
        cfg = _default_cfg(model)
        for kind in model_info(model)["kinds"]:
            name = timm_name(model, kind)
            names.append(name)
            if name in registered:
                continue
            default_cfgs[name] = dict(cfg)
            register_model(_entrypoint(model, kind, cfg))
    return names


NAMES = register_all()


def main() -> None:
    """``python -m pnnh.timm SCRIPT [ARGS]``: run one of timm's scripts with the pnnh models registered."""
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        raise SystemExit(2)
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
