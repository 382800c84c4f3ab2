"""Data readers on real files (the shared CIFAR-10 copy, Debian's Fashion-MNIST), and the batch pipeline."""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pnnh import PnnhError
from pnnh.data import load_dataset, make_loader
from pnnh.data.loader import augment_batch, channel_stats, normalised
from pnnh.data.readers import FASHION_MNIST_DEBIAN, download_and_extract

from conftest import assert_one_line_error, pnnh_main

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def cifar_test_split(cifar_jpeg: Path):
    return load_dataset("imagefolder", cifar_jpeg, "test")


def test_image_folder_reads_the_shared_cifar10_copy(cifar_jpeg: Path, cifar_test_split) -> None:
    train = load_dataset("imagefolder", cifar_jpeg, "train")
    assert train.images.shape == (50000, 32, 32, 3) and train.images.dtype == torch.uint8
    assert cifar_test_split.images.shape == (10000, 32, 32, 3)
    assert train.classes == CIFAR10_CLASSES
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    # the cached array holds what Pillow decodes from the file
    from PIL import Image
    first = np.array(Image.open(cifar_jpeg / "test" / "airplane" / "0000.jpg").convert("RGB"))
    assert torch.equal(cifar_test_split.images[0], torch.from_numpy(first))


def _small_folder(cifar_jpeg: Path, root: Path, per_class: int = 3, classes=("cat", "dog")) -> Path:
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for f in sorted((cifar_jpeg / split / c).iterdir())[:per_class]:
                shutil.copy(f, root / split / c / f.name)
    return root


def test_image_folder_cache_lives_outside_the_data(cifar_jpeg: Path, tmp_path: Path) -> None:
    root = _small_folder(cifar_jpeg, tmp_path / "data")
    cache = tmp_path / "cache"
    first = load_dataset("imagefolder", root, "train", cache_dir=cache)
    assert len(first) == 6 and first.classes == ["cat", "dog"]
    assert list(cache.rglob("*.npz")) and not list(root.rglob("*.npz"))
    again = load_dataset("imagefolder", root, "train", cache_dir=cache)
    assert torch.equal(first.images, again.images)
    # changing a file refreshes the cache, and the folder's stale cache goes (the other split's stays)
    load_dataset("imagefolder", root, "test", cache_dir=cache)
    before = sorted(cache.rglob("*-train-*.npz"))
    shutil.copy(root / "train" / "dog" / sorted(p.name for p in (root / "train" / "dog").iterdir())[0],
                root / "train" / "dog" / "extra.jpg")
    assert len(load_dataset("imagefolder", root, "train", cache_dir=cache)) == 7
    after = sorted(cache.rglob("*-train-*.npz"))
    assert len(before) == len(after) == 1 and before != after and len(list(cache.rglob("*-test-*.npz"))) == 1
    # a killed write's temporary file goes once it is an hour old; a newer one may be a write in progress
    old, new = (cache / "imagefolder" / f".{after[0].name}.{tag}.tmp" for tag in ("killed", "writing"))
    for leftover in (old, new):
        leftover.write_bytes(b"half")
    os.utime(old, (time.time() - 7200,) * 2)
    load_dataset("imagefolder", root, "train", cache_dir=cache)
    assert not old.exists() and new.exists()
    with pytest.raises(PnnhError, match="inside the data folder"):
        load_dataset("imagefolder", root, "train", cache_dir=root / "cache")


