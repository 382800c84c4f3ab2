"""SIGKILL a training at random points and resume it, again and again: it must end exactly where an
uninterrupted run ends, and no checkpoint on disk may ever be unreadable.

Kill points: a random moment (mid-epoch, or during evaluation), or the moment a checkpoint's
temporary file appears while an earlier checkpoint is on disk (a write over it, which must leave the
earlier one readable). Used by tests/test_reliability.py (a few kills) and by `make soak`
(``python tests/kill_loop.py --seconds N``), which prints the tally.
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from pnnh.checkpoint import load_checkpoint  # noqa: E402

STEPS_PER_EPOCH = 8
ARGS = ["train", "--model", "resnet20", "--data", "fashion-mnist", "--train-subset", "256", "--test-subset", "256",
        "--batch-size", "32", "--epochs", "3", "--workers", "0", "--device", "cpu", "--lr", "0.05",
        "--checkpoint-every", "1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count in every process: bit-exact arithmetic


def _start(out: Path, resume: bool) -> subprocess.Popen:
    resumed = ["--resume"] if resume else []
    return subprocess.Popen([sys.executable, "-m", "pnnh", *ARGS, "--output", str(out), *resumed],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def reference_run(out: Path) -> dict[str, torch.Tensor]:
    proc = _start(out, resume=False)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return _weights(out / "last.pt")


def _writes(out: Path) -> set[int]:
    """The inodes of the checkpoint's temporary files (each write has its own name)."""
    inodes = set()
    for tmp in out.glob(".last.pt.*.tmp"):
        try:
            inodes.add(tmp.stat().st_ino)
        except FileNotFoundError:
            pass
    return inodes


def _check_readable(out: Path) -> None:
    for name in ("last.pt", "best.safetensors"):
        if (out / name).exists():
            load_checkpoint(out / name)  # raises on a damaged file


def kill_loop(workdir: Path, kills: int | None = None, seconds: float | None = None, seed: int = 0) -> dict:
    """Kill and resume until ``kills`` kills (or ``seconds``) are spent; every finished chain is compared
    bit for bit with an uninterrupted run. Returns the tally."""
    rng = random.Random(seed)
    reference = reference_run(workdir / "reference")
    tally = {"kills": 0, "during_write": 0, "during_eval_or_epoch_end": 0, "mid_epoch": 0, "before_first_save": 0,
             "chains_finished": 0, "chains_bit_exact": 0, "checkpoints_read": 0}
    start, chain = time.monotonic(), 0

    def more() -> bool:
        return (kills is not None and tally["kills"] < kills) or (
            seconds is not None and time.monotonic() - start < seconds)

    while more():
        out = workdir / f"chain{chain}"
        while True:
            stale = _writes(out)  # a killed write's leftover, there until this process's first save
            proc = _start(out, resume=(out / "last.pt").exists())
            if more() and rng.random() < 0.5:  # the moment a checkpoint is written over an earlier one
                deadline = time.monotonic() + 30
                while proc.poll() is None and time.monotonic() < deadline and not (
                        (out / "last.pt").exists() and _writes(out) - stale):
                    time.sleep(0.0005)
                time.sleep(rng.uniform(0, 0.003))
            elif more():  # a random moment
                time.sleep(rng.uniform(2.0, 9.0))
            if proc.poll() is None and more():
                writing = bool(_writes(out) - stale)
                proc.kill()
                proc.wait()
                tally["kills"] += 1
                if writing:
                    tally["during_write"] += 1
                if (out / "last.pt").exists():
                    state = load_checkpoint(out / "last.pt")
                    tally["checkpoints_read"] += 1
                    if not writing:
                        tally["during_eval_or_epoch_end" if state["step"] == STEPS_PER_EPOCH else "mid_epoch"] += 1
                elif not writing:
                    tally["before_first_save"] += 1
                _check_readable(out)
                continue
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-2000:]
            break
        tally["chains_finished"] += 1
        got = _weights(out / "last.pt")
        assert got.keys() == reference.keys()
        assert all(torch.equal(got[k], reference[k]) for k in got), f"{out}: weights differ from the reference"
        assert not list(out.glob(".*.tmp")), f"{out}: temporary files left: {list(out.glob('.*.tmp'))}"
        tally["chains_bit_exact"] += 1
        chain += 1
    return tally


if __name__ == "__main__":
    import shutil
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="pnnh-soak-"))
    try:
        result = kill_loop(folder, seconds=args.seconds, seed=args.seed)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(" ".join(f"{k}={v}" for k, v in result.items()))
