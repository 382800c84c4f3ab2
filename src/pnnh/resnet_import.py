"""Bring your own ResNet: a torchvision or timm ResNet (a module, or a weights file and its architecture name)
as pnnh's ``residual`` model with the same weights, or as the ``pnnh`` kind computing the same function.

The residual form is a renaming of the weights (torchvision and timm name them alike):

    conv1, bn1                        -> stem.0.conv, stem.0.bn
    layer{s}.{b}.conv{k}, bn{k}       -> blocks.{i}.learner.{k-1}.conv, .bn     (i counts blocks over stages)
    layer{s}.{b}.downsample.0, .1     -> blocks.{i}.shortcut.0, .1
    fc                                -> fc

The pnnh form keeps the learners; its default coder (frozen, orthogonal, as wide as the block) passes x
unchanged where the block keeps its width, and where it changes, the coder's decoder D is set to P E^T
(P the shortcut's 1x1 conv, E the coder's orthogonal encoder), so D E x = P x and its BatchNorm is the
shortcut's. ``to_plain`` of the pnnh form is the network's plain chain. A module is converted only after
the converted model is checked against it on a probe batch.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import hub, models
from .checkpoint import digest, load_checkpoint
from .convert import relative_error
from .errors import PnnhError
from .models.layers import Block, ProjectionCoder

# architecture -> (pnnh model, its options, block counts, bottleneck)
ARCHS: dict[str, tuple[str, dict, tuple[int, ...], bool]] = {
    "resnet18": ("resnet18", {}, (2, 2, 2, 2), False),
    "resnet34": ("resnet34", {}, (3, 4, 6, 3), False),
    "resnet50": ("resnet50", {}, (3, 4, 6, 3), True),
    "resnet101": ("resnet101", {}, (3, 4, 23, 3), True),
    "resnet152": ("resnet152", {}, (3, 8, 36, 3), True),
    "wide_resnet50_2": ("resnet50", {"learner_ratio": 2.0}, (3, 4, 6, 3), True),
    "wide_resnet101_2": ("resnet101", {"learner_ratio": 2.0}, (3, 4, 23, 3), True),
}
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
PROBE_TOLERANCE = 1e-4  # max |difference| / max |logit| on the probe batch


def supported() -> str:
    return ", ".join(ARCHS)


def key_map(arch: str) -> dict[str, str]:
    """torchvision/timm state-dict key -> pnnh key, for ``arch``."""
    if arch not in ARCHS:
        raise PnnhError(f"unsupported architecture {arch!r}; supported: {supported()} (torchvision or timm)")
    _, _, layers, bottleneck = ARCHS[arch]
    pairs = {"conv1.weight": "stem.0.conv.weight", **{f"bn1.{k}": f"stem.0.bn.{k}" for k in BN_KEYS},
             "fc.weight": "fc.weight", "fc.bias": "fc.bias"}
    i = 0
    for stage, n in enumerate(layers, start=1):
        for b in range(n):
            src, dst = f"layer{stage}.{b}", f"blocks.{i}"
            for k in range(3 if bottleneck else 2):
                pairs[f"{src}.conv{k + 1}.weight"] = f"{dst}.learner.{k}.conv.weight"
                pairs.update({f"{src}.bn{k + 1}.{p}": f"{dst}.learner.{k}.bn.{p}" for p in BN_KEYS})
            if b == 0 and (stage > 1 or bottleneck):  # the width or the resolution changes: a projection
                pairs[f"{src}.downsample.0.weight"] = f"{dst}.shortcut.0.weight"
                pairs.update({f"{src}.downsample.1.{p}": f"{dst}.shortcut.1.{p}" for p in BN_KEYS})
            i += 1
    return pairs


def from_resnet(model_or_weights: nn.Module | dict | str | Path, arch: str | None = None,
                kind: str = "residual") -> models.PnnhNet:
    """A torchvision/timm ResNet as a pnnh model, in eval mode, its build record (with the origin) in
    ``model_config``.

    ``model_or_weights``: the module itself (its architecture is read from it), a state dict, or a weights
    file (``.pth``/``.pt`` state dict, ``.safetensors``) with ``arch`` naming its architecture.
    ``kind``: ``residual`` (the same weights) or ``pnnh`` (the same function, plain by ``pnnh.to_plain``).
    """
    if kind not in ("residual", "pnnh"):
        raise PnnhError(f"kind {kind!r} cannot hold a ResNet's function: choose residual or pnnh (the plain "
                        f"chain is pnnh.to_plain of the pnnh kind; the plain kind drops the skips)")
    original = model_or_weights if isinstance(model_or_weights, nn.Module) else None
    if original is not None:
        library, found = _read_module(original)
        if arch is not None and arch != found:
            raise PnnhError(f"the module is a {found}, not a {arch}: drop arch or name {found}")
        arch, state = found, original.state_dict()
        origin = {"library": library, "arch": arch, "sha256": digest(state)}
        mean, std = _module_stats(original)
    else:
        if arch is None:
            raise PnnhError(f"name the architecture of the weights (arch=, --arch): one of {supported()}")
        state, origin = _read_weights(model_or_weights, arch)  # type: ignore[arg-type]  # not a module here
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    residual = _residual(state, arch, origin, mean, std)
    model = residual if kind == "residual" else residual_to_pnnh(residual)
    if original is not None:
        _check_parity(original, model, arch)
    return model


def residual_to_pnnh(residual: Any) -> models.PnnhNet:
    """The pnnh kind with the default coder that computes what ``residual`` computes (see the module's text)."""
    config = {**residual.model_config, "kind": "pnnh"}
    pnnh: Any = hub.build_model(config)
    state = pnnh.state_dict()
    for key, value in residual.state_dict().items():
        if ".shortcut." not in key:
            state[key] = value
    for i, (r_block, p_block) in enumerate(zip(residual.blocks, pnnh.blocks)):
        shortcut: Any = getattr(r_block, "shortcut", None)
        if isinstance(r_block, Block) and isinstance(shortcut, nn.Sequential):
            coder = p_block.coder
            assert isinstance(coder, ProjectionCoder)  # the same builder puts one where the shortcut projects
            conv: Any = shortcut[0]
            projection = conv.weight[:, :, 0, 0]
            state[f"blocks.{i}.coder.conv.weight"] = (projection @ coder.weight.t())[:, :, None, None]
            for k, v in shortcut[1].state_dict().items():
                state[f"blocks.{i}.coder.bn.{k}"] = v
    pnnh.load_state_dict(state)
    pnnh.model_config = config
    return pnnh.eval()


def _residual(state: dict, arch: str, origin: dict, mean: list[float], std: list[float]) -> models.PnnhNet:
    pairs = key_map(arch)
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DistributedDataParallel
    missing = [k for k in pairs if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in pairs]
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:3])}" + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")]
                 if missing else [])
        parts += ([f"unexpected {', '.join(unexpected[:3])}"
                   + (f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else "")] if unexpected else [])
        raise PnnhError(f"the weights are not a torchvision/timm {arch}: {'; '.join(parts)}")
    fc, conv1 = state["fc.weight"], state["conv1.weight"]
    name, options, _, _ = ARCHS[arch]
    config = hub.model_config(name, "residual", options, fc.shape[0], (conv1.shape[1], 224, 224), mean, std)
    config["origin"] = origin
    model = hub.build_model(config)
    expected = model.state_dict()
    mapped = {pairs[k]: v for k, v in state.items()}
    mapped.update({k: expected[k] for k in expected if k not in mapped})  # num_batches_tracked, if left out
    wrong = [f"{src} {tuple(state[src].shape)} (a {arch} has {tuple(expected[dst].shape)})"
             for src, dst in pairs.items() if src in state and state[src].shape != expected[dst].shape]
    if wrong:
        raise PnnhError(f"the weights do not fit a {arch}: {'; '.join(wrong[:3])}"
                        + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in mapped.items()})
    model.model_config = config
    return model.eval()


