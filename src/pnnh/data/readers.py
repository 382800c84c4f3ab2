"""Readers of the formats users have on disk. Each returns uint8 images (N, H, W, C) and int64 labels.

Every failure a user can cause (missing folder, truncated file, stray file) is
a PnnhError naming the file and the fix.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import math
import multiprocessing as mp
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PnnhError
from ..io import write_atomic
from ..progress import bar, log

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")


# ---- CIFAR (python pickle release) ----------------------------------------------------------

CIFAR: dict[str, dict[str, Any]] = {
    "cifar10": {"folder": "cifar-10-batches-py", "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "md5": "c58f30108f718f92721af3b95e74349a", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "labels": b"labels", "meta": "batches.meta", "names": b"label_names"},
    "cifar100": {"folder": "cifar-100-python", "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "md5": "eb9058c3a382ffc7106e4002c42a8d85", "train": ["train"], "test": ["test"],
                 "labels": b"fine_labels", "meta": "meta", "names": b"fine_label_names"},
}
# MD5s of the official release's files once unpacked: pixels carry no checksum of their own, so a file
# that differs from these is reported (it may be a deliberate copy, but its numbers are not CIFAR's).
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888", "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc", "meta": "7973b15100ade9c7d40fb424638fde48",
}


def warn_if_not_official(path: Path, md5: str | None) -> None:
    """Log a warning when a file of an official data set does not have the official MD5."""
    if md5 is None:
        return
    try:
        digest = hashlib.md5(path.read_bytes()).hexdigest()
    except OSError:
        return  # the reader itself reports unreadable files
    if digest != md5:
        log.warning(f"warning: {path} is not the official file (MD5 {digest}, official {md5}): it loads, but "
                    f"numbers measured on it are not numbers on the official data set")


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles: allow the numpy array machinery and nothing else (a hostile file cannot run code)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
        if not isinstance(obj, dict):
            raise TypeError(f"a {type(obj).__name__}, not a dict")
        return obj
    except FileNotFoundError:
        raise PnnhError(f"{path} is missing: point --data-dir at the folder that holds it, or --download") from None
    except Exception as e:  # noqa: BLE001 -- a truncated, corrupt or hostile pickle raises anything
        raise PnnhError(f"{path} is truncated or not a CIFAR batch ({type(e).__name__}); "
                        f"delete it and fetch the data set again (--download)") from None


def cifar_root(name: str, data_dir: Path) -> Path:
    folder = CIFAR[name]["folder"]
    return data_dir if (data_dir / CIFAR[name]["meta"]).exists() or data_dir.name == folder else data_dir / folder


def read_cifar(name: str, data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    spec = CIFAR[name]
    root = cifar_root(name, data_dir)
    if not root.is_dir():
        raise PnnhError(f"no {spec['folder']} folder under {data_dir}: pass --download, or --data-dir pointing at it")
    images, labels = [], []
    for file in [*spec[split], spec["meta"]]:
        warn_if_not_official(root / file, OFFICIAL_MD5.get(file))
    for file in spec[split]:
        batch = _load_pickle(root / file)
        try:
            data, batch_labels = batch[b"data"], np.asarray(batch[spec["labels"]])
            if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                    and data.shape[1] == 3 * 32 * 32):
                raise ValueError(f"data is {getattr(data, 'dtype', type(data).__name__)} "
                                 f"{getattr(data, 'shape', '')}, not uint8 (N, 3072)")
            if batch_labels.ndim != 1 or len(batch_labels) != len(data) or batch_labels.dtype.kind not in "iu":
                raise ValueError(f"{len(data)} images but labels of shape {batch_labels.shape} "
                                 f"({batch_labels.dtype})")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(batch_labels.astype(np.int64))
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise PnnhError(f"{root / file} is not a {name} batch ({e}); fetch the data set again "
                            f"(--download)") from None
    meta = _load_pickle(root / spec["meta"])
    try:
        classes = [c.decode() for c in meta[spec["names"]]]
    except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise PnnhError(f"{root / spec['meta']} has no class names ({type(e).__name__}); fetch the data set "
                        f"again (--download)") from None
    return np.concatenate(images), np.concatenate(labels), classes


def download(url: str, md5: str, path: Path) -> None:
    """Fetch ``url`` (http(s) or file://) to ``path`` if its MD5 matches; nothing is left behind otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, tmp)
        except OSError as e:
            os.unlink(tmp.name)
            raise PnnhError(f"cannot download {url}: {e}; download it by hand and pass --data-dir") from None
    digest = hashlib.md5(Path(tmp.name).read_bytes()).hexdigest()
    if digest != md5:
        os.unlink(tmp.name)
        raise PnnhError(f"{url} has MD5 {digest}, expected {md5}: the download is corrupt, try again")
    os.replace(tmp.name, path)


def download_and_extract(url: str, md5: str, dest: Path) -> None:
    """Fetch a tarball, check its MD5, unpack it into ``dest``."""
    archive = dest / Path(urllib.request.url2pathname(url.rsplit("/", 1)[-1])).name
    download(url, md5, archive)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()


# ---- MNIST family (IDX files) ------------------------------------------------------------------

IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
MNIST_CLASSES = {"mnist": [str(i) for i in range(10)],
                 "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                   "Sneaker", "Bag", "Ankle boot"]}
FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
IDX_DOWNLOADS = {  # the official files and their MD5s
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83fd310"}),
}


def download_idx(name: str, dest: Path) -> None:
    base, files = IDX_DOWNLOADS[name]
    for file, md5 in files.items():
        if not (dest / file).exists():
            log.info(f"downloading {base}{file}")
            download(base + file, md5, dest / file)


def _read_idx(path: Path, expected_dims: int) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise PnnhError(f"{path} is truncated or not gzip ({e}); fetch the file again") from None
    if len(raw) < 4 + 4 * expected_dims or raw[:2] != b"\0\0" or raw[2] != 0x08 or raw[3] != expected_dims:
        raise PnnhError(f"{path} is not an IDX file of {expected_dims} dimension(s) of uint8; fetch it again")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(expected_dims))
    body = raw[4 + 4 * expected_dims:]
    if len(body) != math.prod(shape):
        raise PnnhError(f"{path} is truncated: header says {shape}, body has {len(body)} bytes; fetch it again")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape).copy()


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.exists():
            return candidate
    raise PnnhError(f"{folder} has no {stem} or {stem}.gz: point --data-dir at the folder with the IDX files"
                    + (" (Debian: apt-get install dataset-fashion-mnist)" if "fashion" in str(folder).lower() else ""))


