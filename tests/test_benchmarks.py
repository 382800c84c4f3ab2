"""The benchmark scripts' own logic, without training: the evidence matrix's commands (a dry run) and
the rank statistics of benchmarks/skip_free.py."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dry_run(*stages: str, jobs: int = 1, **extra: str) -> subprocess.CompletedProcess:
    """benchmarks/evidence.sh with PNNH=echo: the compare commands it would run, printed, nothing trained."""
    env = {**os.environ, "PNNH": "echo", "JOBS": str(jobs), **extra}
    env.pop("SEEDS", None)
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "evidence.sh"), *stages], capture_output=True,
                          text=True, env=env, timeout=60)


def test_near_convergence_stages_carry_their_budget_seeds_and_folders() -> None:
    result = _dry_run("nc_a56", "nc_a56_plain", "nc_quarter", "lr_double")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    a56, plain, quarter, lr = lines
    assert "--recipe cifar-fast --epochs 25" in a56 and "--seeds 0,1,2" in a56
    assert "--output benchmarks/results/evidence_nc/nc_a56" in a56
    assert "--seeds 0 " in plain  # the plain net: one seed
    assert "--epochs 6" in quarter and "--seeds 0,1" in quarter and "evidence_nc_gap/nc_quarter" in quarter
    assert lr.index("--lr 0.2") < lr.index("--lr 0.4") and "--train-subset 20000" in lr  # the later flag wins
    assert "evidence_lr/lr_double" in lr
    dirac = _dry_run("nc_d_skipfree56").stdout  # the best skip-free kind at 20k x 8 enters near convergence
    assert "--recipe cifar-fast --epochs 25" in dirac and "--seeds 0,1,2 --entries resnet56:dirac " in dirac
    assert "--output benchmarks/results/evidence_nc/nc_d_skipfree56" in dirac
    # a CPU's seed joins the GPU's matrix only with its settings, data path included
    joined = _dry_run("nc_a56", OUT_NC="benchmarks/results/gpu_nc_cifar-fast", DATA_DIR="/tmp/lease/data/cifar10-jpeg",
                      PYTHON="true")  # as if bf16 ran on real units here (a GPU)
    assert "--data-dir /tmp/lease/data/cifar10-jpeg" in joined.stdout
    assert joined.stdout.rstrip().endswith("--output benchmarks/results/gpu_nc_cifar-fast/nc_a56")


def test_a_seed_that_would_train_in_float32_is_refused_from_a_bf16_matrix(tmp_path) -> None:
    avx2, bf16 = tmp_path / "avx2", tmp_path / "bf16"  # /proc/cpuinfo of a CPU without and with bf16 units
    avx2.write_text("flags\t\t: fpu sse2 avx avx2 fma\n")
    bf16.write_text("flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16\n")
    no_gpu = {"PYTHON": "false", "OUT_NC": "benchmarks/results/gpu_nc_cifar-fast"}
    refused = _dry_run("nc_a56", CPUINFO=str(avx2), **no_gpu)
    assert refused.returncode == 2 and "this CPU has no bf16 units" in refused.stderr and refused.stdout == ""
    assert _dry_run("nc_a56", CPUINFO=str(bf16), **no_gpu).returncode == 0
    assert _dry_run("nc_a56", CPUINFO=str(avx2), PYTHON="false").returncode == 0  # evidence_nc/: its own budget


def test_skip_free_stages_and_refusals() -> None:
    result = _dry_run("f_skipfree56")
    assert "--entries resnet56:tat,resnet56:looks_linear,resnet56:dirac,resnet56:repvgg" in result.stdout
    assert "--output benchmarks/results/evidence/f_skipfree56" in result.stdout  # the 20k x 8 budget's folder
    bad = _dry_run("nc_bogus")
    assert bad.returncode == 2 and "unknown stage nc_bogus" in bad.stderr and bad.stdout == ""


def test_two_workers_queue_every_seed_of_a_stage_once() -> None:
    result = _dry_run("nc_c_thin56", jobs=2)
    assert result.returncode == 0, result.stderr
    runs = sorted(line.split("--seed ")[1].split()[0] + " " + line.split("--entries ")[1].split()[0]
                  for line in result.stdout.splitlines() if "--no-report" in line)
    assert runs == ["0 resnet56:pnnh:learner_ratio=0.5", "0 resnet56:residual:learner_ratio=0.5",
                    "1 resnet56:pnnh:learner_ratio=0.5", "1 resnet56:residual:learner_ratio=0.5"]


@pytest.fixture(scope="module")
def skip_free():
    return _benchmark("skip_free")


def _benchmark(name: str):
    """benchmarks/<name>.py as a module (its own imports of the other benchmark scripts resolved)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_spearman_and_its_bootstrap(skip_free) -> None:
    assert skip_free.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert skip_free.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert skip_free.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)  # tied ranks
    x = list(range(12))
    low, high = skip_free.bootstrap(x, [v + (3 if v % 4 == 0 else 0) for v in x], n=2000)
    assert 0.5 < low <= high <= 1.0


