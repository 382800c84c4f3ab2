"""Data sets by name: ``load_dataset("cifar10", data_dir, "train")`` -> uint8 arrays in memory,
or, for an image folder of large images, a streaming data set decoded by worker processes."""
from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import PnnhError
from . import readers
from .loader import StreamLoader, TensorLoader, make_loader
from .stream import StreamingFolder

DATASETS = ("cifar10", "cifar100", "mnist", "fashion-mnist", "imagefolder")
SMALL_IMAGE_MAX = 64  # image folders of images up to this size are decoded once and cached in memory


@dataclass
class ImageArrays:
    """A split held in memory: images (N, H, W, C) uint8, labels (N,) int64."""
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def input_size(self) -> tuple[int, int, int]:
        n, h, w, c = self.images.shape
        return c, h, w

    def subset(self, n: int | None, seed: int) -> "ImageArrays":
        """A fixed, seeded subset of ``n`` images (sorted, so reading stays sequential)."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise PnnhError(f"a subset needs at least one image, got {n}")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].sort().values
        return ImageArrays(self.images[idx], self.labels[idx], self.classes)


def default_cache_dir() -> Path:
    return Path(os.environ.get("PNNH_CACHE_DIR", Path.home() / ".cache" / "pnnh"))


def load_dataset(name: str, data_dir: str | Path | None, split: str, download: bool = False,
                 cache_dir: str | Path | None = None, image_size: int = 224) -> ImageArrays | StreamingFolder:
    """One split (``"train"`` or ``"test"``) of a data set; see DATASETS."""
    if name not in DATASETS:
        raise PnnhError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise PnnhError(f"unknown split {split!r}; valid: train, test")
    path = Path(data_dir).expanduser() if data_dir is not None else None
    if name in readers.CIFAR:
        if path is None:
            path = default_cache_dir() / "datasets"
        if download and not readers.cifar_root(name, path).is_dir():
            spec = readers.CIFAR[name]
            print(f"downloading {spec['url']} to {path}", file=sys.stderr)
            readers.download_and_extract(spec["url"], spec["md5"], path)
        images, labels, classes = readers.read_cifar(name, path, split)
    elif name in readers.MNIST_CLASSES:
        download_to = default_cache_dir() / "datasets" / name if download else None
        images, labels, classes = readers.read_mnist(name, path, split, download_to)
    else:
        if path is None:
            raise PnnhError("--data-dir is needed for an image folder (train/<class>/*.jpg, val/<class>/*.jpg)")
        if not path.is_dir():
            raise PnnhError(f"data folder {path} does not exist")
        return _load_image_folder(path, split, Path(cache_dir) if cache_dir else default_cache_dir(), image_size)
    return ImageArrays(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels), classes)


def _load_image_folder(path: Path, split: str, cache_dir: Path, image_size: int) -> ImageArrays | StreamingFolder:
    _, _, classes = readers.list_image_folder(readers.folder_split(path, "train"))
    files, labels, classes = readers.list_image_folder(readers.folder_split(path, split), classes)
    size = readers.image_size(files[0])
    if max(size) > SMALL_IMAGE_MAX:
        return StreamingFolder(files, labels, classes, image_size, train=split == "train")
    stats = [f.stat() for f in files]
    key = hashlib.sha1(f"{path.resolve()}|{split}|{len(files)}|{sum(s.st_size for s in stats)}|"
                       f"{max(s.st_mtime_ns for s in stats)}|{size}".encode()).hexdigest()[:16]
    cache = cache_dir / "imagefolder" / f"{path.name}-{split}-{key}.npz"
    if cache.resolve().is_relative_to(path.resolve()):
        raise PnnhError(f"the cache folder {cache_dir} is inside the data folder {path}: choose another --cache-dir")
    if cache.exists():
        try:
            arrays = readers.read_npz(cache)
            return ImageArrays(torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"]), classes)
        except (OSError, ValueError, KeyError):
            print(f"cache {cache} is unreadable; decoding again", file=sys.stderr)
    print(f"decoding {len(files)} images of {path / split} once; cache: {cache}", file=sys.stderr)
    images = readers.decode_all(files, size)
    readers.write_npz_atomic(cache, images=images, labels=labels)
    return ImageArrays(torch.from_numpy(images.copy()), torch.from_numpy(labels), classes)


__all__ = ["DATASETS", "ImageArrays", "StreamLoader", "StreamingFolder", "TensorLoader", "load_dataset",
           "make_loader", "default_cache_dir"]
