"""CIFAR-style ResNets of depth 6n+2 (He et al. 2016, section 4.2): 3x3 stem, stages of 16/32/64.

Stage changes use a 1x1 conv + BN projection (He et al.'s option B), so the
residual kind has 2,752 more parameters than option A's published counts
(0.27M for resnet20): within 1% at every depth.
"""
from __future__ import annotations

import torch.nn as nn

from ..errors import PnnhError
from .layers import Block, CoderBank, ConvNet, ConvNormAct, LayerFn, learner_width
from .registry import KINDS, register_model


def cifar_resnet(depth: int, kind: str = "residual", num_classes: int = 10, in_chans: int = 3,
                 widths: tuple[int, ...] = (16, 32, 64), learner_ratio: float = 1.0,
                 coder: str = "frozen", coder_share: str = "stage", code_ratio: float = 1.0,
                 norm_layer: LayerFn = nn.BatchNorm2d, act_layer: LayerFn = nn.ReLU) -> ConvNet:
    if depth < 8 or (depth - 2) % 6:
        raise PnnhError(f"a CIFAR ResNet has depth 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
    blocks_per_stage = (depth - 2) // 6
    coders = CoderBank(coder, coder_share, code_ratio, norm_layer)
    stem = nn.Sequential(ConvNormAct(in_chans, widths[0], 3, 1, norm_layer, act_layer))
    blocks: list[nn.Module] = []
    in_ch = widths[0]
    for stage, width in enumerate(widths):
        coders.new_stage()
        for i in range(blocks_per_stage):
            stride = 2 if stage > 0 and i == 0 else 1
            mid = learner_width(width, learner_ratio)
            blocks.append(Block([in_ch, mid, width], [3, 3], [stride, 1], kind, coders, norm_layer, act_layer))
            in_ch = width
    return ConvNet(stem, blocks, in_ch, num_classes, kind, input_size=(in_chans, 32, 32))


# its keyword options are the models' options (registry.check_options); it builds every kind, the
# skip-free ones included, and each but the residual has a plain form
FAMILY_INFO = {"builder": cifar_resnet, "kinds": KINDS, "plain_form": KINDS[1:]}


@register_model
def resnet20(kind: str = "residual", **kwargs) -> ConvNet:
    return cifar_resnet(20, kind, **kwargs)


@register_model
def resnet32(kind: str = "residual", **kwargs) -> ConvNet:
    return cifar_resnet(32, kind, **kwargs)


@register_model
def resnet44(kind: str = "residual", **kwargs) -> ConvNet:
    return cifar_resnet(44, kind, **kwargs)


@register_model
def resnet56(kind: str = "residual", **kwargs) -> ConvNet:
    return cifar_resnet(56, kind, **kwargs)


@register_model
def resnet110(kind: str = "residual", **kwargs) -> ConvNet:
    return cifar_resnet(110, kind, **kwargs)


@register_model
def resnet1202(kind: str = "residual", **kwargs) -> ConvNet:
    return cifar_resnet(1202, kind, **kwargs)