def _finished(folder: Path, stage: str, label: tuple[str, str], seed: int, acc: float, device: str) -> None:
    run = folder / stage / "runs" / f"{label[0]}-{label[1]}-seed{seed}"
    run.mkdir(parents=True)
    run.joinpath("config.json").write_text(json.dumps({"model": label[0], "kind": label[1], "model_kwargs": {},
                                                       "seed": seed, "epochs": 1, "device": device}))
    run.joinpath("metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": acc}) + "\n")


def test_skip_free_takes_each_entrys_seeds_from_one_device(skip_free, tmp_path, monkeypatch) -> None:
    """Never a mean over two devices: the device with more finished seeds (the CPUs' on a tie), named."""
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    _finished(cpu, "f_skipfree56", ("resnet56", "dirac"), 0, 0.62, "cpu")
    for seed, acc in enumerate((0.61, 0.63)):
        _finished(gpu, "f_skipfree56", ("resnet56", "dirac"), seed, acc, "cuda")
    for seed, acc in enumerate((0.76, 0.77)):
        _finished(cpu, "a_depth56", ("resnet56", "residual"), seed, acc, "cpu")
        _finished(gpu, "control56", ("resnet56", "residual"), seed, acc - 0.01, "cuda")
    monkeypatch.setattr(skip_free, "EVIDENCE", cpu)
    monkeypatch.setattr(skip_free, "GPU_EVIDENCE", gpu)
    acc = skip_free.accuracies()
    assert acc["resnet56:dirac"]["device"] == "gpu" and acc["resnet56:dirac"]["values"] == pytest.approx([61, 63])
    # the control stage is not an entry of the GPU's table: the residual net's seeds are the CPUs'
    assert acc["resnet56:residual"]["device"] == "cpu" and acc["resnet56:residual"]["mean"] == pytest.approx(76.5)
    control = skip_free.device_control()
    assert control["gpu"]["mean"] - control["cpu"]["mean"] == pytest.approx(-1.0)


def test_time_to_accuracy_takes_the_near_convergence_matrixs_cpu_runs_of_its_recipe(tmp_path, monkeypatch) -> None:
    """The curve of a recipe at its length reads its own runs and the near-convergence matrix's runs of the
    same recipe and length that ran on a CPU; not a GPU's, not another length's."""
    tta = _benchmark("time_to_accuracy")
    cpu, gpu = "AMD EPYC, 2 torch threads", "NVIDIA H200"

    def run(folder: Path, kind: str, seed: int, epochs: int, where: str, acc: float, amp: str = "bf16") -> None:
        folder.mkdir(parents=True)
        folder.joinpath("config.json").write_text(json.dumps({"model": "resnet56", "kind": kind, "model_kwargs": {},
                                                              "seed": seed, "epochs": epochs, "recipe": "r",
                                                              "amp": amp}))
        folder.joinpath("metrics.jsonl").write_text("".join(json.dumps(
            {"epoch": e + 1, "test_acc": acc, "test_acc_flip": acc + 0.01, "img_per_s": 100.0, "seconds": 60.0,
             "hardware": where}) + "\n" for e in range(epochs)))
    run(tmp_path / "tta" / "r-2ep" / "runs" / "a", "residual", 0, 2, cpu, 0.88)
    run(tmp_path / "nc" / "nc_a56" / "runs" / "b", "plain", 2, 2, cpu, 0.80)
    run(tmp_path / "nc" / "nc_a56" / "runs" / "c", "plain", 0, 2, gpu, 0.70)  # a GPU's: not this machine's curve
    run(tmp_path / "nc" / "nc_half" / "runs" / "d", "plain", 1, 1, cpu, 0.60)  # another length
    run(tmp_path / "tta" / "r-2ep" / "runs" / "e", "residual", 1, 2, cpu, 0.84, amp="none")  # a CPU without bf16
    monkeypatch.setattr(tta, "OUT", tmp_path / "tta")
    monkeypatch.setattr(tta, "NEAR", tmp_path / "nc")
    monkeypatch.setattr(tta, "AIRBENCH", tmp_path / "tta" / "airbench93.json")  # none here
    runs = tta.curves("r-2ep")
    assert sorted(runs) == ["resnet56:plain seed 2 (nc_a56, near-convergence matrix)",
                            "resnet56:residual (float32) seed 1", "resnet56:residual seed 0"]
    plain = runs["resnet56:plain seed 2 (nc_a56, near-convergence matrix)"]
    assert [p["minutes"] for p in plain["points"]] == [1.0, 2.0] and plain["hardware"] == [cpu]
    summary = tta.seed_summary(runs)
    assert "| resnet56:plain | 1 | 80.00% | 81.00% | 2.0 |" in summary
    # float32 and bf16 seeds of one entry are never averaged together
    assert {"| resnet56:residual | 1 | 88.00% | 89.00% | 2.0 |",
            "| resnet56:residual (float32) | 1 | 84.00% | 85.00% | 2.0 |"} <= set(summary)


