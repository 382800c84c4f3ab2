"""The ``dirac`` kind: DiracNets (Zagoruyko and Komodakis 2017, "DiracNets: Training Very Deep Neural
Networks Without Skip-Connections"; the paper's v2 and its code, which dropped v1's NCReLU).

Every conv after the stem has the kernel

    diag(a) I + diag(b) W / ||W||        (per output channel; I the Dirac delta: conv(x, I) = x)

and learns a, b and W (W normalised over each output filter). For inference the kernel is computed once
and BN folded into it (``fused``): one ordinary conv, so the net is a chain of conv-ReLU layers while it
trains and after. Defaults of the authors' v2 code: a = 1 and b = 0.1 at initialisation, a and b without
weight decay (pnnh decays no 1-d parameter), I = ``torch.nn.init.dirac_`` (where the width grows, the
new channels start with no identity part). Stage changes use the CIFAR ResNet's strided convs here, where
DiracNets use max-pooling; the stem's conv reads the image and stays an ordinary conv.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import ConvNet, ConvNormAct, LayerFn, bn_affine, replace_modules, same_geometry
from .registry import register_kind

DIRAC_SCALE, WEIGHT_SCALE = 1.0, 0.1  # a and b at initialisation (the DiracNets v2 code's values)


class DiracConvNormAct(ConvNormAct):
    """conv with kernel diag(a) I + diag(b) W / ||W|| -> BN -> act (``conv.weight`` is W)."""

    delta: torch.Tensor

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 norm_layer: LayerFn = nn.BatchNorm2d, act_layer: LayerFn = nn.ReLU, apply_act: bool = True):
        super().__init__(in_ch, out_ch, kernel_size, stride, norm_layer, act_layer, apply_act)
        self.dirac_scale = nn.Parameter(torch.full((out_ch,), DIRAC_SCALE))
        self.weight_scale = nn.Parameter(torch.full((out_ch,), WEIGHT_SCALE))
        delta = torch.empty(out_ch, in_ch, kernel_size, kernel_size)
        if not delta.is_meta:
            nn.init.dirac_(delta)
        self.register_buffer("delta", delta)  # saved with the weights: models are rebuilt on "meta"

    def kernel(self) -> torch.Tensor:
        w = self.conv.weight
        norm = w.flatten(1).norm(dim=1).clamp_min(1e-12)
        return self.dirac_scale[:, None, None, None] * self.delta.to(w.dtype) \
            + (self.weight_scale / norm)[:, None, None, None] * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        return self.act(self.bn(F.conv2d(x, self.kernel(), None, conv.stride, conv.padding)))

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift = bn_affine(self.bn)
        return self.kernel() * scale[:, None, None, None], shift


@register_kind("dirac")
def make_dirac(model: nn.Module) -> None:
    """Every conv but the stem's first becomes a Dirac-parameterised conv."""
    assert isinstance(model, ConvNet)
    first = next(m for m in model.modules() if isinstance(m, ConvNormAct))
    replace_modules(model, lambda m: type(m) is ConvNormAct and m is not first,
                    lambda m: same_geometry(m, DiracConvNormAct))
    model._init_weights()
