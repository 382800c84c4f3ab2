"""Batches for training and evaluation.

In-memory data (TensorLoader) stays uint8 on the device until the batch: the
whole batch is cropped, flipped and cut out with a few tensor operations, and
normalised in the same pass into a channels-last float tensor. No Python runs
per image. The epoch's order and every image's augmentation are drawn up front
from (seed, epoch), so a run resumed mid-epoch, or split across processes,
sees exactly the batches an uninterrupted single-process run sees.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def channel_stats(images: torch.Tensor, max_images: int = 10000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (in [0, 1]) of uint8 images (N, H, W, C), from up to ``max_images``."""
    x = images[:: max(1, len(images) // max_images)].float().div_(255)
    x = x.reshape(-1, x.shape[-1])
    return x.mean(0).tolist(), x.std(0).clamp_min(1e-3).tolist()


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def augment_batch(batch: torch.Tensor, shifts: torch.Tensor | None, flips: torch.Tensor | None,
                  cutout_centres: torch.Tensor | None, pad: int, cutout: int) -> torch.Tensor:
    """Random crop (zero padding ``pad``), horizontal flip and cutout of a uint8 batch (B, H, W, C)."""
    b, h, w, _ = batch.shape
    if shifts is not None and pad > 0:
        padded = F.pad(batch, (0, 0, pad, pad, pad, pad))
        rows = shifts[:, 0, None] + torch.arange(h, device=batch.device)
        cols = shifts[:, 1, None] + torch.arange(w, device=batch.device)
        batch = padded[torch.arange(b, device=batch.device)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if flips is not None:
        batch = torch.where(flips[:, None, None, None], batch.flip(2), batch)
    if cutout_centres is not None and cutout > 0:
        ys = torch.arange(h, device=batch.device)[None, :, None] - cutout_centres[:, 0, None, None]
        xs = torch.arange(w, device=batch.device)[None, None, :] - cutout_centres[:, 1, None, None]
        inside = (ys.abs() <= (cutout - 1) // 2) & (xs.abs() <= (cutout - 1) // 2)
        batch = batch.masked_fill(inside[..., None], 0)
    return batch


def normalise(batch: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 (B, H, W, C) -> normalised float (B, C, H, W); a channels-last view unless asked otherwise.

    ``mean`` and ``inv_std`` are per channel, on the 0-255 scale."""
    x = batch.float().sub_(mean).mul_(inv_std).permute(0, 3, 1, 2)
    return x if channels_last else x.contiguous()


def _scaled_stats(mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(mean, device=device) * 255, 1 / (torch.tensor(std, device=device) * 255)


def normalised(images: torch.Tensor, mean: list[float], std: list[float], channels_last: bool = False) -> torch.Tensor:
    """A whole uint8 (N, H, W, C) split as the loaders feed it to a model: normalised float (N, C, H, W).

    ``mean`` and ``std`` per channel on the 0-1 scale, as ``channel_stats`` gives them."""
    return normalise(images, *_scaled_stats(mean, std, images.device), channels_last)


class TensorLoader:
    """Batches of an in-memory split, this process's share of each global batch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, train: bool,
                 mean: list[float], std: list[float], device: torch.device | str = "cpu", seed: int = 0,
                 crop_padding: int = 4, flip: bool = True, cutout: int = 0, rank: int = 0, world_size: int = 1,
                 channels_last: bool = True):
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.pad, self.flip, self.cutout = (crop_padding, flip, cutout) if train else (0, False, 0)
        self.rank, self.world_size, self.channels_last = rank, world_size, channels_last
        self.global_batch = batch_size * world_size
        n = len(labels)
        self.steps = n // self.global_batch if train else math.ceil(n / self.global_batch)
        if self.steps == 0:
            raise ValueError(f"{n} images is less than one global batch of {self.global_batch}")
        self.mean, self.inv_std = _scaled_stats(mean, std, device)

    def __len__(self) -> int:
        return self.steps

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, (h, w) = len(self.labels), self.images.shape[1:3]
        device = self.images.device
        draws = None  # the epoch's augmentation of every image: shifts, flips (or None), cutout centres
        if self.train:
            g = _epoch_generator(self.seed, epoch)
            order = torch.randperm(n, generator=g)
            shifts = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g).to(device)
            flips = (torch.rand(n, generator=g) < 0.5).to(device) if self.flip else None
            centres = torch.stack([torch.randint(0, h, (n,), generator=g),
                                   torch.randint(0, w, (n,), generator=g)], 1).to(device)
            draws = (shifts, flips, centres)
        else:
            order = torch.arange(n)
        order = order.to(device)
        for step in range(start_step, self.steps):
            chunk = order[step * self.global_batch:(step + 1) * self.global_batch]
            idx = chunk.tensor_split(self.world_size)[self.rank]
            batch = self.images[idx]
            if draws is not None:
                shifts, flips, centres = draws
                batch = augment_batch(batch, shifts[idx], flips[idx] if flips is not None else None,
                                      centres[idx], self.pad, self.cutout)
            yield normalise(batch, self.mean, self.inv_std, self.channels_last), self.labels[idx]


class StreamLoader:
    """Batches of a StreamingFolder, decoded by ``workers`` processes; same contract as TensorLoader."""

    def __init__(self, dataset, batch_size: int, train: bool, device: torch.device | str = "cpu", seed: int = 0,
                 rank: int = 0, world_size: int = 1, workers: int = 4, channels_last: bool = True,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        self.dataset, self.batch_size, self.train, self.device = dataset, batch_size, train, torch.device(device)
        self.seed, self.rank, self.world_size, self.workers = seed, rank, world_size, workers
        self.global_batch = batch_size * world_size
        n = len(dataset)
        self.steps = n // self.global_batch if train else math.ceil(n / self.global_batch)
        if self.steps == 0:
            raise ValueError(f"{n} images is less than one global batch of {self.global_batch}")
        self.dataset.seed = seed
        self.channels_last = channels_last
        self.mean, self.inv_std = _scaled_stats(mean, std, device)

    def __len__(self) -> int:
        return self.steps

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.dataset)
        order = torch.randperm(n, generator=_epoch_generator(self.seed, epoch)) if self.train else torch.arange(n)
        mine = [order[s * self.global_batch:(s + 1) * self.global_batch].tensor_split(self.world_size)[self.rank]
                for s in range(start_step, self.steps)]
        self.dataset.epoch = epoch
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=[m.tolist() for m in mine],
                                             num_workers=self.workers, pin_memory=self.device.type == "cuda")
        for images, labels in loader:
            images = images.to(self.device, non_blocking=True)
            yield (normalise(images, self.mean, self.inv_std, self.channels_last),
                   labels.to(self.device, non_blocking=True))


def make_loader(data, batch_size: int, train: bool, device, seed: int = 0, rank: int = 0, world_size: int = 1,
                workers: int = 4, channels_last: bool = False, crop_padding: int = 4, flip: bool = True,
                cutout: int = 0, mean: list[float] | None = None, std: list[float] | None = None):
    """The loader that fits ``data``: TensorLoader for in-memory arrays, StreamLoader for a StreamingFolder."""
    if hasattr(data, "images"):
        if mean is None or std is None:
            mean, std = channel_stats(data.images)
        return TensorLoader(data.images, data.labels, batch_size, train, mean, std, device, seed, crop_padding,
                            flip, cutout, rank, world_size, channels_last)
    return StreamLoader(data, batch_size, train, device, seed, rank, world_size, workers, channels_last)


def mix_batch(x: torch.Tensor, mixup: float, cutmix: float, seed: tuple[int, ...]
              ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup (alpha ``mixup``) or CutMix (alpha ``cutmix``; one of the two, evenly, when both are set) of a
    normalised batch, as tensor operations: returns (mixed batch, the partner of each image, lam).

    The loss is lam * CE(y) + (1 - lam) * CE(y[partner]). Every draw comes from ``seed`` (the run's seed,
    epoch, step and rank), so a resumed or sharded run mixes exactly as an uninterrupted one.
    """
    rng = np.random.default_rng(seed)
    partner = torch.from_numpy(rng.permutation(len(x))).to(x.device)
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    lam = float(rng.beta(cutmix, cutmix) if use_cutmix else rng.beta(mixup, mixup))
    if not use_cutmix:
        return x.mul(lam).add_(x[partner], alpha=1 - lam), partner, lam
    h, w = x.shape[-2:]
    cut_h, cut_w = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, h)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, w)
    mixed = x.clone()
    mixed[..., top:bottom, left:right] = x[partner][..., top:bottom, left:right]
    return mixed, partner, 1 - (bottom - top) * (right - left) / (h * w)  # lam of the area actually kept
