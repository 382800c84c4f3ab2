"""The ``dirac`` kind: DiracNets (Zagoruyko and Komodakis 2017, "DiracNets: Training Very Deep Neural
Networks Without Skip-Connections").

Every conv after the stem has the kernel

    diag(a) I + diag(b) W / ||W||        (per output channel; I the Dirac delta: conv(x, I) = x)

and learns a, b and W; for inference the kernel is computed once and BN folded into it (``fused``): one
ordinary conv, so the net is plain while training and after. As in DiracNets, the activation is
NCReLU, [max(x, 0), min(x, 0)] on channels, so the identity part of the next kernel carries x across the
non-linearity whatever its sign (the sum of the two halves is x); each conv therefore reads twice its
input width (about twice the MACs of the plain kind at the same learner widths). The stem's conv reads
the image and stays an ordinary conv. Defaults of the paper's code: a = 5, b = 1e-3 at initialisation;
stage changes use the CIFAR ResNet's strided convs here, where DiracNets use max-pooling.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import PnnhError
from .layers import ConvNet, ConvNormAct, LayerFn, bn_affine, replace_modules, same_geometry
from .registry import register_kind

DIRAC_SCALE, WEIGHT_SCALE = 5.0, 1e-3  # a and b at initialisation (the DiracNets code's values)


class NCReLU(nn.Module):
    """[max(x, 0), min(x, 0)] along the channels: a ReLU that keeps the negative part in its own channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.clamp(min=0), x.clamp(max=0)], dim=1)


def dirac_delta(out_ch: int, in_ch: int, kernel_size: int) -> torch.Tensor:
    """The Dirac kernel: output channel o reads input channel i at the centre tap where o = i modulo
    min(out_ch, in_ch), so a 2C -> C kernel sums the two NCReLU halves back to x."""
    n = min(out_ch, in_ch)
    delta = torch.zeros(out_ch, in_ch, kernel_size, kernel_size)
    same = (torch.arange(out_ch)[:, None] % n) == (torch.arange(in_ch)[None, :] % n)
    delta[:, :, kernel_size // 2, kernel_size // 2] = same.float()
    return delta


class DiracConvNormAct(ConvNormAct):
    """conv with kernel diag(a) I + diag(b) W / ||W|| -> BN -> act (``conv.weight`` is W)."""

    delta: torch.Tensor

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 norm_layer: LayerFn = nn.BatchNorm2d, act_layer: LayerFn = nn.ReLU, apply_act: bool = True):
        super().__init__(in_ch, out_ch, kernel_size, stride, norm_layer, act_layer, apply_act)
        self.dirac_scale = nn.Parameter(torch.full((out_ch,), DIRAC_SCALE))
        self.weight_scale = nn.Parameter(torch.full((out_ch,), WEIGHT_SCALE))
        self.register_buffer("delta", dirac_delta(out_ch, in_ch, kernel_size))  # saved: models load on "meta"

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
    """NCReLU for every ReLU; every conv but the stem's first reads the doubled width through a Dirac
    kernel; the classifier reads the doubled features."""
    assert isinstance(model, ConvNet)
    acts = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    others = {type(m).__name__ for m in model.modules() if isinstance(m, (nn.GELU, nn.SiLU, nn.LeakyReLU))}
    if others:
        raise PnnhError(f"kind dirac replaces ReLU by NCReLU; this model has {', '.join(sorted(others))}")
    if not acts:
        raise PnnhError("kind dirac: the model has no ReLU to replace")
    first = next(m for m in model.modules() if isinstance(m, ConvNormAct))
    replace_modules(model, lambda m: isinstance(m, nn.ReLU), lambda m: NCReLU())
    replace_modules(model, lambda m: type(m) is ConvNormAct and m is not first,
                    lambda m: same_geometry(m, DiracConvNormAct, in_factor=2))
    model.num_features *= 2
    model.reset_classifier(model.num_classes)
    model._init_weights()
