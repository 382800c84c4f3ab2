"""Fuzzing every reader: random truncations, byte flips and structural mutations (wrong counts, shapes,
label ranges, types). Every case must end in a correct load or a one-line PnnhError: never a hang, another
exception (a traceback), code execution, or a data set that does not add up."""
from __future__ import annotations

import gzip
import os
import pickle
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from pnnh.checkpoint import load_checkpoint, save_atomic
from pnnh.cli import config_from_args, parse_args
from pnnh.data import load_dataset
from pnnh.errors import PnnhError

CASES = int(os.environ.get("PNNH_FUZZ_CASES", "300"))  # per reader; raise it for a longer fuzz


class Hang(Exception):
    pass


def run_case(load, check) -> str:
    """'loaded' or 'refused'; anything else fails the test (with a 10 s limit against hangs)."""
    def alarm(signum, frame):
        raise Hang()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(10)
    try:
        result = load()
    except PnnhError as e:
        assert "\n" not in str(e), f"a multi-line error: {e}"
        return "refused"
    except Hang:
        pytest.fail("a reader hung on a mutated file")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    check(result)
    return "loaded"


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A random truncation, or 1-8 random byte flips."""
    if rng.random() < 0.4:
        return data[:rng.randrange(len(data))]
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def check_split(n_classes: int, shape: tuple[int, ...]):
    def check(split) -> None:
        assert split.images.dtype == torch.uint8 and tuple(split.images.shape[1:]) == shape
        assert len(split.images) == len(split.labels) > 0
        assert int(split.labels.min()) >= 0 and int(split.labels.max()) < n_classes
    return check


def report(name: str, tally: dict) -> None:
    print(f"fuzz {name}: {sum(tally.values())} cases, {tally}")


def test_fuzz_cifar_pickles(tmp_path: Path) -> None:
    rng = random.Random(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    gen = np.random.default_rng(0)
    good = {b"data": gen.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": list(gen.integers(0, 10, 20)),
            b"batch_label": b"test"}
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    marker = tmp_path / "pwned"

    class Hostile:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    structural = [
        {**good, b"labels": good[b"labels"][:-3]}, {**good, b"labels": good[b"labels"] + [1]},
        {**good, b"labels": [10] * 20}, {**good, b"labels": [-1] * 20}, {**good, b"labels": ["a"] * 20},
        {**good, b"data": good[b"data"].astype(np.float32)}, {**good, b"data": good[b"data"][:, :3000]},
        {**good, b"data": good[b"data"].reshape(20, 3, 32, 32)}, {b"labels": good[b"labels"]},
        {**good, b"data": b"not an array"}, [1, 2, 3], {**good, b"data": Hostile()},
    ]
    payloads = [pickle.dumps(s) for s in structural]
    base = pickle.dumps(good)
    payloads += [mutate(base, rng) for _ in range(CASES - len(payloads))]
    tally = {"loaded": 0, "refused": 0}
    for payload in payloads:
        (folder / "test_batch").write_bytes(payload)
        tally[run_case(lambda: load_dataset("cifar10", tmp_path, "test"), check_split(10, (32, 32, 3)))] += 1
    assert not marker.exists()
    assert tally["refused"] >= len(structural)
    report("CIFAR pickles", tally)


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_fuzz_idx_files(tmp_path: Path, gz: bool) -> None:
    rng = random.Random(1)
    gen = np.random.default_rng(1)
    images, labels = gen.integers(0, 256, (30, 28, 28)), gen.integers(0, 10, 30)
    pack = gzip.compress if gz else (lambda b: b)
    suffix = ".gz" if gz else ""
    structural = [(_idx(images), _idx(labels[:-1])), (_idx(images), _idx(np.full(30, 10))),
                  (_idx(images[:, :, :, None]), _idx(labels)), (_idx(images), _idx(labels[:, None])),
                  (_idx(images)[:-1], _idx(labels)), (b"\0\0\x0d\x03" + _idx(images)[4:], _idx(labels)),
                  (_idx(np.zeros((0, 28, 28))), _idx(labels[:0]))]
    cases = [(pack(a), pack(b)) for a, b in structural]
    good_images, good_labels = pack(_idx(images)), pack(_idx(labels))
    while len(cases) < CASES:
        if rng.random() < 0.5:
            cases.append((mutate(good_images, rng), good_labels))
        else:
            cases.append((good_images, mutate(good_labels, rng)))
    tally = {"loaded": 0, "refused": 0}
    for image_bytes, label_bytes in cases:
        (tmp_path / f"t10k-images-idx3-ubyte{suffix}").write_bytes(image_bytes)
        (tmp_path / f"t10k-labels-idx1-ubyte{suffix}").write_bytes(label_bytes)
        tally[run_case(lambda: load_dataset("mnist", tmp_path, "test"), check_split(10, (28, 28, 1)))] += 1
    assert tally["refused"] >= len(structural)
    report(f"IDX ({'gzip' if gz else 'raw'})", tally)


def test_fuzz_image_folders(cifar_jpeg: Path, tmp_path: Path) -> None:
    from PIL import Image

    rng = random.Random(2)
    source = tmp_path / "source"
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (source / split / c).mkdir(parents=True)
            for f in sorted((cifar_jpeg / split / c).iterdir())[:4]:
                shutil.copy(f, source / split / c / f.name)
    cache = tmp_path / "cache"
    tally = {"loaded": 0, "refused": 0}
    for case in range(CASES // 3):
        root = tmp_path / f"case{case}"
        shutil.copytree(source, root)
        files = sorted((root / "train").rglob("*.jpg"))
        victim = rng.choice(files)
        kind = rng.choice(["bytes", "bytes", "big", "empty", "stray", "move", "rename"])
        if kind == "bytes":
            victim.write_bytes(mutate(victim.read_bytes(), rng))
        elif kind == "big":
            Image.new("RGB", (rng.choice([33, 65, 300]), 40)).save(victim.with_suffix(".png"))
            victim.unlink()
        elif kind == "empty":
            victim.write_bytes(b"")
        elif kind == "stray":
            (victim.parent / "notes.txt").write_text("x")
        elif kind == "move":  # the cache must see that a file changed class
            other = "dog" if victim.parent.name == "cat" else "cat"
            victim.rename(root / "train" / other / f"moved-{victim.name}")
        else:
            victim.rename(victim.with_name(f"z{victim.name}"))

        def check(split, root=root) -> None:
            check_split(2, (32, 32, 3))(split)
            expected = [("cat", 0), ("dog", 1)]
            names = [(f, label) for c, label in expected for f in sorted((root / "train" / c).iterdir())]
            assert split.labels.tolist() == [label for _, label in names]  # labels follow the files as they are now
            for i, (f, _) in enumerate(names):
                assert torch.equal(split.images[i], torch.from_numpy(np.array(Image.open(f).convert("RGB"))))

        tally[run_case(lambda root=root: load_dataset("imagefolder", root, "train", cache_dir=cache), check)] += 1
    report("image folders", tally)


def test_fuzz_checkpoints(tmp_path: Path) -> None:
    rng = random.Random(3)
    torch.manual_seed(0)
    state = {"format": None, "model": {"w": torch.randn(64, 32), "b": torch.randn(64)}, "epoch": 3,
             "config": {"lr": 0.1, "model": "resnet20"}}
    path = tmp_path / "good.pt"
    save_atomic(state, path)
    original = load_checkpoint(path)
    base = path.read_bytes()
    tally = {"loaded": 0, "refused": 0}
    target = tmp_path / "case.pt"

    def same(loaded) -> None:  # a flip that loads must have hit bytes that do not matter
        assert loaded["epoch"] == original["epoch"] and loaded["config"] == original["config"]
        assert all(torch.equal(loaded["model"][k], original["model"][k]) for k in original["model"])

    for _ in range(CASES):
        target.write_bytes(mutate(base, rng))
        tally[run_case(lambda: load_checkpoint(target), same)] += 1
    assert tally["refused"] > CASES // 2
    report("checkpoints", tally)


def test_fuzz_yaml_configs(tmp_path: Path) -> None:
    rng = random.Random(4)
    good = ("model: resnet20\nkind: pnnh\nepochs: 3\nlr: 0.1\nbatch_size: 64\nlabel_smoothing: 0.1\n"
            "model_kwargs:\n  learner_ratio: 0.5\n")
    swaps = ["true", "-1", "1e999", "nan", ".inf", "[1, 2]", "{a: 1}", "''", "null", "2.5", "~", "!!binary aGk="]
    tally = {"loaded": 0, "refused": 0}
    config = tmp_path / "c.yaml"
    for case in range(CASES):
        text = good
        if case % 2:
            lines = text.splitlines()
            i = rng.randrange(len(lines))
            key = lines[i].split(":")[0]
            lines[i] = f"{key}: {rng.choice(swaps)}"
            text = "\n".join(lines) + "\n"
        else:
            text = mutate(text.encode(), rng).decode("latin-1")
        config.write_text(text, encoding="latin-1")

        def load():
            cfg = config_from_args(parse_args(["train", "--config", str(config)]))
            cfg.validate()
            return cfg

        tally[run_case(load, lambda cfg: None)] += 1
    report("YAML configs", tally)
