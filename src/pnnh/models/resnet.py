"""ImageNet-style ResNets (He et al. 2016; torchvision's v1.5 layout, stride on the 3x3 conv).

The residual kind has exactly torchvision's parameter counts.
"""
from __future__ import annotations

import torch.nn as nn

from .layers import Block, CoderBank, ConvNet, ConvNormAct, LayerFn, learner_width
from .registry import register_model


def imagenet_resnet(layers: tuple[int, ...], bottleneck: bool, kind: str = "residual", num_classes: int = 1000,
                    in_chans: int = 3, learner_ratio: float = 1.0, coder: str = "frozen",
                    coder_share: str = "stage", code_ratio: float = 1.0,
                    norm_layer: LayerFn = nn.BatchNorm2d, act_layer: LayerFn = nn.ReLU) -> ConvNet:
    coders = CoderBank(coder, coder_share, code_ratio, norm_layer)
    stem = nn.Sequential(ConvNormAct(in_chans, 64, 7, 2, norm_layer, act_layer),
                         nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    expansion = 4 if bottleneck else 1
    blocks: list[nn.Module] = []
    in_ch = 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
        coders.new_stage()
        out_ch = planes * expansion
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            mid = learner_width(planes, learner_ratio)
            if bottleneck:
                widths, kernels, strides = [in_ch, mid, mid, out_ch], [1, 3, 1], [1, stride, 1]
            else:
                widths, kernels, strides = [in_ch, mid, out_ch], [3, 3], [stride, 1]
            blocks.append(Block(widths, kernels, strides, kind, coders, norm_layer, act_layer))
            in_ch = out_ch
    return ConvNet(stem, blocks, in_ch, num_classes, kind, input_size=(in_chans, 224, 224))


FAMILY_INFO = {"builder": imagenet_resnet}  # its keyword options are the models' options (registry.check_options)


@register_model
def resnet18(kind: str = "residual", **kwargs) -> ConvNet:
    return imagenet_resnet((2, 2, 2, 2), False, kind, **kwargs)


@register_model
def resnet34(kind: str = "residual", **kwargs) -> ConvNet:
    return imagenet_resnet((3, 4, 6, 3), False, kind, **kwargs)


@register_model
def resnet50(kind: str = "residual", **kwargs) -> ConvNet:
    return imagenet_resnet((3, 4, 6, 3), True, kind, **kwargs)


@register_model
def resnet101(kind: str = "residual", **kwargs) -> ConvNet:
    return imagenet_resnet((3, 4, 23, 3), True, kind, **kwargs)


@register_model
def resnet152(kind: str = "residual", **kwargs) -> ConvNet:
    return imagenet_resnet((3, 8, 36, 3), True, kind, **kwargs)