def test_bad_image_folders(cifar_jpeg: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    with pytest.raises(PnnhError, match="no class folders"):
        load_dataset("imagefolder", empty, "train", cache_dir=tmp_path / "c")
    stray = _small_folder(cifar_jpeg, tmp_path / "stray")
    (stray / "train" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(PnnhError, match="notes.txt is not an image file"):
        load_dataset("imagefolder", stray, "train", cache_dir=tmp_path / "c")
    corrupt = _small_folder(cifar_jpeg, tmp_path / "corrupt")
    (corrupt / "train" / "dog" / "9999.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(PnnhError, match="cannot decode .*9999.jpg"):
        load_dataset("imagefolder", corrupt, "train", cache_dir=tmp_path / "c")
    with pytest.raises(PnnhError, match="does not exist"):
        load_dataset("imagefolder", tmp_path / "nowhere", "train")
    with pytest.raises(PnnhError, match="unknown data set 'imagenet21k'.*cifar10"):
        load_dataset("imagenet21k", tmp_path, "train")


def _write_cifar10(root: Path, split) -> Path:
    """A cifar-10-batches-py folder in the official format, holding real images from the shared copy."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images = split.images.numpy()
    labels = split.labels.numpy()
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    chunks = np.array_split(np.arange(len(images)), 6)
    for name, idx in zip([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], chunks):
        batch = {b"data": rows[idx], b"labels": labels[idx].tolist(), b"batch_label": name.encode()}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}))
    return folder


def test_cifar_pickles_and_bad_pickles(cifar_test_split, tmp_path: Path) -> None:
    small = cifar_test_split.subset(600, 0)
    folder = _write_cifar10(tmp_path, small)
    train = load_dataset("cifar10", tmp_path, "train")
    test = load_dataset("cifar10", tmp_path, "test")
    assert len(train) == 500 and len(test) == 100 and train.classes == CIFAR10_CLASSES
    assert torch.equal(torch.cat([train.images, test.images]), small.images)
    data = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(data[: len(data) // 2])
    with pytest.raises(PnnhError, match="data_batch_3 is truncated"):
        load_dataset("cifar10", tmp_path, "train")

    class Hostile:
        def __reduce__(self):
            return (print, ("this must never run",))

    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Hostile()}))
    with pytest.raises(PnnhError, match="data_batch_3 is truncated or not a CIFAR batch"):
        load_dataset("cifar10", tmp_path, "train")
    with pytest.raises(PnnhError, match="no cifar-100-python folder"):
        load_dataset("cifar100", tmp_path / "nothing", "train")


def test_cifar_download_checks_md5(cifar_test_split, tmp_path: Path) -> None:
    _write_cifar10(tmp_path / "src", cifar_test_split.subset(60, 0))
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    download_and_extract(archive.as_uri(), md5, tmp_path / "dest")
    assert len(load_dataset("cifar10", tmp_path / "dest", "train")) == 50
    with pytest.raises(PnnhError, match="expected 0+: the download is corrupt"):
        download_and_extract(archive.as_uri(), "0" * 32, tmp_path / "dest2")
    assert not list((tmp_path / "dest2").iterdir())  # nothing half-written is left behind


def test_fashion_mnist_from_debian() -> None:
    assert FASHION_MNIST_DEBIAN.is_dir(), "install Debian's dataset-fashion-mnist (.ci/run does)"
    train = load_dataset("fashion-mnist", None, "train")
    test = load_dataset("fashion-mnist", None, "test")
    assert train.images.shape == (60000, 28, 28, 1) and len(test) == 10000
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert train.classes[0] == "T-shirt/top"


def test_truncated_idx_files(tmp_path: Path) -> None:
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(FASHION_MNIST_DEBIAN / name, tmp_path / name)
    assert len(load_dataset("mnist", tmp_path, "test")) == 10000
    raw = gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw[:-100])
    with pytest.raises(PnnhError, match="t10k-images-idx3-ubyte is truncated"):
        load_dataset("mnist", tmp_path, "test")
    gz = gzip.compress(raw)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(PnnhError, match="truncated or not gzip"):
        load_dataset("mnist", tmp_path, "test")


def _reference_augment(img: torch.Tensor, dy: int, dx: int, flip: bool, pad: int) -> torch.Tensor:
    h, w, c = img.shape
    padded = torch.zeros(h + 2 * pad, w + 2 * pad, c, dtype=img.dtype)
    padded[pad:pad + h, pad:pad + w] = img
    out = padded[dy:dy + h, dx:dx + w]
    return out.flip(1) if flip else out


def test_batch_augmentation_matches_a_per_image_reference(cifar_test_split) -> None:
    batch = cifar_test_split.images[:16]
    g = torch.Generator().manual_seed(0)
    shifts = torch.randint(0, 9, (16, 2), generator=g)
    flips = torch.rand(16, generator=g) < 0.5
    out = augment_batch(batch, shifts, flips, None, pad=4, cutout=0)
    for i in range(16):
        expected = _reference_augment(batch[i], int(shifts[i, 0]), int(shifts[i, 1]), bool(flips[i]), 4)
        assert torch.equal(out[i], expected)
    centre = augment_batch(batch, torch.full((16, 2), 4), None, None, pad=4, cutout=0)
    assert torch.equal(centre, batch)
    cut = augment_batch(batch, None, None, torch.full((16, 2), 16), pad=0, cutout=8)
    assert (cut[:, 13:20, 13:20] == 0).all() and torch.equal(cut[:, :12], batch[:, :12])


def test_loader_is_deterministic_and_shards_like_one_process(cifar_test_split) -> None:
    data = cifar_test_split.subset(256, 0)
    one = make_loader(data, 32, True, "cpu", seed=3, channels_last=True)
    x1, y1 = next(iter(one.batches(epoch=2, start_step=1)))
    again = list(one.batches(epoch=2))[1]
    assert torch.equal(x1, again[0]) and torch.equal(y1, again[1])
    assert not torch.equal(x1, next(iter(one.batches(epoch=3, start_step=1)))[0])
    halves = [next(iter(make_loader(data, 16, True, "cpu", seed=3, rank=r, world_size=2, channels_last=True)
                        .batches(2, 1))) for r in range(2)]
    assert torch.equal(torch.cat([h[0] for h in halves]), x1)
    assert x1.shape == (32, 3, 32, 32) and x1.is_contiguous(memory_format=torch.channels_last)
    assert abs(x1.mean().item()) < 0.3 and 0.7 < x1.std().item() < 1.3  # normalised
    # channels-last is off unless asked for, as in TrainConfig (the one place that sets its default)
    assert next(iter(make_loader(data, 32, True, "cpu", seed=3).batches(2, 1)))[0].is_contiguous()
    test = make_loader(data, 100, False, "cpu")
    assert [len(y) for _, y in test.batches(0)] == [100, 100, 56]
    # a whole split normalised at once (the probe, scripts) is what the evaluation loader feeds, bit for bit
    stats = channel_stats(data.images)  # what make_loader normalises with when given none
    whole = normalised(data.images, *stats)
    assert torch.equal(whole, torch.cat([x for x, _ in test.batches(0)]))
    x = data.images.permute(0, 3, 1, 2).float() / 255  # the textbook formula, to float rounding
    mean, std = (torch.tensor(v)[:, None, None] for v in stats)
    assert torch.allclose(whole, (x - mean) / std, atol=1e-5)


def test_cli_data_errors(tmp_path: Path) -> None:
    common = ["train", "--model", "resnet20", "--epochs", "1", "--output", tmp_path / "run"]
    assert_one_line_error(pnnh_main(*common, "--data", "imagefolder", "--data-dir", tmp_path / "missing"),
                          "does not exist")
    assert_one_line_error(pnnh_main(*common, "--data", "svhn"), "unknown data set 'svhn'")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    assert_one_line_error(pnnh_main(*common, "--data", "imagefolder", "--data-dir", tmp_path / "empty"),
                          "no class folders")
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"\x80\x04\x95")
    assert_one_line_error(pnnh_main(*common, "--data", "cifar10", "--data-dir", tmp_path), "truncated")
    assert not (tmp_path / "run").exists()


def test_mixup_and_cutmix_on_the_batch() -> None:
    from pnnh.data.loader import mix_batch

    x = torch.randn(8, 3, 16, 16)
    mixed, partner, lam = mix_batch(x, 0.4, 0.0, (0, 1, 2, 0))
    assert 0 <= lam <= 1 and sorted(partner.tolist()) == list(range(8))
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[partner])
    again = mix_batch(x, 0.4, 0.0, (0, 1, 2, 0))
    assert torch.equal(again[0], mixed) and again[2] == lam  # the same seed, the same mix
    cut, partner, lam = mix_batch(x, 0.0, 1.0, (0, 1, 3, 0))
    moved = partner != torch.arange(8)  # images paired with another one
    kept = (cut[moved] == x[moved]).all(1).float().mean().item()  # fraction of pixels kept from each image
    assert moved.any() and abs(kept - lam) < 1e-6 and lam < 1
    assert torch.equal(cut[moved] != x[moved], (cut[moved] == x[partner][moved]) & (cut[moved] != x[moved]))
    assert not torch.equal(mix_batch(x, 0.4, 0.0, (0, 1, 4, 0))[0], mixed)


def test_large_images_stream_and_mixed_sizes_are_refused(tmp_path: Path) -> None:
    from PIL import Image

    from pnnh.data import StreamingFolder
    from pnnh.data.loader import make_loader

    root = tmp_path / "large"
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (96, 80) if i % 2 else (120, 90), (i * 40, 100, 200)).save(
                    root / split / c / f"{i}.png")
    train = load_dataset("imagefolder", root, "train", image_size=48, cache_dir=tmp_path / "c")
    assert isinstance(train, StreamingFolder) and len(train) == 8 and train.classes == ["cat", "dog"]
    loader = make_loader(train, 4, True, "cpu", workers=0)
    batches = list(loader.batches(0))
    assert len(batches) == 2 and batches[0][0].shape == (4, 3, 48, 48) and batches[0][0].dtype == torch.float32
    assert torch.equal(list(loader.batches(0))[1][0], batches[1][0])  # crops are drawn from (seed, epoch)
    test = load_dataset("imagefolder", root, "test", image_size=48, cache_dir=tmp_path / "c")
    assert isinstance(test, StreamingFolder) and test.input_size == (3, 48, 48)
    # one small image among large ones: no pipeline fits both, so auto refuses instead of guessing
    Image.new("RGB", (32, 32)).save(root / "val" / "dog" / "small.png")
    with pytest.raises(PnnhError, match="mixes image sizes.*--image-pipeline"):
        load_dataset("imagefolder", root, "train", image_size=48, cache_dir=tmp_path / "c")
    assert isinstance(load_dataset("imagefolder", root, "test", image_size=48, cache_dir=tmp_path / "c",
                                   pipeline="stream"), StreamingFolder)
    small = tmp_path / "small"
    for c in ("cat", "dog"):
        (small / "train" / c).mkdir(parents=True)
        for i, size in enumerate([(32, 32), (32, 32), (28, 28)]):
            Image.new("RGB", size).save(small / "train" / c / f"{i}.png")
    with pytest.raises(PnnhError, match="28x28.*32x32|mixes image sizes"):
        load_dataset("imagefolder", small, "train", cache_dir=tmp_path / "c")
    resized = load_dataset("imagefolder", small, "train", cache_dir=tmp_path / "c", pipeline="memory")
    assert resized.images.shape == (6, 32, 32, 3)
