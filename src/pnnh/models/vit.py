"""Vision Transformers (Dosovitskiy et al. 2021; timm's layout: class token, learned position embedding,
pre-LN blocks, final LayerNorm, linear head) in the three kinds, with the same attention and MLP in all:

    residual:  x = x + Attn(LN x);              x = x + MLP(LN x)
    plain:     x = Attn(LN x);                  x = MLP(LN x)
    pnnh:      x = Attn(LN x) + decode(E x);    x = MLP(LN x) + decode(E' x)

In a PNNH block no tensor skips a layer: the code u = E x is carried *through* each sub-layer as extra
channels (``pnnh.convert.to_plain`` writes the chain out). LayerNorm normalises only the learner's
channels, never the code; in the attention the code channels are heads whose attention matrix is the
identity; in the MLP they are mirrored pairs [GELU(u), GELU(-u)], and GELU(u) - GELU(-u) = u exactly.
For training the same function is computed as Attn(LN x) + E^T E x (x itself for the default frozen,
orthogonal, full-width E), as in the CNNs.

ImageNet sizes (patch 16, 224 px) match timm's parameter counts; CIFAR sizes use patch 4 on 32 px.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import PnnhError
from .layers import MIRROR_ACTIVATIONS, CoderBank, TiedCoder, _select, learner_width, run_taps
from .registry import BASE_KINDS, PnnhNet, register_model

FAMILY_INFO = {"plain_form": ("plain", "pnnh"), "img_size_option": True, "test_kwargs": {"img_size": 32},
               "test_input": (3, 32, 32), "first_conv": "patch_embed", "classifier": "head"}


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over the last two dims. PyTorch's fused kernel, except for bf16 on a CPU,
    where its backward was several times slower than in float32 (vit_cifar_12's shapes, torch 2.13) and
    made `--amp bf16` no faster than float32 for a ViT; written out (softmax in float32) it is fast
    (benchmarks/results/throughput/cpu_settings_vit_cifar_12_amx.json)."""
    if q.device.type != "cpu" or q.dtype != torch.bfloat16:
        return F.scaled_dot_product_attention(q, k, v)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return scores.float().softmax(-1).to(v.dtype) @ v


class Attention(nn.Module):
    """Multi-head self-attention (fused qkv, scaled dot product, output projection)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise PnnhError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def mix(self, qkv: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v per head, from the qkv projection (B, N, 3C) -> (B, N, C)."""
        b, n, c3 = qkv.shape
        c = c3 // 3
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        return attend(q, k, v).transpose(1, 2).reshape(b, n, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.mix(self.qkv(x)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act_layer=nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    """Pre-LN attention and MLP sub-layers; what crosses each sub-layer depends on the kind."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, kind: str, coders: CoderBank | None = None,
                 act_layer=nn.GELU, norm_layer=nn.LayerNorm):
        super().__init__()
        if kind not in BASE_KINDS:
            raise PnnhError(f"kind {kind!r} is not built for a ViT; its kinds: {', '.join(BASE_KINDS)}")
        self.kind = kind
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, mlp_hidden, act_layer)
        self.coder1: TiedCoder | None = None
        self.coder2: TiedCoder | None = None
        if kind == "pnnh":
            if not isinstance(self.mlp.act, MIRROR_ACTIVATIONS):
                raise PnnhError(f"a pnnh block needs an activation with act(u) - act(-u) = u (ReLU, GELU, SiLU), "
                                f"got {type(self.mlp.act).__name__}")
            coders = coders or CoderBank()
            self.coder1, self.coder2 = coders(dim, dim, 1), coders(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.coder1 is not None and self.coder2 is not None:  # pnnh
            x = self.attn(self.norm1(x)) + self.coder1.path(x)
            return self.mlp(self.norm2(x)) + self.coder2.path(x)
        if self.kind == "residual":
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        return self.mlp(self.norm2(self.attn(self.norm1(x))))


class VisionTransformer(PnnhNet):
    """patch embedding + class token + position embedding -> blocks -> LayerNorm -> class token -> linear."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 192, depth: int = 12, num_heads: int = 3, mlp_ratio: float = 4.0,
                 kind: str = "residual", learner_ratio: float = 1.0, coder: str = "frozen",
                 coder_share: str = "stage", code_ratio: float = 1.0):
        super().__init__()
        if img_size % patch_size:
            raise PnnhError(f"img_size {img_size} is not divisible by the patch size {patch_size}")
        self.kind, self.patch_size, self.img_size = kind, patch_size, img_size
        self.num_features = self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (img_size // patch_size) ** 2, embed_dim))
        coders = CoderBank(coder, coder_share, code_ratio)  # one "stage": coder_share="stage" shares one E
        hidden = learner_width(round(embed_dim * mlp_ratio), learner_ratio)
        self.blocks = nn.Sequential(*[ViTBlock(embed_dim, num_heads, hidden, kind, coders) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.default_cfg = {"input_size": (in_chans, img_size, img_size), "num_classes": num_classes}
        self._init_weights()

    def _init_weights(self) -> None:
        if self.pos_embed.is_meta:
            return
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Position embedding, class token and learned coder weights (norms and biases are 1-D anyway)."""
        return {"pos_embed", "cls_token"} | {n for n, _ in self.named_parameters() if ".coder" in n}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise PnnhError(f"this ViT takes {self.img_size}x{self.img_size} images, got {x.shape[-2]}x{x.shape[-1]}: "
                            f"build it with img_size={x.shape[-1]}")
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self.embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None,
                              intermediates_only: bool = False, stop_early: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's contract: (final normed features, [token outputs of the selected blocks])."""
        chosen = _select(list(range(len(self.blocks))), indices)
        x, intermediates = run_taps(list(self.blocks), self.embed(x), chosen, stop_early)
        return intermediates if intermediates_only else (self.norm(x), intermediates)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()


FAMILY_INFO["builder"] = VisionTransformer  # its keyword options are the models' options (registry.check_options)


def _vit(kind: str, defaults: dict, **kwargs) -> VisionTransformer:
    return VisionTransformer(kind=kind, **{**defaults, **kwargs})


IMAGENET = dict(img_size=224, patch_size=16, num_classes=1000)
CIFAR = dict(img_size=32, patch_size=4, num_classes=10, embed_dim=192, num_heads=3)


@register_model
def vit_tiny(kind: str = "residual", **kwargs) -> VisionTransformer:
    return _vit(kind, {**IMAGENET, "embed_dim": 192, "depth": 12, "num_heads": 3}, **kwargs)


@register_model
def vit_small(kind: str = "residual", **kwargs) -> VisionTransformer:
    return _vit(kind, {**IMAGENET, "embed_dim": 384, "depth": 12, "num_heads": 6}, **kwargs)


@register_model
def vit_base(kind: str = "residual", **kwargs) -> VisionTransformer:
    return _vit(kind, {**IMAGENET, "embed_dim": 768, "depth": 12, "num_heads": 12}, **kwargs)


@register_model
def vit_cifar_6(kind: str = "residual", **kwargs) -> VisionTransformer:
    return _vit(kind, {**CIFAR, "depth": 6}, **kwargs)


@register_model
def vit_cifar_12(kind: str = "residual", **kwargs) -> VisionTransformer:
    return _vit(kind, {**CIFAR, "depth": 12}, **kwargs)


@register_model
def vit_cifar_24(kind: str = "residual", **kwargs) -> VisionTransformer:
    return _vit(kind, {**CIFAR, "depth": 24}, **kwargs)
