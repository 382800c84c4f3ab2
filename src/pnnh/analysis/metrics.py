"""Weight-free measures of how much of the input survives in a layer's output.

Every function but ``position_spread`` takes per-image rows: X (n, p) and Y (n, q), one image per row.
They need only the n x n Gram matrix of each representation, so the probe computes that once per layer
(the ``*_gram`` forms) and a 16k-dimensional feature map costs one matrix product.
"""
from __future__ import annotations

import torch


def gram(x: torch.Tensor) -> torch.Tensor:
    """X X^T in float64, one row per image."""
    x = x.flatten(1).double()
    return x @ x.t()


def _unbiased_hsic(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Song et al. (2012)'s unbiased HSIC estimator from (uncentred) Gram matrices."""
    n = k.shape[0]
    k, l = k.clone(), l.clone()
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    ones = torch.ones(n, dtype=k.dtype)
    return ((k * l).sum() + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (ones @ k) @ (l @ ones)) / (n * (n - 3))


def linear_cka_gram(k: torch.Tensor, l: torch.Tensor) -> float:
    if k.shape[0] < 4:
        raise ValueError("CKA needs at least 4 images")
    denom = (_unbiased_hsic(k, k) * _unbiased_hsic(l, l)).clamp_min(0).sqrt()
    return float(_unbiased_hsic(k, l) / denom) if denom > 0 else 0.0


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Debiased linear CKA (Kornblith et al. 2019, with Song et al.'s unbiased HSIC) of two representations.

    1 for identical representations, invariant to orthogonal transforms and isotropic
    scaling, and near 0 for independent ones even with few images (the plain estimator
    is biased upwards when features outnumber images, which would hide the noise floor).
    """
    return linear_cka_gram(gram(x), gram(y))


def ridge_r2_gram(k: torch.Tensor, target: torch.Tensor, ridge: float = 1e-3, seed: int = 0) -> float:
    n = k.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    fit, held = perm[: n // 2], perm[n // 2:]
    # centre the features on the fitted half's mean, in Gram form: (F - 1m^T)(F - 1m^T)^T
    a = k[:, fit].mean(1)
    kc = k - a[:, None] - a[None, :] + k[fit][:, fit].mean()
    t = target.flatten(1).double()
    t = t - t[fit].mean(0)
    k_fit = kc[fit][:, fit]
    scale = k_fit.diagonal().mean().clamp_min(1e-12)
    coef = torch.linalg.solve(k_fit + ridge * scale * torch.eye(len(fit), dtype=k.dtype), t[fit])
    pred = kc[held][:, fit] @ coef
    residual = (t[held] - pred).square().sum()
    total = (t[held] - t[held].mean(0)).square().sum()
    return float(1 - residual / total) if total > 0 else 0.0


def ridge_r2(features: torch.Tensor, target: torch.Tensor, ridge: float = 1e-3, seed: int = 0) -> float:
    """R^2 of a ridge map from ``features`` to ``target`` fitted on half the images, scored on the other half.

    Kernel (dual) form, so 16k-dimensional feature maps cost an n x n solve; ``ridge``
    is relative to the kernel's mean diagonal. 1 = the target is linearly recoverable;
    0 or below = no better than predicting the mean.
    """
    return ridge_r2_gram(gram(features), target, ridge, seed)


def effective_rank_gram(k: torch.Tensor) -> float:
    n = k.shape[0]
    h = torch.eye(n, dtype=k.dtype) - 1 / n
    s = torch.linalg.eigvalsh(h @ k @ h).clamp_min(0).sqrt()
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def effective_rank(x: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of the centred representation (Roy & Vetterli 2007)."""
    return effective_rank_gram(gram(x))


def survival(pre_activation: torch.Tensor) -> tuple[float, float]:
    """(fraction of positive pre-activations, fraction of neurons positive for no image)."""
    positive = pre_activation.flatten(1) > 0
    return float(positive.double().mean()), float((~positive.any(0)).double().mean())


def position_spread(x: torch.Tensor) -> float | None:
    """Share of a layer's energy that differs between the positions of one image: tokens of a (n, tokens,
    channels) output, pixels of a (n, channels, H, W) map. 0 when every position of an image holds the same
    vector (attention's rank collapse: Dong et al. 2021); None for outputs with no positions."""
    if x.dim() == 4:
        x = x.flatten(2).transpose(1, 2)
    if x.dim() != 3 or x.shape[1] < 2:
        return None
    x = x.double()
    total = x.square().sum()
    return float((x - x.mean(1, keepdim=True)).square().sum() / total) if total > 0 else 0.0
