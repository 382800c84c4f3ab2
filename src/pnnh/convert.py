"""``to_plain``: rewrite a plain or PNNH model as a chain of conv/linear + activation layers.

This is the proof that a PNNH net is plain. In the chain, the coder's code is
ordinary channels of ordinary convs:

- a block's first conv gets 2K extra output channels, +E and -E at the kernel
  centre, so after the activation they hold [act(u), act(-u)];
- a middle conv carries them: [[I, -I], [-I, I]] at the centre maps the pair
  (p, m) to [act(p - m), act(m - p)] = [act(u), act(-u)] again (strided if the
  conv is), because act(u) - act(-u) = u;
- the last conv reads them with D and -D, D the coder's linear decoder (E^T,
  or the stage-changing block's 1x1 decoder with BN folded), and adds its bias.

BatchNorm is folded into the convs, so the chain holds only Conv2d/Linear with
bias, activations, pooling and Flatten.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .errors import PnnhError
from .models.layers import Block, ConvNet, ConvNormAct, bn_affine

PLAIN_MODULE_TYPES = (nn.Conv2d, nn.Linear, nn.ReLU, nn.GELU, nn.SiLU, nn.MaxPool2d, nn.AvgPool2d,
                      nn.AdaptiveAvgPool2d, nn.Flatten)


def to_plain(model: nn.Module) -> nn.Sequential:
    """An ``nn.Sequential`` of plain layers computing what the eval-mode ``model`` computes."""
    if not isinstance(model, ConvNet):
        raise PnnhError(f"to_plain takes a pnnh CNN (from create_model), got {type(model).__name__}")
    if model.kind == "residual":
        raise PnnhError("to_plain: a residual model has skip connections and is not a plain chain; "
                        "build it with kind='plain' or kind='pnnh'")
    if model.training:
        raise PnnhError("to_plain folds BatchNorm's running statistics: call model.eval() first")
    layers: list[nn.Module] = []
    for module in [*model.stem, *model.blocks]:
        layers += _plain_layers(module)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), copy.deepcopy(model.fc)]
    return nn.Sequential(*layers)


def block_to_plain(block: Block) -> nn.Sequential:
    """One block's plain layers (its convs, with the code's channels added, and activations)."""
    return nn.Sequential(*_block_layers(block))


@torch.no_grad()
def _plain_layers(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, ConvNormAct):
        weight, bias = _fold(module)
        return [_conv(module.conv, weight, bias), copy.deepcopy(module.act)]
    if isinstance(module, Block):
        return _block_layers(module)
    if isinstance(module, PLAIN_MODULE_TYPES):
        return [copy.deepcopy(module)]
    raise PnnhError(f"to_plain: no plain form for {type(module).__name__}")


def _fold(layer: ConvNormAct) -> tuple[torch.Tensor, torch.Tensor]:
    scale, shift = bn_affine(layer.bn)
    return layer.conv.weight * scale[:, None, None, None], shift


def _conv(like: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], like.kernel_size, like.stride, like.padding, bias=True,
                     device=weight.device, dtype=weight.dtype)
    conv.weight.copy_(weight)
    conv.bias.copy_(bias)
    return conv


@torch.no_grad()
def _block_layers(block: Block) -> list[nn.Module]:
    convs = list(block.learner)
    last = len(convs) - 1
    if block.coder is not None:
        encode = block.coder.encode_matrix()
        decode, decode_bias = block.coder.decode_affine()
        k = encode.shape[0]
    else:
        k = 0
    layers: list[nn.Module] = []
    for i, layer in enumerate(convs):
        weight, bias = _fold(layer)
        if k:
            out_ch, in_ch, kh, kw = weight.shape
            c = (kh // 2, kw // 2)  # the kernel's centre tap: a 1x1 map at the conv's stride
            code_in = 2 * k if i > 0 else 0
            code_out = 2 * k if i < last else 0
            w = weight.new_zeros(out_ch + code_out, in_ch + code_in, kh, kw)
            b = bias.new_zeros(out_ch + code_out)
            w[:out_ch, :in_ch] = weight
            b[:out_ch] = bias
            plus, minus = slice(in_ch, in_ch + k), slice(in_ch + k, in_ch + 2 * k)
            if i == 0:  # emit [u, -u] with u = E x
                w[out_ch:out_ch + k, :in_ch, c[0], c[1]] = encode
                w[out_ch + k:, :in_ch, c[0], c[1]] = -encode
            elif i < last:  # carry the pair: [p - m, m - p]
                eye = torch.eye(k, dtype=w.dtype, device=w.device)
                w[out_ch:out_ch + k, plus, c[0], c[1]] = eye
                w[out_ch:out_ch + k, minus, c[0], c[1]] = -eye
                w[out_ch + k:, plus, c[0], c[1]] = -eye
                w[out_ch + k:, minus, c[0], c[1]] = eye
            if i == last:  # decode D (p - m) + d
                w[:out_ch, plus, c[0], c[1]] = decode
                w[:out_ch, minus, c[0], c[1]] = -decode
                if decode_bias is not None:
                    b[:out_ch] += decode_bias
            weight, bias = w, b
        act = layer.act if i < last else block.act
        layers += [_conv(layer.conv, weight, bias), copy.deepcopy(act)]
    return layers


def chain_spec(chain: nn.Sequential) -> list[dict]:
    """The plain chain's layers as JSON-able dicts: what an export stores so the chain can be rebuilt
    from its weights without pickle (``chain_from_spec``)."""
    spec = []
    for m in chain:
        if isinstance(m, nn.Conv2d):
            spec.append({"type": "Conv2d", "in": m.in_channels, "out": m.out_channels, "kernel": list(m.kernel_size),
                         "stride": list(m.stride), "padding": list(m.padding), "groups": m.groups})
        elif isinstance(m, nn.Linear):
            spec.append({"type": "Linear", "in": m.in_features, "out": m.out_features})
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            spec.append({"type": type(m).__name__, "kernel": m.kernel_size, "stride": m.stride, "padding": m.padding,
                         "ceil_mode": m.ceil_mode})
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            spec.append({"type": "AdaptiveAvgPool2d", "output_size": m.output_size})
        elif isinstance(m, (nn.ReLU, nn.GELU, nn.SiLU, nn.Flatten)):
            spec.append({"type": type(m).__name__})
        else:
            raise PnnhError(f"chain_spec: no spec for {type(m).__name__}")
    return spec


def chain_from_spec(spec: list[dict]) -> nn.Sequential:
    """The ``nn.Sequential`` a ``chain_spec`` describes (weights uninitialised: load them after)."""
    try:
        return nn.Sequential(*[_layer(s) for s in spec])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise PnnhError(f"the plain chain's layer spec is damaged ({type(e).__name__}: {e}); export it again") from None


def _layer(s: dict) -> nn.Module:
    simple = {"ReLU": nn.ReLU, "GELU": nn.GELU, "SiLU": nn.SiLU, "Flatten": nn.Flatten}
    kind = s.get("type")
    if kind == "Conv2d":
        return nn.Conv2d(s["in"], s["out"], tuple(s["kernel"]), tuple(s["stride"]), tuple(s["padding"]),
                         groups=s["groups"], bias=True)
    if kind == "Linear":
        return nn.Linear(s["in"], s["out"])
    if kind in ("MaxPool2d", "AvgPool2d"):
        return getattr(nn, kind)(s["kernel"], s["stride"], s["padding"], ceil_mode=s["ceil_mode"])
    if kind == "AdaptiveAvgPool2d":
        return nn.AdaptiveAvgPool2d(s["output_size"])
    if kind in simple:
        return simple[kind]()
    raise PnnhError(f"unknown layer type {kind!r} in a plain chain's spec")

