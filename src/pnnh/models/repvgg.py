"""The ``repvgg`` kind: RepVGG (Ding et al., CVPR 2021, "RepVGG: Making VGG-style ConvNets Great Again").

While training, every conv-BN layer of the net (stem and learners) is three branches and an activation:

    act(bn(conv3x3(x)) + bn_1x1(conv1x1(x)) + bn_id(x))      bn_id only where width and resolution stay

In eval mode each branch is linear, so the three fold into one 3x3 conv with a bias (``fused``):
the net is a plain chain **after fusion**, not while training (its training graph has branches),
unlike pnnh, tat and looks_linear, which are plain while they train too. RepVGG's own nets have one
such layer per step of a stage; here each conv of the CIFAR ResNet becomes one, so depth and widths
match the other kinds. Initialisation: He-normal convs, BN at (1, 0), as the other kinds here.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .layers import ConvNet, ConvNormAct, LayerFn, bn_affine, replace_modules, same_geometry
from .registry import register_kind


class RepConvNormAct(ConvNormAct):
    """A RepVGG layer: the kxk conv-BN of ConvNormAct plus a 1x1 conv-BN branch and an identity-BN
    branch (where in_ch == out_ch and stride 1), summed before the activation."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 norm_layer: LayerFn = nn.BatchNorm2d, act_layer: LayerFn = nn.ReLU, apply_act: bool = True):
        super().__init__(in_ch, out_ch, kernel_size, stride, norm_layer, act_layer, apply_act)
        self.conv_1x1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False) if kernel_size > 1 else None
        self.bn_1x1 = norm_layer(out_ch) if kernel_size > 1 else None
        self.branch_id: nn.Module | None = norm_layer(out_ch) if in_ch == out_ch and stride == 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        if self.conv_1x1 is not None and self.bn_1x1 is not None:
            out = out + self.bn_1x1(self.conv_1x1(x))
        if self.branch_id is not None:
            out = out + self.branch_id(x)
        return self.act(out)

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The three branches as one kxk conv: the 1x1 kernel and the identity (scaled by its BN) sit at
        the kernel's centre tap."""
        weight, bias = super().fused()
        weight, bias = weight.clone(), bias.clone()
        c = self.conv.kernel_size[0] // 2
        if self.conv_1x1 is not None and self.bn_1x1 is not None:
            scale, shift = bn_affine(self.bn_1x1)
            weight[:, :, c, c] += self.conv_1x1.weight[:, :, 0, 0] * scale[:, None]
            bias += shift
        if self.branch_id is not None:
            scale, shift = bn_affine(self.branch_id)
            channels = torch.arange(weight.shape[0])
            weight[channels, channels, c, c] += scale
            bias += shift
        return weight, bias


@register_kind("repvgg")
def make_repvgg(model: nn.Module) -> None:
    """Every conv-BN layer becomes a RepVGG layer; the weights are drawn again (He-normal, BN at 1, 0)."""
    assert isinstance(model, ConvNet)
    replace_modules(model, lambda m: type(m) is ConvNormAct, lambda m: same_geometry(m, RepConvNormAct))
    model._init_weights()
