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
bias, activations, pooling and Flatten. The skip-free kinds need no code carried:
each conv layer says what one conv computes it (``fused``: RepVGG's branches,
DiracNet's kernel), and TAT's activation s * leaky(z) is written as leaky(s z)
(``_lower_activations``).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .errors import PnnhError
from .models.layers import Block, ConvNet, ConvNormAct, TiedCoder
from .models.tat import TReLU
from .models.vit import Attention, Mlp, VisionTransformer, ViTBlock, attend


class TokenEmbed(nn.Module):
    """A ViT's stem as one layer: patch conv -> tokens, class token prepended, position embedding added."""

    def __init__(self, in_chans: int, dim: int, patch_size: int, num_tokens: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed


class SliceLayerNorm(nn.LayerNorm):
    """LayerNorm of the first ``normalized_shape`` channels (the learner's); the others (the code) pass as they are."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.normalized_shape[0]
        return torch.cat([super().forward(x[..., :d]), x[..., d:]], dim=-1)


class CodeAttention(nn.Module):
    """Multi-head self-attention over the first 3 * dim channels (q, k, v); every further channel is a
    head whose attention matrix is the identity, so it passes the token mixing unchanged."""

    def __init__(self, num_heads: int, dim: int):
        super().__init__()
        self.num_heads, self.dim = num_heads, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c3 = x[..., :3 * self.dim].shape
        q, k, v = x[..., :3 * self.dim].reshape(b, n, 3, self.num_heads, self.dim // self.num_heads) \
            .permute(2, 0, 3, 1, 4).unbind(0)
        mixed = attend(q, k, v).transpose(1, 2).reshape(b, n, self.dim)
        return torch.cat([mixed, x[..., 3 * self.dim:]], dim=-1)


class ClassToken(nn.Module):
    """The class token's features: (B, N, C) -> (B, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


# What a plain chain may hold; each module reads only the previous module's output (an nn.Sequential).
PLAIN_MODULE_TYPES = (nn.Conv2d, nn.Linear, nn.ReLU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.MaxPool2d, nn.AvgPool2d,
                      nn.AdaptiveAvgPool2d, nn.Flatten, nn.LayerNorm, TokenEmbed, CodeAttention, ClassToken)


def to_plain(model: nn.Module) -> nn.Sequential:
    """An ``nn.Sequential`` of plain layers computing what the eval-mode ``model`` computes."""
    if isinstance(model, VisionTransformer):
        return _vit_to_plain(model)
    if not isinstance(model, ConvNet):
        raise PnnhError(f"to_plain takes a pnnh CNN or ViT (from create_model), got {type(model).__name__}")
    if model.kind == "residual":
        raise PnnhError("to_plain: a residual model has skip connections and is not a plain chain; "
                        "build it with kind='plain' or kind='pnnh'")
    if model.training:
        raise PnnhError("to_plain folds BatchNorm's running statistics: call model.eval() first")
    layers: list[nn.Module] = []
    for module in [*model.stem, *model.blocks]:
        layers += _plain_layers(module)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), copy.deepcopy(model.fc)]
    return nn.Sequential(*_lower_activations(layers))


def block_to_plain(block: Block) -> nn.Sequential:
    """One block's plain layers (its convs, with the code's channels added, and activations)."""
    return nn.Sequential(*_lower_activations(_block_layers(block)))


@torch.no_grad()
def _lower_activations(layers: list[nn.Module]) -> list[nn.Module]:
    """TAT's TReLU s * leaky(z, a) as plain layers: leaky(s z, a) (s > 0), the conv before it scaled."""
    out: list[nn.Module] = []
    for m in layers:
        if isinstance(m, TReLU):
            prev = out[-1] if out else None
            if not isinstance(prev, nn.Conv2d) or prev.bias is None:
                raise PnnhError(f"to_plain: a TReLU must follow a conv, not {type(prev).__name__}")
            out[-1] = _conv(prev, prev.weight * m.scale, prev.bias * m.scale)
            m = nn.LeakyReLU(m.negative_slope)
        out.append(m)
    return out