def test_an_ablation_is_set_against_the_recipes_run_and_must_change_one_thing(tmp_path, monkeypatch) -> None:
    tta = _benchmark("time_to_accuracy")

    def run(folder: Path, acc: float, **changes) -> None:
        folder.mkdir(parents=True)
        folder.joinpath("config.json").write_text(json.dumps(
            {"model": "resnet56", "kind": "residual", "model_kwargs": {}, "seed": 0, "epochs": 1, "recipe": "r",
             "label_smoothing": 0.1, "output": str(folder), **changes}))
        folder.joinpath("metrics.jsonl").write_text(json.dumps(
            {"epoch": 1, "test_acc": acc, "test_acc_flip": acc + 0.01, "seconds": 120.0}) + "\n")
    run(tmp_path / "r-1ep" / "runs" / "resnet56-residual-seed0", 0.85)
    run(tmp_path / "ablation-ls0" / "runs" / "resnet56-residual-seed0", 0.86, label_smoothing=0.0)
    run(tmp_path / "ablation-ls0" / "runs" / "resnet56-residual-seed1", 0.90, label_smoothing=0.0, seed=1)  # no base
    monkeypatch.setattr(tta, "OUT", tmp_path)
    monkeypatch.setattr(tta, "ROOT", tmp_path)
    (row,) = tta.ablations("r")
    assert row["ablation"] == "ls0" and row["difference"] == pytest.approx(0.01)
    assert row["difference_flip"] == pytest.approx(0.01) and row["minutes"] == row["recipe_minutes"] == 2.0
    assert "| float32 | 85.00% | 86.00% | +1.00 |" in tta.ablation_table([row])[2]  # the precision it trained at
    run(tmp_path / "ablation-no-nesterov" / "runs" / "resnet56-residual-seed0", 0.84, nesterov=False, lr=0.4)
    with pytest.raises(SystemExit, match="differs from the recipe's run in lr, nesterov.*not one change"):
        tta.ablations("r")


def test_an_ablation_trains_its_recipe_run_first_and_refuses_one_of_another_precision(tmp_path, monkeypatch) -> None:
    tta = _benchmark("time_to_accuracy")
    trained = []
    monkeypatch.setattr(tta, "OUT", tmp_path)
    monkeypatch.setattr(tta, "ROOT", tmp_path)
    monkeypatch.setattr(tta, "train_entry", lambda *args: trained.append(args))
    monkeypatch.setattr(tta, "recipe_options", lambda name: {"amp": "none"})  # a CPU without bf16 units
    tta.ablation_base("resnet56:residual", "cifar-fast", 0, 1)  # no recipe run yet: trained first
    assert trained == [("resnet56:residual", "cifar-fast", 0, 1)]
    base = tmp_path / "cifar-fast-1ep" / "runs" / "resnet56-residual-seed0"
    base.mkdir(parents=True)
    base.joinpath("config.json").write_text(json.dumps({"model": "resnet56", "kind": "residual", "epochs": 1,
                                                        "recipe": "cifar-fast", "amp": "bf16"}))
    base.joinpath("metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": 0.85, "hardware": "X"}) + "\n")
    with pytest.raises(SystemExit, match="trained with amp bf16 .X., but this machine runs recipe cifar-fast "
                                         "with amp none"):
        tta.ablation_base("resnet56:residual", "cifar-fast", 0, 1)
    assert len(trained) == 1  # refused before any training


