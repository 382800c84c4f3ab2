"""Data sets by name: ``load_dataset("cifar10", data_dir, "train")`` -> uint8 arrays in memory,
or, for an image folder of large images, a streaming data set decoded by worker processes."""
from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..distributed import DistInfo
from ..errors import PnnhError
from ..io import remove_leftovers
from ..progress import log
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

    def subset(self, n: int | None, seed: int) -> ImageArrays:
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


def check_arrays(images: np.ndarray, labels: np.ndarray, classes: list[str], source: str) -> None:
    """Refuse data that do not add up: every reader's output passes through here."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or 0 in images.shape:
        raise PnnhError(f"{source}: images must be uint8 (N, H, W, 1 or 3), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise PnnhError(f"{source}: labels must be a list of integers, got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise PnnhError(f"{source}: {len(images)} images but {len(labels)} labels; the files are damaged, "
                        f"fetch them again")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise PnnhError(f"{source}: labels run from {labels.min()} to {labels.max()} but there are "
                        f"{len(classes)} classes; the files are damaged, fetch them again")


def load_dataset(name: str, data_dir: str | Path | None, split: str, download: bool = False,
                 cache_dir: str | Path | None = None, image_size: int = 224, pipeline: str = "auto"
                 ) -> ImageArrays | StreamingFolder:
    """One split (``"train"`` or ``"test"``) of a data set; see DATASETS.

    ``pipeline`` (image folders only): "memory" decodes every image once into a cached array,
    "stream" decodes crops of ``image_size`` in worker processes, "auto" picks by image size
    (up to 64 px: memory) and refuses a folder that mixes sizes.
    """
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
            log.info(f"downloading {spec['url']} to {path}")
            readers.download_and_extract(spec["url"], spec["md5"], path)
        images, labels, classes = readers.read_cifar(name, path, split)
    elif name in readers.MNIST_CLASSES:
        download_to = default_cache_dir() / "datasets" / name if download else None
        images, labels, classes = readers.read_mnist(name, path, split, download_to)
    else:
        if path is None:
            raise PnnhError("--data-dir is needed for an image folder (train/<class>/*.jpg, val/<class>/*.jpg)")
        if not path.is_dir():
            raise PnnhError(f"data folder {path} (--data-dir) does not exist")
        return _load_image_folder(path, split, Path(cache_dir) if cache_dir else default_cache_dir(), image_size,
                                  pipeline)
    check_arrays(images, labels, classes, f"{name} {split} split in {path}")
    return ImageArrays(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels), classes)


def choose_pipeline(path: Path, pipeline: str) -> tuple[str, tuple[int, int]]:
    """One pipeline for both splits of an image folder, and the size memory decoding uses.

    "auto" reads the sizes of up to 64 files per split, spread over the listing: all the same
    and at most SMALL_IMAGE_MAX px -> memory; all larger -> stream; anything else is refused.
    """
    sampled = []
    for split in ("train", "test"):
        try:
            files, _, _ = readers.list_image_folder(readers.folder_split(path, split))
        except PnnhError:
            if split == "train":
                raise
            continue
        stride = max(1, len(files) // 64)
        sampled += [(f, readers.image_size(f)) for f in files[::stride][:64]]
    first = sampled[0][1]
    if pipeline != "auto":
        return pipeline, first
    small = [fs for fs in sampled if max(fs[1]) <= SMALL_IMAGE_MAX]
    if len(small) == len(sampled) and all(s == first for _, s in sampled):
        return "memory", first
    if not small:
        return "stream", first
    other = next(fs for fs in sampled if fs[1] != first)
    raise PnnhError(f"image folder {path} mixes image sizes ({first[0]}x{first[1]} in {sampled[0][0].name}, "
                    f"{other[1][0]}x{other[1][1]} in {other[0].name}): choose --image-pipeline memory (decode "
                    f"once, every image resized to {first[0]}x{first[1]}) or stream (crops of --image-size)")


def _load_image_folder(path: Path, split: str, cache_dir: Path, image_size: int, pipeline: str
                       ) -> ImageArrays | StreamingFolder:
    _, _, classes = readers.list_image_folder(readers.folder_split(path, "train"))
    files, labels, classes = readers.list_image_folder(readers.folder_split(path, split), classes)
    chosen, size = choose_pipeline(path, pipeline)
    if chosen == "stream":
        return StreamingFolder(files, labels, classes, image_size, train=split == "train")
    # One cache per folder and split, named "<folder>-<split>-<where>-<what>.npz": <where> hashes the
    # folder's path, <what> every file's name, label, size and modification time, so any change to the
    # files refreshes the cache and the folder's stale caches are then removed.
    where = hashlib.sha1(f"{path.resolve()}|{split}".encode()).hexdigest()[:8]
    h = hashlib.sha1(f"{size}|{','.join(classes)}".encode())
    for f, label in zip(files, labels):
        st = f.stat()
        h.update(f"{f.relative_to(path)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    cache = cache_dir / "imagefolder" / f"{path.name}-{split}-{where}-{h.hexdigest()[:16]}.npz"
    if cache.resolve().is_relative_to(path.resolve()):
        raise PnnhError(f"the cache folder {cache_dir} is inside the data folder {path}: choose another --cache-dir")
    # a killed write's temporary file (each write names its own); one written in the last hour may be
    # another run's write in progress, and removing it would fail that run
    for left in remove_leftovers(cache.parent, f"{glob.escape(path.name)}-{split}-{where}-*.npz", older_than_s=3600):
        log.info(f"removed {left}, left by an interrupted cache write")
    if cache.exists():
        try:
            arrays = readers.read_npz(cache)
            check_arrays(arrays["images"], arrays["labels"], classes, f"cache {cache}")
            if arrays["images"].shape[1:3] == (size[1], size[0]) and len(arrays["labels"]) == len(files):
                return ImageArrays(torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"]), classes)
        except (OSError, ValueError, KeyError, PnnhError):
            pass
        log.warning(f"cache {cache} is unreadable or stale; decoding again")
    log.info(f"decoding {len(files)} images of {path / split} once; cache: {cache}")
    # auto decodes only a folder whose sampled images share one size; every other image must too
    images = readers.decode_all(files, size, strict=pipeline == "auto")
    check_arrays(images, labels, classes, f"image folder {path / split}")
    readers.write_npz_atomic(cache, images=images, labels=labels)
    for stale in cache.parent.glob(f"{glob.escape(path.name)}-{split}-{where}-*.npz"):
        if stale != cache:
            stale.unlink(missing_ok=True)
            log.info(f"removed the stale cache {stale}")
    return ImageArrays(torch.from_numpy(images.copy()), torch.from_numpy(labels), classes)


def load_splits(cfg: TrainConfig, splits: tuple[str, ...] = ("train", "test")) -> dict:
    """The requested splits of cfg's data set, with cfg's seeded subsets applied."""
    out = {}
    for split in splits:
        data = load_dataset(cfg.data, cfg.data_dir, split, cfg.download, cfg.cache_dir, cfg.image_size,
                            cfg.image_pipeline)
        n = cfg.train_subset if split == "train" else cfg.test_subset
        if hasattr(data, "subset"):
            data = data.subset(n, cfg.seed if split == "train" else 0)
        elif n:
            raise PnnhError("--train-subset/--test-subset apply to in-memory data sets, not streamed image folders")
        out[split] = data
    return out


def make_loaders(cfg: TrainConfig, splits: dict, device: torch.device, dist_info: DistInfo,
                 stats: tuple[list[float], list[float]] | None) -> dict:
    """A loader per split; ``stats`` (mean, std) normalise every split as the training split was."""
    mean, std = stats if stats else (None, None)
    loaders = {}
    for split, data in splits.items():
        try:
            loaders[split] = make_loader(data, cfg.batch_size, split == "train", device, seed=cfg.seed,
                                         rank=dist_info.rank, world_size=dist_info.world_size, workers=cfg.workers,
                                         channels_last=cfg.channels_last, crop_padding=cfg.crop_padding,
                                         flip=cfg.flip, cutout=cfg.cutout, mean=mean, std=std)
        except ValueError as e:
            raise PnnhError(f"{e}: use a smaller --batch-size or a larger --train-subset") from None
    return loaders


__all__ = ["DATASETS", "ImageArrays", "StreamLoader", "StreamingFolder", "TensorLoader", "default_cache_dir",
           "load_dataset", "load_splits", "make_loader", "make_loaders"]
