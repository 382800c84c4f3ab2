"""`pnnh bench` and `pnnh compare` on tiny settings: the files, the numbers in them, and resuming."""
from __future__ import annotations

import json
import logging
import re
import statistics
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import pnnh
from pnnh.compare import compare
from pnnh.config import TrainConfig
from pnnh.device import hardware
from pnnh.entries import parse_entries
from pnnh.profile import count_params
from pnnh.train import TrainingInterrupted

from conftest import assert_one_line_error, pnnh_main, run_cli


def test_parse_entries() -> None:
    entries = parse_entries("resnet56:pnnh:learner_ratio=0.5,code_ratio=0.25,resnet56:residual")
    assert [(e.model, e.kind, e.kwargs) for e in entries] == [
        ("resnet56", "pnnh", {"learner_ratio": 0.5, "code_ratio": 0.25}), ("resnet56", "residual", {})]
    assert entries[0].variant == "code_ratio=0.25,learner_ratio=0.5" and entries[1].variant == "default"
    with pytest.raises(pnnh.PnnhError, match="unknown kind 'skip'"):
        parse_entries("resnet56:skip")
    with pytest.raises(pnnh.PnnhError, match="not model:kind"):
        parse_entries("resnet56")
    # --model-kwargs takes the same comma form as --entries, or one option per word
    from pnnh.entries import parse_kwargs
    assert parse_kwargs(["coder=learned,coder_share=stage", "code_ratio=0.25"]) == \
        {"coder": "learned", "coder_share": "stage", "code_ratio": 0.25}