def test_nc_gap_device_control_compares_the_residual_net_across_devices(tmp_path, monkeypatch) -> None:
    nc_gap = _benchmark("nc_gap")
    for seed, (on_cpu, on_gpu) in enumerate(((0.88, 0.87), (0.89, 0.88), (0.90, 0.89))):
        _finished(tmp_path / "cpu", "cifar-fast-25ep", ("resnet56", "residual"), seed, on_cpu, "auto")
        _finished(tmp_path / "gpu", "nc_a56", ("resnet56", "residual"), seed, on_gpu, "cuda")
    monkeypatch.setattr(nc_gap, "CPU_RUNS", tmp_path / "cpu")
    monkeypatch.setattr(nc_gap, "NEAR", tmp_path / "gpu")
    control = nc_gap.device_control()
    assert control["gap"] == pytest.approx(1.0) and control["se"] == pytest.approx((2 * 1.0 ** 2 / 3) ** 0.5)
    assert control["cpu"]["n"] == control["gpu"]["n"] == 3 and control["cpu"]["hardware"] == {"auto": 3}
    monkeypatch.setattr(nc_gap, "NEAR", tmp_path / "none")
    assert nc_gap.device_control() is None  # nothing to compare yet


def _gpu_dry_run(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DRY_RUN": "1", **env})


def test_gpu_script_carries_the_near_convergence_matrix_at_the_he_schedule() -> None:
    result = _gpu_dry_run(MATRIX="nc", RECIPE="he")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    runs = [line for line in lines if line.endswith("--no-report")]
    reports = [line for line in lines if not line.endswith("--no-report")]
    assert len(runs) == 9 + 1 + 4 + 1 + 4 + 4 + 4 + 1 + 3  # the seeds per entry, and dirac's 3
    assert all("--lr 0.1 --sched step --weight-decay 1e-4" in line and "--device cuda" in line for line in lines)
    assert sum("--epochs 164" in line for line in runs) == 23
    assert sum("--epochs 41 " in line for line in runs) == sum("--epochs 82 " in line for line in runs) == 4
    # one closing report per stage, over exactly the seeds its runs trained (so it trains nothing)
    assert len(reports) == 9
    assert any("--seeds 0,1,2 --entries resnet56:dirac --output benchmarks/results/gpu_nc_he/nc_d_skipfree56" in r
               for r in reports)
    assert any("--seeds 0,1,2 --entries resnet56:residual,resnet56:pnnh:code_ratio=0.5," in r for r in reports)
    assert any("--seeds 0 --entries resnet56:plain --output benchmarks/results/gpu_nc_he/nc_a56_plain" in r
               for r in reports)
    bad = _gpu_dry_run(MATRIX="nc", RECIPE="slow")
    assert bad.returncode == 2 and "RECIPE is he, fast, cifar-fast or evidence" in bad.stderr


def test_gpu_script_runs_the_cpu_recipe_with_a_doubled_budget() -> None:
    result = _gpu_dry_run(MATRIX="nc", RECIPE="cifar-fast")
    assert result.returncode == 0, result.stderr
    runs = [line for line in result.stdout.splitlines() if line.endswith("--no-report")]
    assert all(line.startswith("pnnh compare --recipe cifar-fast ") for line in runs)
    assert sum("--epochs 25 " in line for line in runs) == 23 and sum("--epochs 50 " in line for line in runs) == 4
    assert runs[0].endswith("--entries resnet56:residual --output benchmarks/results/gpu_nc_cifar-fast/nc_a56 "
                            "--no-report")


def test_gpu_script_runs_the_skip_free_kinds_at_the_cpus_budget() -> None:
    """MATRIX=skipfree: evidence.sh's f_skipfree56 and g_skipfree110 (3 seeds) and a residual control, at the
    20k x 8 budget in float32 (no autocast: the CPUs' runs are float32), so the GPU's runs sit beside theirs."""
    result = _gpu_dry_run(MATRIX="skipfree")
    assert result.returncode == 0, result.stderr
    runs = [line for line in result.stdout.splitlines() if line.endswith("--no-report")]
    assert len(runs) == 4 * 2 * 3 + 2
    budget = ("--train-subset 20000 --batch-size 128 --opt sgd --lr 0.2 --sched onecycle --label-smoothing 0.1 "
              "--weight-decay 5e-4 ")
    assert all(line.startswith("pnnh compare " + budget) and " --epochs 8 " in line and "--amp" not in line
               for line in result.stdout.splitlines())
    evidence = (ROOT / "benchmarks" / "evidence.sh").read_text()
    for value in ("--train-subset 20000", "--epochs 8 --batch-size 128 --opt sgd --lr 0.2 --sched onecycle "
                  "--label-smoothing 0.1", "--weight-decay 5e-4 --workers 0 --channels-last"):
        assert value in " ".join(evidence.split())  # the same budget as the CPUs' evidence.sh
    assert sum("--entries resnet110:" in line for line in runs) == 12
    assert sum("--entries resnet56:residual --output benchmarks/results/gpu_skipfree_evidence/control56" in line
               for line in runs) == 2
    bad = _gpu_dry_run(MATRIX="skipfree", RECIPE="he")
    assert bad.returncode == 2 and "RECIPE=evidence" in bad.stderr


def _gpu_with_fake_pnnh(tmp_path, body: str, deadline: int, **env: str) -> subprocess.CompletedProcess:
    """gpu.sh (MATRIX=kinds: 3 runs, 2 at a time) with a bash script of ``body`` standing in for pnnh."""
    fake = tmp_path / "pnnh"
    fake.write_text("#!/usr/bin/env bash\n" + body)
    fake.chmod(0o755)
    (tmp_path / "data" / "train").mkdir(parents=True, exist_ok=True)
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PNNH": str(fake), "DEVICE": "cpu", "CONCURRENT": "2",
                               "DEADLINE": str(deadline), "DATA_DIR": str(tmp_path / "data"),
                               "OUT": str(tmp_path / "out"), **env})


