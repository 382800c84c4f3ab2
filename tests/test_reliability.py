"""Nothing lost, nothing silently wrong: kills, resume and compare that refuse other settings, divergence,
full and read-only disks, checked flags, bit-identical reruns."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from kill_loop import kill_loop

import pnnh
from pnnh.checkpoint import load_checkpoint
from pnnh.config import TrainConfig
from pnnh.io import remove_leftovers, write_atomic
from pnnh.train import train

from conftest import assert_one_line_error, pnnh_main

TINY = ["--model", "resnet20", "--data", "fashion-mnist", "--train-subset", "128", "--test-subset", "64",
        "--batch-size", "32", "--workers", "0", "--device", "cpu"]


def cli_error(*args: str) -> str:
    """Run `pnnh ARGS` in this process; it must fail with one `error:` line and no traceback."""
    return assert_one_line_error(pnnh_main(*args))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_kill_suite_resumes_bit_for_bit(tmp_path: Path) -> None:
    """SIGKILL at random moments and during checkpoint writes; every kill resumed; the end equals an
    uninterrupted run bit for bit and no checkpoint was ever unreadable (`make soak` runs this for longer)."""
    tally = kill_loop(tmp_path, kills=4, seed=1)
    print(f"kill suite: {tally}")
    assert tally["kills"] == 4 and tally["checkpoints_read"] >= 1
    assert tally["chains_finished"] == tally["chains_bit_exact"] >= 1


def test_same_seed_twice_is_bit_identical_on_cpu(tmp_path: Path) -> None:
    cfg = dict(model="resnet20", kind="pnnh", data="fashion-mnist", train_subset=96, test_subset=32, batch_size=32,
               epochs=1, workers=0, device="cpu")
    a = train(TrainConfig(**cfg, output=str(tmp_path / "a")))["model"].state_dict()
    b = train(TrainConfig(**cfg, output=str(tmp_path / "b")))["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = train(TrainConfig(**{**cfg, "seed": 1}, output=str(tmp_path / "c")))["model"].state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the test can fail: another seed differs


def test_resume_continues_exactly_that_run_and_refuses_other_settings(tmp_path: Path) -> None:
    a = tmp_path / "a"
    stopped = pnnh_main("train", *TINY, "--epochs", "2", "--output", a, "--stop-after-steps", "3")
    assert stopped.returncode == 130, stopped.stderr
    before = _files(a)
    for flags, named in ((["--lr", "0.5"], "--lr 0.5"), (["--model", "resnet32"], "--model 'resnet32'"),
                         (["--epochs", "5"], "--epochs 5"), (["--kind", "pnnh"], "--kind 'pnnh'")):
        line = cli_error("train", "--resume", a / "last.pt", *flags)
        assert named in line and "drop" in line
    assert _files(a) == before  # nothing written
    # the same values as the run's, and safe options, are accepted; --output forks the run, leaving `a` alone
    forked = pnnh_main("train", "--resume", a / "last.pt", "--lr", "0.1", "--workers", "0", "--device", "cpu",
                       "--output", tmp_path / "b")
    assert forked.returncode == 0, forked.stderr
    assert _files(a) == before
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 2
    line = cli_error("train", "--resume", tmp_path / "b" / "best.safetensors")
    assert "holds weights only" in line and "last.pt" in line
    line = cli_error("train", "--resume", a / "last.pt", "--output", tmp_path / "b")
    assert "already holds a run" in line
    line = cli_error("eval", "--checkpoint", a / "last.pt", "--data", "fashion-mnist", "--batch-size", "0")
    assert "--batch-size must be from 1 to 65,536" in line


def test_compare_refuses_runs_with_other_settings_and_honours_config(tmp_path: Path) -> None:
    out = tmp_path / "r"
    base = ["compare", "--model", "resnet20", "--kinds", "residual", "--seeds", "1", "--data", "fashion-mnist",
            "--train-subset", "32", "--test-subset", "32", "--batch-size", "32", "--workers", "0", "--output", out]
    first = pnnh_main(*base, "--epochs", "1", "--json")
    assert first.returncode == 0, first.stderr
    report = (out / "report.md").read_text(), (out / "results.json").read_text()
    line = cli_error(*base, "--epochs", "1", "--lr", "0.05")
    assert "lr=0.1" in line and "lr=0.05" in line and "--overwrite" in line
    assert ((out / "report.md").read_text(), (out / "results.json").read_text()) == report
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 2\nlr: 0.05\n")
    again = pnnh_main(*base, "--config", config, "--overwrite", "--json")
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["budget"]["epochs"] == 2 and result["budget"]["lr"] == 0.05
    assert len(result["entries"][0]["test_acc"]) == 1
    saved = json.loads((out / "runs" / "resnet20-residual-seed0" / "config.json").read_text())
    assert (saved["epochs"], saved["lr"]) == (2, 0.05)
    # where decoded images are cached does not change a run: a finished run is reused, not trained again
    metrics = (out / "runs" / "resnet20-residual-seed0" / "metrics.jsonl").read_text()
    moved = pnnh_main(*base, "--config", config, "--cache-dir", tmp_path / "elsewhere", "--json")
    assert moved.returncode == 0, moved.stderr
    assert "done, skipped" in moved.stderr
    assert (out / "runs" / "resnet20-residual-seed0" / "metrics.jsonl").read_text() == metrics
    config.write_text("epochs: 2\nlearning_rate: 0.05\n")
    assert "unknown option(s) learning_rate" in cli_error(*base, "--config", config)


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = pnnh_main("train", *TINY, "--epochs", "2", "--lr", "1e12", "--checkpoint-every", "1", "--output", run,
                       "--json")
    assert result.returncode == 3, result.stderr
    assert result.stdout == ""
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: training diverged") and "epoch 1, step" in last and "Traceback" not in result.stderr
    for name in ("last.pt", "best.safetensors"):
        if (run / name).exists():
            state = load_checkpoint(run / name)["model"]
            assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    if (run / "metrics.jsonl").exists():
        for row in (run / "metrics.jsonl").read_text().splitlines():
            json.loads(row, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


@pytest.mark.parametrize("flags,message", [
    (["--lr", "nan"], "--lr must be a finite number"), (["--lr", "inf"], "--lr must be a finite number"),
    (["--momentum", "-0.1"], "--momentum must be in [0, 1)"), (["--weight-decay", "-1"], "--weight-decay must be 0"),
    (["--label-smoothing", "1.5"], "--label-smoothing must be in [0, 1)"), (["--epochs", "2.5"], "invalid int value"),
    (["--amp", "fp16"], "--amp fp16 on a CPU"), (["--image-pipeline", "disk"], "unknown --image-pipeline"),
    (["--warmup-epochs", "5"], "longer than --epochs"), (["--clip-grad", "0"], "--clip-grad must be positive"),
    (["--epo", "2"], "unrecognized arguments: --epo"),
])
def test_every_flag_is_checked(flags: list[str], message: str, tmp_path: Path) -> None:
    assert message in cli_error("train", *TINY, "--epochs", "2", *flags, "--output", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_yaml_values_are_checked_by_type_for_every_command(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("lr: true\n")
    assert "--lr must be a finite number, got True" in cli_error("train", *TINY, "--config", config,
                                                                  "--output", tmp_path / "x")
    config.write_text("epochs: 2.5\n")
    assert "--epochs must be an integer" in cli_error("train", *TINY, "--config", config)
    config.write_text("repeats: 0\n")
    assert "--repeats must be from 1 to 1,000, got 0" in cli_error("bench", "--config", config)
    config.write_text("[1, 2]\n")
    assert "must be a mapping" in cli_error("probe", "--config", config)


def _limited(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_two_processes_writing_one_file_both_succeed(tmp_path: Path) -> None:
    """Two runs started together fill one shared image cache: each write has its own temporary file, so
    neither renames the other's away ("cannot write ...: No such file or directory" before the fix)."""
    target = tmp_path / "cache.npz"
    script = ("import sys, time; from pathlib import Path; from pnnh.io import write_atomic\n"
              "start = float(sys.argv[3]); time.sleep(max(0.0, start - time.time()))\n"
              "while time.time() < start + 1.5: write_atomic(Path(sys.argv[1]), sys.argv[2] * 20000)\n")
    start = str(time.time() + 5)  # both write during the same 1.5 s, whatever their start-up times
    procs = [subprocess.Popen([sys.executable, "-c", script, str(target), tag, start], stderr=subprocess.PIPE,
                              text=True) for tag in ("a", "b")]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert target.read_text() in ("a" * 20000, "b" * 20000)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_write_into_a_folder_removed_mid_write_says_so(tmp_path: Path, monkeypatch) -> None:
    import errno

    def vanished(src, dst):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(dst))
    monkeypatch.setattr("pnnh.io.os.replace", vanished)
    with pytest.raises(pnnh.PnnhError, match="no such file or directory|No such file") as e:
        write_atomic(tmp_path / "metrics.jsonl", "{}")
    assert "check that the folder still exists" in str(e.value) and "writable" not in str(e.value)
    assert not list(tmp_path.glob(".*.tmp"))


