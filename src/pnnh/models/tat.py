"""The ``tat`` kind: Tailored Activation Transformation (Zhang, Botev, Martens, ICLR 2022, "Deep
Learning without Shortcuts: Shaping the Kernel with Tailored Rectifiers").

A plain net whose ReLUs become TReLUs, s * leaky_relu(x, a), with the negative slope a set from the
net's depth so that its kernel approximation stays close to linear: the network's C map at 0 is
held at eta = 0.9 (the paper's value for TReLU). a and s come from the ``dks`` package (0.1.2, the
authors' own implementation; ``pip install 'pnnh[tat]'``), for a chain whose longest path crosses all
its non-linear layers; convs start Delta-orthogonal (an orthogonal matrix at the kernel's centre tap).

BatchNorm is kept: the recipe (SGD, one learning rate for every kind) is the other kinds', and the
paper trains TAT nets both with and without BN (its best results without BN use K-FAC, not used here).
The net is plain while training and after: ``to_plain`` folds s into the conv before each TReLU
(s * leaky(z) = leaky(s * z) for s > 0) and writes a LeakyReLU.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import PnnhError
from .layers import ConvNet, replace_modules
from .registry import register_kind

ETA = 0.9  # TAT's target for the network's C map at 0 (TReLU; the paper's and dks's default)


class TReLU(nn.Module):
    """s * leaky_relu(x, a): TAT's transformed leaky ReLU."""

    def __init__(self, negative_slope: float, scale: float):
        super().__init__()
        self.negative_slope, self.scale = float(negative_slope), float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.negative_slope) * self.scale

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope:.6f}, scale={self.scale:.6f}"


@functools.cache
def trelu_parameters(depth: int, eta: float = ETA) -> tuple[float, float]:
    """(negative slope a, output scale s) of the TReLU of a plain chain with ``depth`` non-linear layers,
    computed by dks's ``get_transformed_activations`` (method "TAT")."""
    try:
        from dks.pytorch.activation_transform import get_transformed_activations
    except ImportError as e:
        raise PnnhError(f"kind tat needs the dks package (TAT's activation transform; {e}): "
                        "pip install 'pnnh[tat]'") from None

    def subnet_max(c: float, r_fn):  # a plain chain: its longest path crosses every non-linear layer
        for _ in range(depth):
            c = r_fn(c)
        return c

    state = np.random.get_state()  # dks seeds numpy's global generator; leave the caller's as it was
    try:
        act = get_transformed_activations(["leaky_relu"], method="TAT", tat_params={"c_val_0_target": eta},
                                          subnet_max_func=subnet_max)["leaky_relu"]
    finally:
        np.random.set_state(state)
    out = act(torch.tensor([1.0, -1.0], dtype=torch.float64, device="cpu"))  # also when building on "meta"
    scale = float(out[0])
    return float(-out[1]) / scale, scale


def delta_orthogonal_(weight: torch.Tensor) -> None:
    """Zero the kernel but for an orthogonal (out, in) matrix at its centre tap (Xiao et al. 2018)."""
    if weight.is_meta:
        return
    out_ch, in_ch, kh, kw = weight.shape
    centre = torch.empty(out_ch, in_ch)
    nn.init.orthogonal_(centre)
    with torch.no_grad():
        weight.zero_()
        weight[:, :, kh // 2, kw // 2] = centre


@register_kind("tat")
def make_tat(model: nn.Module) -> None:
    """Every ReLU becomes the TReLU for the model's number of non-linear layers; every conv starts
    Delta-orthogonal."""
    assert isinstance(model, ConvNet)
    others = {type(m).__name__ for m in model.modules() if isinstance(m, (nn.GELU, nn.SiLU, nn.LeakyReLU))}
    if others:
        raise PnnhError(f"kind tat transforms leaky ReLUs; this model has {', '.join(sorted(others))}")
    depth = sum(isinstance(m, nn.ReLU) for m in model.modules())
    slope, scale = trelu_parameters(depth)
    replace_modules(model, lambda m: isinstance(m, nn.ReLU), lambda m: TReLU(slope, scale))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            delta_orthogonal_(m.weight)