def test_gpu_script_starts_only_what_ends_before_its_deadline(tmp_path) -> None:
    """Two runs of 2 s set the pace; the third would end after DEADLINE=3, so it is not started, and the
    script says so and exits 3 without the closing reports (which would train the missing run)."""
    result = _gpu_with_fake_pnnh(tmp_path, 'echo "$*" >> "$(dirname "$0")/calls"\nsleep 2\n', deadline=3)
    assert result.returncode == 3, result.stderr
    assert "1 runs not started (kinds resnet56:pnnh seed 0;)" in result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 2 and all(c.endswith("--no-report") for c in calls)


def test_gpu_script_takes_its_pace_from_the_last_lease_before_a_run_finishes(tmp_path) -> None:
    """PACE=100000 us per epoch x depth: a 30-epoch resnet56 run costs 168 s, more than DEADLINE=5, so none is
    started (without PACE the first runs start blind, and a lease stopped one at epoch 24 of 25)."""
    result = _gpu_with_fake_pnnh(tmp_path, 'echo "$*" >> "$(dirname "$0")/calls"\n', deadline=5, PACE="100000")
    assert result.returncode == 3, result.stderr
    assert "3 runs not started" in result.stderr and not (tmp_path / "calls").exists()
    bad = _gpu_with_fake_pnnh(tmp_path, "", deadline=5, PACE="fast")
    assert bad.returncode == 2 and "PACE is microseconds" in bad.stderr


def test_gpu_script_stops_the_runs_in_flight_at_its_deadline(tmp_path) -> None:
    """At DEADLINE the runs themselves get SIGTERM (pnnh then writes last.pt and exits), not only their shells.
    (DEADLINE=2: whole seconds on the clock, so at least 1 s, time for the fake to set its trap.)"""
    result = _gpu_with_fake_pnnh(tmp_path, "trap 'echo stopped >> \"$(dirname \"$0\")/calls\"; exit 3' TERM\n"
                                           "sleep 20 & wait\n", deadline=2)
    assert result.returncode == 3, result.stderr
    assert "the deadline; stopping 2 runs" in result.stderr
    assert (tmp_path / "calls").read_text().splitlines() == ["stopped", "stopped"]