@torch.no_grad()
def _plain_layers(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, ConvNormAct):
        weight, bias = module.fused()
        return [_conv(module.conv, weight, bias), copy.deepcopy(module.act)]
    if isinstance(module, Block):
        return _block_layers(module)
    if isinstance(module, PLAIN_MODULE_TYPES):
        return [copy.deepcopy(module)]
    raise PnnhError(f"to_plain: no plain form for {type(module).__name__}")


def _conv(like: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A conv with ``like``'s geometry (kernel, stride, padding) and the given weight and bias."""
    conv = copy.deepcopy(like)
    conv.in_channels, conv.out_channels = weight.shape[1], weight.shape[0]
    conv.weight, conv.bias = nn.Parameter(weight.clone()), nn.Parameter(bias.clone())
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
        if not isinstance(layer, ConvNormAct):
            raise PnnhError(f"to_plain: a block's learner holds {type(layer).__name__}, not conv-norm-act layers")
        weight, bias = layer.fused()
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


@torch.no_grad()
def _vit_to_plain(model: VisionTransformer) -> nn.Sequential:
    """A ViT as a chain: TokenEmbed, then per sub-layer [encode] -> LayerNorm -> linear -> mix -> linear,
    the pnnh code carried in extra channels (identity attention heads, mirrored GELU pairs), then the
    final LayerNorm, the class token and the head."""
    if model.kind == "residual":
        raise PnnhError("to_plain: a residual model has skip connections and is not a plain chain; "
                        "build it with kind='plain' or kind='pnnh'")
    d = model.embed_dim
    stem = TokenEmbed(model.patch_embed.in_channels, d, model.patch_size, model.pos_embed.shape[1]).to(
        model.pos_embed)
    stem.load_state_dict({"conv.weight": model.patch_embed.weight, "conv.bias": model.patch_embed.bias,
                          "cls_token": model.cls_token, "pos_embed": model.pos_embed})
    layers: list[nn.Module] = [stem]
    for block in model.blocks:
        if not isinstance(block, ViTBlock):
            raise PnnhError(f"to_plain: a ViT's blocks must be ViTBlocks, not {type(block).__name__}")
        sublayers: tuple[tuple[nn.Module, TiedCoder | None, Attention | Mlp], ...] = (
            (block.norm1, block.coder1, block.attn), (block.norm2, block.coder2, block.mlp))
        for norm, coder, sublayer in sublayers:
            encode = coder.encode_matrix() if coder is not None else None
            k = 0 if encode is None else encode.shape[0]
            if encode is not None:  # [x, E x]: the learner's channels and the code
                layers.append(_linear(torch.cat([torch.eye(d).to(encode), encode]), torch.zeros(d + k).to(encode)))
                layers.append(_slice_norm(norm, d))
            else:
                layers.append(copy.deepcopy(norm))
            layers += _sublayer(sublayer, d, k, encode)
    layers += [copy.deepcopy(model.norm), ClassToken(), copy.deepcopy(model.head)]
    return nn.Sequential(*layers)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
    layer.load_state_dict({"weight": weight, "bias": weight.new_zeros(weight.shape[0]) if bias is None else bias})
    return layer


def _slice_norm(norm: nn.Module, d: int) -> SliceLayerNorm:
    if not isinstance(norm, nn.LayerNorm):
        raise PnnhError(f"to_plain: a ViT's pnnh block needs LayerNorm, not {type(norm).__name__}")
    out = SliceLayerNorm(d, eps=norm.eps, device=norm.weight.device, dtype=norm.weight.dtype)
    out.load_state_dict(norm.state_dict())
    return out


def _sublayer(sublayer: Attention | Mlp, d: int, k: int, encode: torch.Tensor | None) -> list[nn.Module]:
    """The attention or MLP sub-layer's linear maps, widened to carry a k-channel code u and decode it
    with E^T at the end (k = 0: the sub-layer as it is)."""
    first, last = (sublayer.qkv, sublayer.proj) if isinstance(sublayer, Attention) else (sublayer.fc1, sublayer.fc2)
    w1, b1, w2, b2 = first.weight, first.bias, last.weight, last.bias
    mirrored = not isinstance(sublayer, Attention)  # the MLP's GELU needs [u, -u]; the attention passes u
    copies = 2 if mirrored else 1
    h = w1.shape[0]
    up = w1.new_zeros(h + copies * k, d + k)
    up[:h, :d] = w1
    down = w2.new_zeros(d, w2.shape[1] + copies * k)
    down[:, :w2.shape[1]] = w2
    if encode is not None:
        eye = torch.eye(k, dtype=w1.dtype, device=w1.device)
        up[h:h + k, d:] = eye
        down[:, w2.shape[1]:w2.shape[1] + k] = encode.t()
        if mirrored:
            up[h + k:, d:] = -eye
            down[:, w2.shape[1] + k:] = -encode.t()
    bias_up = torch.cat([b1, b1.new_zeros(copies * k)]) if b1 is not None else w1.new_zeros(h + copies * k)
    mix = CodeAttention(sublayer.num_heads, d) if isinstance(sublayer, Attention) else copy.deepcopy(sublayer.act)
    return [_linear(up, bias_up), mix, _linear(down, b2)]


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected| / max |expected|: how every parity in pnnh is measured."""
    return float((got.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-12))


def randomise_batchnorm(model: nn.Module, seed: int = 1) -> None:
    """Give every BatchNorm non-trivial statistics and affine weights (a fresh one folds to the identity),
    so that a check of folding or conversion is a real check."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)


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
        elif isinstance(m, (nn.ReLU, nn.GELU, nn.SiLU, nn.Flatten, ClassToken)):
            spec.append({"type": type(m).__name__})
        elif isinstance(m, nn.LeakyReLU):
            spec.append({"type": "LeakyReLU", "negative_slope": m.negative_slope})
        elif isinstance(m, nn.LayerNorm):  # LayerNorm or SliceLayerNorm
            spec.append({"type": type(m).__name__, "dim": m.normalized_shape[0], "eps": m.eps})
        elif isinstance(m, TokenEmbed):
            spec.append({"type": "TokenEmbed", "in": m.conv.in_channels, "dim": m.conv.out_channels,
                         "patch": m.conv.kernel_size[0], "tokens": m.pos_embed.shape[1]})
        elif isinstance(m, CodeAttention):
            spec.append({"type": "CodeAttention", "heads": m.num_heads, "dim": m.dim})
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
    simple = {"ReLU": nn.ReLU, "GELU": nn.GELU, "SiLU": nn.SiLU, "Flatten": nn.Flatten, "ClassToken": ClassToken}
    kind = s.get("type")
    if kind in ("LayerNorm", "SliceLayerNorm"):
        return (nn.LayerNorm if kind == "LayerNorm" else SliceLayerNorm)(s["dim"], eps=s["eps"])
    if kind == "TokenEmbed":
        return TokenEmbed(s["in"], s["dim"], s["patch"], s["tokens"])
    if kind == "CodeAttention":
        return CodeAttention(s["heads"], s["dim"])
    if kind == "Conv2d":
        return nn.Conv2d(s["in"], s["out"], tuple(s["kernel"]), tuple(s["stride"]), tuple(s["padding"]),
                         groups=s["groups"], bias=True)
    if kind == "Linear":
        return nn.Linear(s["in"], s["out"])
    if kind == "LeakyReLU":
        return nn.LeakyReLU(float(s["negative_slope"]))
    if kind in ("MaxPool2d", "AvgPool2d"):
        return getattr(nn, kind)(s["kernel"], s["stride"], s["padding"], ceil_mode=s["ceil_mode"])
    if kind == "AdaptiveAvgPool2d":
        return nn.AdaptiveAvgPool2d(s["output_size"])
    if kind in simple:
        return simple[kind]()
    raise PnnhError(f"unknown layer type {kind!r} in a plain chain's spec")

