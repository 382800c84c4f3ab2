"""The ``looks_linear`` kind: looks-linear initialisation (Balduzzi et al., ICML 2017, "The Shattered
Gradients Problem: If resnets are the answer, then what is the question?").

A plain net whose weights start mirrored, so that at initialisation every ReLU layer passes a linear map:
each layer's channels come in pairs (z, -z), and the next conv reads a pair with (A, -A), so that
A relu(z) - A relu(-z) = A z. The first conv writes [B x, -B x]; a later conv has the kernel
[[A, -A], [-A, A]] on (pairs in, pairs out); the classifier reads [F, -F]. BN at (1, 0) keeps the
mirror (BN(-z) = -BN(z)). A, B orthogonal (the paper's choice), F as the classifier's default. After
initialisation nothing ties the halves: the net trains as the plain kind does and is plain throughout;
``to_plain`` is the plain kind's. Widths must be even.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import PnnhError
from .layers import ConvNet
from .registry import register_kind


def _orthogonal(*shape: int) -> torch.Tensor:
    w = torch.empty(*shape)
    nn.init.orthogonal_(w)
    return w


@register_kind("looks_linear")
def make_looks_linear(model: nn.Module) -> None:
    assert isinstance(model, ConvNet)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    odd = [c.out_channels for c in convs if c.out_channels % 2]
    if odd:
        raise PnnhError(f"kind looks_linear mirrors channels in pairs: widths must be even, got {odd[0]} "
                        f"(choose a learner_ratio that keeps them even)")
    if any(c.weight.is_meta for c in convs):
        return
    with torch.no_grad():
        for i, conv in enumerate(convs):
            out_ch, in_ch, kh, kw = conv.weight.shape
            if i == 0:  # reads the image: [B; -B]
                b = _orthogonal(out_ch // 2, in_ch, kh, kw)
                conv.weight.copy_(torch.cat([b, -b]))
            else:  # reads (relu(z), relu(-z)) pairs: [[A, -A], [-A, A]]
                a = _orthogonal(out_ch // 2, in_ch // 2, kh, kw)
                top = torch.cat([a, -a], dim=1)
                conv.weight.copy_(torch.cat([top, -top]))
        if isinstance(model.fc, nn.Linear):
            f = model.fc.weight[:, :model.fc.in_features // 2].clone()
            model.fc.weight.copy_(torch.cat([f, -f], dim=1))
            model.fc.bias.zero_()
