"""VGG nets with BatchNorm (Simonyan & Zisserman 2015), with a global-pool + linear head.

VGG is plain by nature. The residual kind puts a skip over each pair of convs
of a stage, the pnnh kind a coder over each pair; a stage's odd conv out stays
a single plain conv in every kind. Max-pools use ceil_mode so 28x28 inputs
survive all five of them.
"""
from __future__ import annotations

import torch.nn as nn

from .layers import Block, CoderBank, ConvNet, ConvNormAct, LayerFn, learner_width
from .registry import register_model

STAGES = {  # convs per stage; stage widths are 64, 128, 256, 512, 512
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}


def vgg(depth: int, kind: str = "residual", num_classes: int = 1000, in_chans: int = 3,
        learner_ratio: float = 1.0, coder: str = "frozen", coder_share: str = "stage", code_ratio: float = 1.0,
        norm_layer: LayerFn = nn.BatchNorm2d, act_layer: LayerFn = nn.ReLU) -> ConvNet:
    coders = CoderBank(coder, coder_share, code_ratio, norm_layer)
    first = 64
    stem = nn.Sequential(ConvNormAct(in_chans, first, 3, 1, norm_layer, act_layer))
    blocks: list[nn.Module] = []
    in_ch = first
    for stage, (width, n_convs) in enumerate(zip((64, 128, 256, 512, 512), STAGES[depth])):
        coders.new_stage()
        n = n_convs - 1 if stage == 0 else n_convs  # the stem is the first stage's first conv
        while n >= 2:
            mid = learner_width(width, learner_ratio)
            blocks.append(Block([in_ch, mid, width], [3, 3], [1, 1], kind, coders, norm_layer, act_layer))
            in_ch, n = width, n - 2
        if n == 1:
            blocks.append(ConvNormAct(in_ch, width, 3, 1, norm_layer, act_layer))
            in_ch = width
        blocks.append(nn.MaxPool2d(2, 2, ceil_mode=True))
    return ConvNet(stem, blocks, in_ch, num_classes, kind, input_size=(in_chans, 224, 224))


FAMILY_INFO = {"builder": vgg}  # its keyword options are the models' options (registry.check_options)


@register_model
def vgg11(kind: str = "residual", **kwargs) -> ConvNet:
    return vgg(11, kind, **kwargs)


@register_model
def vgg13(kind: str = "residual", **kwargs) -> ConvNet:
    return vgg(13, kind, **kwargs)


@register_model
def vgg16(kind: str = "residual", **kwargs) -> ConvNet:
    return vgg(16, kind, **kwargs)


@register_model
def vgg19(kind: str = "residual", **kwargs) -> ConvNet:
    return vgg(19, kind, **kwargs)