def test_bench_json_ratios_are_computed_from_the_measurements() -> None:
    result = run_cli("bench", "--entries", "resnet20:residual,resnet20:pnnh:learner_ratio=0.5", "--repeats", "2",
                     "--steps", "1", "--warmup", "1", "--batch-size", "8", "--input-size", "32", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["device"] == "cpu" and out["torch"]
    assert out["hardware"] == hardware(torch.device("cpu"))  # named as a training's metrics rows name it
    first, second = out["entries"]
    assert (first["kind"], second["kind"], second["variant"]) == ("residual", "pnnh", "learner_ratio=0.5")
    assert first["ratio_train"] == 1.0 and first["ratio_infer"] == 1.0
    assert second["ratio_train"] == pytest.approx(second["train_img_s"] / first["train_img_s"])
    assert second["ratio_infer"] == pytest.approx(second["infer_img_s"] / first["infer_img_s"])
    assert first["params"] == count_params(pnnh.create_model("resnet20", num_classes=10))
    assert 0.45 < second["params"] / first["params"] < 0.55 and second["macs"] < first["macs"]
    for e in out["entries"]:
        assert e["train_img_s"] > 0 and e["infer_img_s"] > e["train_img_s"] and e["peak_mem_mb"] > 0
        lo, hi = e["train_img_s_range"]
        assert lo <= e["train_img_s"] <= hi
    assert_one_line_error(run_cli("bench", "--entries", "resnet21:residual"), "unknown model 'resnet21'")
    # the flag's old name is refused, naming the new one
    assert_one_line_error(run_cli("bench", "--models", "resnet20:residual"), "--models was removed: name the "
                          "entries with --entries")


BASE = TrainConfig(data="fashion-mnist", train_subset=64, test_subset=32, epochs=2, batch_size=32, workers=0)


def test_compare_report_and_resume(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="pnnh")
    entries = parse_entries("resnet20:residual,resnet20:pnnh:learner_ratio=0.5")
    out = tmp_path / "report"
    # interrupted in the first run's second epoch (2 steps per epoch)
    with pytest.raises(TrainingInterrupted):
        compare(entries, replace(BASE, stop_after_steps=3), [0, 1], out, "pnnh compare (test)")
    caplog.clear()
    results = compare(entries, BASE, [0, 1], out, "pnnh compare (test)")
    assert "[1/4] resnet20:residual seed 0: resuming" in caplog.text
    assert "[2/4] resnet20:residual seed 1: training" in caplog.text
    caplog.clear()
    again = compare(entries, BASE, [0, 1], out, "pnnh compare (test)")
    assert caplog.text.count("done, skipped") == 4
    assert again["entries"] == results["entries"]

    # the numbers are those of the runs' own metrics
    for row in results["entries"]:
        slug = row["label"].replace(":", "-").replace(",", "-").replace("=", "")
        finals = [json.loads((out / "runs" / f"{slug}-seed{s}" / "metrics.jsonl").read_text().splitlines()[-1])
                  for s in (0, 1)]
        assert row["test_acc"] == [f["test_acc"] for f in finals]
        assert row["test_acc_mean"] == pytest.approx(statistics.fmean(f["test_acc"] for f in finals))
        assert row["test_acc_std"] == pytest.approx(statistics.stdev(f["test_acc"] for f in finals))
    residual, half = results["entries"]
    assert half["ratio_train_img_s"] == pytest.approx(half["train_img_s"] / residual["train_img_s"])
    assert half["ratio_params"] == pytest.approx(half["params"] / residual["params"]) and half["ratio_params"] < 0.6

    saved = json.loads((out / "results.json").read_text())
    assert saved["entries"] == results["entries"] and saved["data"] == "Fashion-MNIST"
    assert saved["budget"]["epochs"] == 2 and saved["command"] == "pnnh compare (test)"
    report = (out / "report.md").read_text()
    for row in saved["entries"]:
        line = next(l for l in report.splitlines() if l.startswith(f"| {row['label']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == f"{100 * row['test_acc_mean']:.2f} ± {100 * row['test_acc_std']:.2f}%"
        assert cells[6] == f"{row['ratio_train_img_s']:.2f}"
    assert "pnnh compare (test)" in report and re.search(r"torch \d", report)
    # where the epochs ran: each epoch's row records it, and the report counts them (8 = 2 entries x 2 seeds x 2)
    here = hardware(torch.device("cpu"))
    assert saved["trained_on"] == {here: 8} and residual["trained_on"] == {here: 4}
    assert f"The epochs were trained on: {here} (8 epochs)." in report
    assert (out / "curves.png").stat().st_size > 1000 and (out / "accuracy_params_throughput.png").exists()
    # the probe of each entry's trained seed-0 weights
    probes = json.loads((out / "probe_end.json").read_text())
    assert [p["label"] for p in probes] == [r["label"] for r in saved["entries"]]
    assert len(probes[0]["layers"]) == 19 and all(-1 <= row["cka"] <= 1 for row in probes[0]["layers"])
    assert "The probe at the end of training" in report and (out / "probe_end_cka.png").exists()
    probe_section = report.split("The probe at the end of training")[1]
    row = next(l for l in probe_section.splitlines() if l.startswith(f"| {probes[0]['label']} |"))
    spreads = [float(v) for v in row.strip("|").split("|")[-1].split("/")]  # first / middle / last layer
    assert len(spreads) == 3 and all(0 < v < 1 for v in spreads) and (out / "probe_end_spread.png").exists()
    # a fresh clone of a benchmark holds the runs' small files only (no checkpoints): still done
    for f in [*out.rglob("*.pt"), *out.rglob("*.safetensors")]:
        f.unlink()
    caplog.clear()
    small = compare(entries, BASE, [0, 1], out, "pnnh compare (test)")
    assert caplog.text.count("done, skipped") == 4 and "no probe of the trained models" in caplog.text
    assert small["entries"] == results["entries"]
    # the earlier compare's probe is gone with it: the folder holds only what this report says
    assert not (out / "probe_end.json").exists() and not list(out.glob("probe_end_*.png"))
    assert "The probe at the end of training" not in (out / "report.md").read_text()
    # report=False (a matrix worker's one run): the runs only, the folder's report left as it was
    report, saved = (out / "report.md").read_text(), (out / "results.json").read_text()
    one = compare(entries[1:], BASE, [1], out, "pnnh compare (one run)", report=False)
    assert [row["label"] for row in one["entries"]] == ["resnet20:pnnh:learner_ratio=0.5"]
    assert (out / "report.md").read_text() == report and (out / "results.json").read_text() == saved


def test_a_diverged_run_is_recorded_reported_and_not_trained_again(tmp_path: Path) -> None:
    out = tmp_path / "r"
    args = ["compare", "--model", "resnet20", "--kinds", "residual,plain", "--data", "fashion-mnist",
            "--train-subset", "64", "--test-subset", "32", "--epochs", "1", "--batch-size", "32", "--seeds", "1",
            "--workers", "0", "--lr", "1e12", "--output", out, "--json"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr  # the comparison goes on and writes its report
    results = json.loads(first.stdout)
    for row in results["entries"]:
        assert row["test_acc"] == [None] and row["test_acc_mean"] is None and list(row["diverged"]) == ["0"]
        record = json.loads((out / "runs" / f"resnet20-{row['kind']}-seed0" / "diverged.json").read_text())
        assert (record["epoch"], record["steps_per_epoch"]) == (1, 2) and record["step"] in (1, 2)
        assert row["diverged"]["0"] == record["where"] == f"epoch 1, step {record['step']} of 2"
    assert "warning: 2 run(s) diverged (resnet20:residual seed 0, resnet20:plain seed 0)" in first.stderr
    assert "Traceback" not in first.stderr
    report = (out / "report.md").read_text()
    assert "| resnet20:residual | 0.272M | every seed diverged |" in report
    assert "- resnet20:plain: diverged (seed 0, epoch 1, step" in report
    again = run_cli(*args)
    assert again.returncode == 0 and again.stderr.count("diverged before, skipped") == 2, again.stderr
    assert json.loads(again.stdout)["entries"] == results["entries"]


def test_means_leave_out_a_diverged_seed_and_the_report_says_so(tmp_path: Path) -> None:
    """summarise and write_report on one finished and one diverged seed of one entry."""
    from pnnh.compare import summarise, write_report
    from pnnh.entries import Entry

    def epoch(i: int, acc: float) -> dict:
        return {"epoch": i, "test_acc": acc, "train_acc": acc, "train_loss": 1.0, "img_per_s": 100.0,
                "seconds": 10.0, "hardware": "cpu"}
    entry = Entry("resnet20", "pnnh", {"coder": "learned"})
    runs = {(entry.label, 0): {"history": [epoch(1, 0.4), epoch(2, 0.6)], "params": 1000, "diverged": None},
            (entry.label, 1): {"history": [], "params": 1000, "diverged": {"where": "epoch 1, step 21 of 156"}}}
    results = summarise([entry], [0, 1], runs, BASE, "pnnh compare (test)")
    row = results["entries"][0]
    assert row["test_acc"] == [0.6, None] and row["test_acc_mean"] == 0.6 and row["test_acc_std"] == 0.0
    assert row["diverged"] == {"1": "epoch 1, step 21 of 156"} and row["train_seconds"] == 20.0
    write_report(tmp_path, results, runs)
    report = (tmp_path / "report.md").read_text()
    assert "| 60.00% (1 of 2 seeds; 1 diverged) |" in report  # one finished seed: no spread to show
    assert f"- {entry.label}: 60.00%, diverged (seed 1, epoch 1, step 21 of 156)" in report


def test_compare_cli_variants(tmp_path: Path) -> None:
    result = run_cli("compare", "--entries", "resnet20:residual,resnet20:pnnh:learner_ratio=0.5",
                     "--data", "fashion-mnist", "--train-subset", "32", "--test-subset", "32", "--epochs", "2",
                     "--eval-every", "3", "--batch-size", "32", "--seeds", "1", "--workers", "0",
                     "--output", tmp_path / "r", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert [(e["kind"], e["variant"]) for e in out["entries"]] == [("residual", "default"),
                                                                   ("pnnh", "learner_ratio=0.5")]
    # --eval-every 3 of 2 epochs: only the last is tested; best and final are that one test
    metrics = pnnh.train.read_metrics(tmp_path / "r" / "runs" / "resnet20-residual-seed0")
    assert [row["test_acc"] is None for row in metrics] == [True, False]
    assert all(e["best_acc_mean"] == e["test_acc_mean"] for e in out["entries"])
    assert (tmp_path / "r" / "curves.png").exists()
    assert out["command"].startswith("pnnh compare --entries resnet20:residual,resnet20:pnnh:learner_ratio=0.5")
    (tmp_path / "r" / "report.md").unlink()
    again = pnnh_main("compare", "--model", "resnet20", "--kinds", "residual", "--data", "fashion-mnist",
                      "--train-subset", "32", "--test-subset", "32", "--epochs", "2", "--eval-every", "3",
                      "--batch-size", "32", "--seeds", "1", "--workers", "0", "--output", tmp_path / "r", "--no-report")
    assert again.returncode == 0 and "(no report)" in again.stderr and not (tmp_path / "r" / "report.md").exists()
    assert_one_line_error(pnnh_main("compare", "--model", "resnet20", "--kinds", "residual,skip"), "unknown kind")
    # one route for a model option: the pnnh-only flags are gone, --entries names each entry's options
    for flag in ("--pnnh-learner-ratio", "--pnnh-kwargs"):
        assert_one_line_error(pnnh_main("compare", "--model", "resnet20", flag, "0.5"), f"{flag} was removed")
    assert_one_line_error(pnnh_main("compare", "--entries", "resnet20:residual", "--model-kwargs", "learner_ratio=0.5"),
                          "--entries names each model, kind and option")


def test_bench_plain_form_entries_are_inference_only() -> None:
    from pnnh.bench import bench

    entries = parse_entries("resnet20:pnnh,resnet20:pnnh:plain_form,resnet20:plain:learner_ratio=0.5:plain_form")
    assert [e.label for e in entries] == ["resnet20:pnnh", "resnet20:pnnh:plain_form",
                                          "resnet20:plain:learner_ratio=0.5:plain_form"]
    out = bench(entries, batch_size=4, repeats=1, steps=1, warmup=1)
    pnnh_row, plain_form, thin = out["entries"]
    assert pnnh_row["train_img_s"] > 0 and plain_form["train_img_s"] is None and plain_form["ratio_train"] is None
    assert plain_form["infer_img_s"] > 0 and plain_form["ratio_infer"] == pytest.approx(
        plain_form["infer_img_s"] / pnnh_row["infer_img_s"])
    # the plain chain carries the code as 2K extra channels: more parameters than the pnnh model
    assert plain_form["params"] > pnnh_row["params"] and plain_form["plain_form"]
    with pytest.raises(pnnh.PnnhError, match="no plain form"):
        parse_entries("resnet20:residual:plain_form")


def test_progress_bars_go_to_a_terminal_stderr_never_into_json_stdout() -> None:
    import fcntl
    import os
    import struct
    import subprocess
    import sys
    import termios
    import threading

    master, slave = os.openpty()  # stderr is a terminal (bars on), stdout a pipe (JSON only)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal 120 columns wide
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.Popen([sys.executable, "-m", "pnnh", "bench", "--entries", "resnet20:residual", "--repeats", "2",
                             "--steps", "1", "--warmup", "1", "--batch-size", "4", "--json"],
                            stdout=subprocess.PIPE, stderr=slave, text=True)
    out, _ = proc.communicate(timeout=300)
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    err = b"".join(chunks)
    assert proc.returncode == 0
    assert json.loads(out)["entries"][0]["kind"] == "residual"  # stdout: the JSON and nothing else
    # the bars went to the terminal (both are drawn; how much of a short-lived bar a pty keeps varies)
    assert b"%|" in err and (b"bench warm-up" in err or b"bench rounds" in err), err[-500:]