def _read_weights(weights: dict | str | Path, arch: str) -> tuple[dict, dict]:
    if isinstance(weights, dict):
        return weights, {"library": None, "arch": arch, "sha256": digest(weights)}
    path = Path(weights)
    if not path.is_file():
        raise PnnhError(f"weights file {path} does not exist")
    if path.suffix not in (".pth", ".pt", ".bin", ".safetensors"):
        raise PnnhError(f"weights file {path}: give a state dict file (.pth, .pt) or a .safetensors file")
    state = load_checkpoint(path)["model"]  # refuses missing, damaged and unsafe files
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PnnhError(f"{path} is not a state dict of tensors")
    return state, {"library": None, "arch": arch, "weights": path.name,
                   "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _read_module(model: Any) -> tuple[str, str]:
    """(library, architecture) of a torchvision or timm ResNet, or a refusal naming what is supported."""
    module = type(model).__module__
    library = module.split(".")[0]
    if type(model).__name__ != "ResNet" or library not in ("torchvision", "timm"):
        raise PnnhError(f"{type(model).__module__}.{type(model).__name__} is not a torchvision or timm ResNet; "
                        f"supported: {supported()}")
    if not isinstance(model.conv1, nn.Conv2d) or model.conv1.kernel_size != (7, 7):
        raise PnnhError("a ResNet with a deep stem (timm's resnet*c/d/s) is not supported: only the 7x7 stem of "
                        f"{supported()}")
    layers, bottleneck = [], None
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        layers.append(len(stage))
        for block in stage:
            bottleneck = hasattr(block, "conv3")
            unsupported = [name for name, part in (("SE/attention", getattr(block, "se", None)),
                                                   ("anti-aliased downsampling", getattr(block, "aa", None)),
                                                   ("DropBlock", getattr(block, "drop_block", None)))
                           if part is not None and not isinstance(part, nn.Identity)]
            drop_path: Any = getattr(block, "drop_path", None)
            if drop_path is not None and getattr(drop_path, "drop_prob", 0.0) > 0:
                unsupported.append("stochastic depth")
            if block.conv2.groups != 1:
                unsupported.append("grouped convolutions (ResNeXt)")
            down = block.downsample
            if down is not None and not (isinstance(down, nn.Sequential) and len(down) == 2
                                         and isinstance(down[0], nn.Conv2d) and down[0].kernel_size == (1, 1)):
                unsupported.append("an average-pool shortcut (timm's resnet*d)")
            if unsupported:
                raise PnnhError(f"a ResNet with {', '.join(unsupported)} is not supported: {supported()}")
    width = model.layer1[0].conv1.out_channels / 64
    for arch, (_, options, counts, neck) in ARCHS.items():
        if counts == tuple(layers) and neck == bottleneck and width == options.get("learner_ratio", 1.0):
            return library, arch
    raise PnnhError(f"a {library} ResNet with blocks {tuple(layers)} ({'bottleneck' if bottleneck else 'basic'}, "
                    f"width x{width:g}) is not supported: {supported()}")


def _module_stats(model: nn.Module) -> tuple[list[float], list[float]]:
    """The module's input normalisation: timm records it; torchvision's weights expect ImageNet's."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return list(cfg.get("mean", IMAGENET_MEAN)), list(cfg.get("std", IMAGENET_STD))


def _check_parity(original: Any, converted: nn.Module, arch: str) -> None:
    was_training = original.training
    original.eval()
    x = torch.randn(2, original.conv1.in_channels, 64, 64, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            expected, got = original(x), converted(x)
    finally:
        original.train(was_training)
    error = relative_error(got, expected)
    if not error <= PROBE_TOLERANCE:
        raise PnnhError(f"the converted {arch} does not compute what the module computes (max |difference| / "
                        f"max |logit| = {error:.2e} on a probe batch): it is not a standard {arch}")