def read_mnist(name: str, data_dir: Path | None, split: str, download_to: Path | None = None
               ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """IDX files from ``data_dir``; else Debian's Fashion-MNIST; else, with ``download_to``, the official files."""
    if data_dir is None:
        if name == "fashion-mnist" and FASHION_MNIST_DEBIAN.is_dir():
            data_dir = FASHION_MNIST_DEBIAN
        elif download_to is not None:
            download_idx(name, download_to)
            data_dir = download_to
        else:
            raise PnnhError(f"--data-dir is needed for {name} (or --download"
                            + ("; or apt-get install dataset-fashion-mnist)" if name == "fashion-mnist" else ")"))
    if not data_dir.is_dir():
        raise PnnhError(f"data folder {data_dir} (--data-dir) does not exist")
    image_file, label_file = IDX_FILES[split]
    images = _read_idx(_find(data_dir, image_file), 3)
    labels = _read_idx(_find(data_dir, label_file), 1).astype(np.int64)
    if len(images) != len(labels):
        raise PnnhError(f"{data_dir}: {len(images)} images but {len(labels)} labels in the {split} split")
    return images[..., None], labels, MNIST_CLASSES[name]


# ---- ImageFolder -------------------------------------------------------------------------------

def folder_split(data_dir: Path, split: str) -> Path:
    names = ["train"] if split == "train" else ["val", "test"]
    for name in names:
        if (data_dir / name).is_dir():
            return data_dir / name
    raise PnnhError(f"{data_dir} has no {' or '.join(n + '/' for n in names)} folder: an image folder holds "
                    f"train/<class>/*.jpg and val/<class>/*.jpg (or test/)")


def list_image_folder(root: Path, classes: list[str] | None = None) -> tuple[list[Path], np.ndarray, list[str]]:
    """Files and labels of ``root/<class>/*``; ``classes`` fixes the class order (the train split's)."""
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise PnnhError(f"{root} has no class folders: put each class's images in {root}/<class>/")
    classes = classes or found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise PnnhError(f"{root} has classes not in the training split: {', '.join(unknown)}")
    files: list[Path] = []
    labels: list[int] = []
    training = classes is found  # the training split: its folders are the classes
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        before = len(files)
        for f in sorted(folder.iterdir()):
            if f.name.startswith("."):
                continue
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                raise PnnhError(f"{f} is not an image file ({', '.join(IMAGE_EXTENSIONS)}): move it out of the "
                                f"data folder")
            files.append(f)
            labels.append(label)
        if training and len(files) == before:
            raise PnnhError(f"{folder} holds no images, so its class would have none: remove the empty folder or "
                            f"add its images")
    if not files:
        raise PnnhError(f"{root} holds no images")
    return files, np.asarray(labels, dtype=np.int64), classes


def decode_image(path: Path, size: tuple[int, int] | None = None, strict: bool = False) -> np.ndarray:
    """An RGB uint8 array (H, W, 3); resized to ``size`` (W, H) when given, or refused if ``strict``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if size is not None and img.size != size and strict:
                raise PnnhError(f"{path} is {img.size[0]}x{img.size[1]}, the folder's other images "
                                f"{size[0]}x{size[1]}: choose --image-pipeline memory (resize all) or stream")
            img = img.convert("RGB")
            if size is not None and img.size != size:
                img = img.resize(size, Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        detail = " ".join(str(e).split())[:200]
        raise PnnhError(f"cannot decode {path} ({detail}): remove or replace the file") from None


def image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        detail = " ".join(str(e).split())[:200]
        raise PnnhError(f"cannot decode {path} ({detail}): remove or replace the file") from None


def _decode_chunk(args: tuple[list[str], tuple[int, int], bool]) -> bytes | str:
    """The chunk's pixels, or the error message of its first bad file (errors cross the process boundary as text)."""
    paths, size, strict = args
    try:
        return b"".join(decode_image(Path(p), size, strict).tobytes() for p in paths)
    except PnnhError as e:
        return str(e)


def decode_all(files: list[Path], size: tuple[int, int], workers: int = 2, strict: bool = False) -> np.ndarray:
    """Decode every file into one (N, H, W, 3) array, in worker processes, with a progress bar."""

    chunk = 500
    chunks = [([str(p) for p in files[i:i + chunk]], size, strict) for i in range(0, len(files), chunk)]
    parts = []
    with bar(total=len(files), desc="decoding", unit="img") as progress:
        if workers > 1 and len(chunks) > 1:
            with mp.get_context("fork").Pool(workers) as pool:  # workers only run Pillow and numpy
                results = pool.imap(_decode_chunk, chunks)
                for (paths, _, _), part in zip(chunks, results):
                    parts.append(part)
                    progress.update(len(paths))
        else:
            for c in chunks:
                parts.append(_decode_chunk(c))
                progress.update(len(c[0]))
    pixels = []
    for part in parts:
        if isinstance(part, str):
            raise PnnhError(part)
        pixels.append(part)
    w, h = size
    return np.frombuffer(b"".join(pixels), dtype=np.uint8).reshape(len(files), h, w, 3)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def write_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    write_atomic(path, buf.getvalue())
