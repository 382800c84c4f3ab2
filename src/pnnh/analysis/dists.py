"""DISTS (Ding, Ma, Wang & Simoncelli 2020, "Image Quality Assessment: Unifying Structure and Texture Similarity").

For images x, y and backbone stages j = 0 (the image itself), 1, ..., with channels i:
    texture   T_ij = (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1)
    structure S_ij = (2 sigma_xy + c2) / (sigma_x^2 + sigma_y^2 + c2)
    DISTS = 1 - sum_ij (alpha_ij T_ij + beta_ij S_ij),   sum alpha + sum beta = 1,
means and (co)variances taken over each feature map's positions. The published model uses
ImageNet-trained VGG16 stages (max-pools replaced by L2 pooling) and learned alpha, beta; here the
weights come from a file the user supplies (``DISTS.from_vgg16``), or any backbone is passed in
(with uniform alpha, beta when none are given).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import PnnhError

C1, C2 = 1e-6, 1e-6
VGG16_STAGES: list[list[int | str]] = [[64, 64], ["L2", 128, 128], ["L2", 256, 256, 256], ["L2", 512, 512, 512],
                                       ["L2", 512, 512, 512]]


class L2Pool(nn.Module):
    kernel: torch.Tensor
    """sqrt(blur(x^2)) with a 3x3 Hanning window, stride 2: DISTS's alias-free replacement for max-pooling."""

    def __init__(self, channels: int):
        super().__init__()
        window = torch.hann_window(5, periodic=False)[1:-1]
        kernel = window[:, None] * window[None, :]
        self.register_buffer("kernel", (kernel / kernel.sum())[None, None].repeat(channels, 1, 1, 1))
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.conv2d(x.square(), self.kernel, stride=2, padding=1, groups=self.channels) + 1e-12).sqrt()


class DISTS(nn.Module):
    alpha: torch.Tensor
    beta: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    def __init__(self, stages: list[nn.Sequential], channels: list[int], alpha: torch.Tensor | None = None,
                 beta: torch.Tensor | None = None, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.channels = [3] + list(channels)  # stage 0 is the image itself
        total = sum(self.channels)
        uniform = torch.full((total,), 0.5 / total, dtype=torch.float64)  # float64, so weights sum to 1 exactly
        self.register_buffer("alpha", alpha.flatten().double() if alpha is not None else uniform)
        self.register_buffer("beta", beta.flatten().double() if beta is not None else uniform.clone())
        if self.alpha.numel() != total or self.beta.numel() != total:
            raise PnnhError(f"DISTS alpha/beta need {total} entries (one per channel of each stage)")
        self.register_buffer("mean", torch.tensor(mean)[None, :, None, None])
        self.register_buffer("std", torch.tensor(std)[None, :, None, None])

    @classmethod
    def from_vgg16(cls, path: str | Path) -> DISTS:
        """VGG16 in torchvision's layout (``features.N.weight``), optionally with DISTS's ``alpha``/``beta``."""
        path = Path(path)
        if not path.is_file():
            raise PnnhError(f"--dists-weights {path} does not exist: give a VGG16 state dict (torchvision layout)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 -- torch.load raises many types on a damaged or unsafe file
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise PnnhError(f"cannot load DISTS weights {path} (--dists-weights): {first}") from None
        stages, channels, index, in_ch = [], [], 0, 3
        for spec in VGG16_STAGES:
            layers: list[nn.Module] = []
            for item in spec:
                if item == "L2":
                    layers.append(L2Pool(in_ch))
                    index += 1  # torchvision's max-pool slot
                    continue
                assert isinstance(item, int)  # a conv's width (VGG16_STAGES)
                conv = nn.Conv2d(in_ch, item, 3, padding=1)
                try:
                    conv.load_state_dict({"weight": state[f"features.{index}.weight"],
                                          "bias": state[f"features.{index}.bias"]})
                except (KeyError, RuntimeError) as e:
                    raise PnnhError(f"{path} is not a VGG16 state dict in torchvision's layout ({e})") from None
                layers += [conv, nn.ReLU()]
                index += 2
                in_ch = item
            stages.append(nn.Sequential(*layers))
            channels.append(in_ch)
        alpha, beta = state.get("alpha"), state.get("beta")
        model = cls(stages, channels, alpha, beta)
        if alpha is not None and beta is not None:  # DISTS's own convention: normalise to sum 1
            s = model.alpha.sum() + model.beta.sum()
            model.alpha, model.beta = model.alpha / s, model.beta / s
        return model.eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [x]
        h = (x - self.mean) / self.std
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        return feats

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image DISTS between x and y, images in [0, 1] of shape (n, 3, H, W)."""
        dist = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        offset = 0
        for fx, fy in zip(self.features(x), self.features(y)):
            fx, fy = fx.double().flatten(2), fy.double().flatten(2)
            mx, my = fx.mean(2), fy.mean(2)
            vx = (fx - mx[..., None]).square().mean(2)
            vy = (fy - my[..., None]).square().mean(2)
            cov = ((fx - mx[..., None]) * (fy - my[..., None])).mean(2)
            texture = (2 * mx * my + C1) / (mx.square() + my.square() + C1)
            structure = (2 * cov + C2) / (vx + vy + C2)
            c = fx.shape[1]
            dist -= (texture * self.alpha[offset:offset + c]).sum(1) + (structure * self.beta[offset:offset + c]).sum(1)
            offset += c
        return dist


def feature_map_image(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A layer's feature maps as an image DISTS can compare with the input: the channel mean,
    resized to the input's size, scaled to [0, 1] per image, as three equal channels."""
    m = features.float().mean(1, keepdim=True)
    m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
    lo = m.flatten(1).min(1).values[:, None, None, None]
    hi = m.flatten(1).max(1).values[:, None, None, None]
    return ((m - lo) / (hi - lo).clamp_min(1e-12)).expand(-1, 3, -1, -1)