def test_remove_leftovers_takes_only_old_temporary_files_of_the_named_targets(tmp_path: Path) -> None:
    write_atomic(tmp_path / "a.npz", b"kept")
    old_a, new_a, old_b = (tmp_path / f".{name}.{tag}.tmp" for name, tag in
                           (("a.npz", "killed"), ("a.npz", "writing"), ("b.json", "killed")))
    for f in (old_a, new_a, old_b, tmp_path / ".hidden"):
        f.write_bytes(b"half")
    for f in (old_a, old_b):
        os.utime(f, (time.time() - 7200,) * 2)
    assert remove_leftovers(tmp_path, "*.npz", older_than_s=3600) == [old_a]
    assert sorted(remove_leftovers(tmp_path)) == sorted([new_a, old_b])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "a.npz"]


def test_full_disk_keeps_the_previous_checkpoint_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert pnnh_main("train", *TINY, "--epochs", "1", "--output", run, "--stop-after-steps", "2").returncode == 130
    before = (run / "last.pt").read_bytes()
    full = subprocess.run([sys.executable, "-m", "pnnh", "train", "--resume", run / "last.pt", "--device", "cpu",
                           "--workers", "0"], capture_output=True, text=True, timeout=300,
                          preexec_fn=_limited(100_000), env={**os.environ})
    assert full.returncode == 2, full.stderr
    last = [line for line in full.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: cannot write") and "file size limit exceeded" in last, full.stderr
    assert "Traceback" not in full.stderr
    assert (run / "last.pt").read_bytes() == before and load_checkpoint(run / "last.pt")["step"] == 2
    assert not list(run.glob(".*.tmp"))


@pytest.fixture
def mounted(tmp_path: Path):
    """mount(options): a small tmpfs under tmp_path (root only; skipped where mount is not allowed)."""
    points = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(points)}"
        point.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                                               capture_output=True).returncode:
            pytest.skip("needs root and mount (as CI has) for a real full or read-only file system")
        points.append(point)
        return point

    yield mount
    for point in points:
        subprocess.run(["umount", str(point)], capture_output=True)


def test_real_full_and_read_only_file_systems(mounted) -> None:
    small = mounted("size=300k")
    line = cli_error("train", *TINY, "--epochs", "1", "--output", small / "run")
    assert line.startswith("error: cannot write") and "no space left on the device" in line
    assert not list((small / "run").glob(".*.tmp"))
    read_only = mounted("ro,size=1m")
    line = cli_error("train", *TINY, "--epochs", "1", "--output", read_only / "run")
    assert "read-only" in line and str(read_only / "run") in line
