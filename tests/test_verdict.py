"""The rules that decide the paper's claims (benchmarks/verdict.py): the contrasts and the refusal to mix budgets."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("verdict", ROOT / "benchmarks" / "verdict.py")
verdict = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(verdict)


def test_contrast_rules() -> None:
    s = verdict.stats
    residual = s([80.0, 80.4, 79.6])
    assert verdict.contrast(s([79.9, 80.3, 80.1]), residual, "on par")["verdict"] == "holds"
    behind = s([70.0, 70.5, 69.5])
    assert verdict.contrast(behind, residual, "on par")["verdict"] == "does not hold"
    assert verdict.contrast(behind, residual, "behind")["verdict"] == "holds"
    assert verdict.contrast(residual, residual, "behind")["verdict"] == "does not hold"
    # 1.5 points down with a wide spread: neither excluded
    wide = s([76.5, 80.5, 78.5])
    assert verdict.contrast(wide, residual, "on par")["verdict"] == "undecided"
    # the ViT issue's test, abs(d) <= max(1, 2 se): the wide pair (d = -1.5, 2 se = 2.4) passes it, though
    # the on-par rule leaves it undecided; 10 points behind fails it; too few seeds give no answer
    assert verdict.within(verdict.contrast(wide, residual, "on par")) == "passes"
    assert verdict.within(verdict.contrast(behind, residual, "on par")) == "fails"
    assert verdict.within(verdict.contrast(s([80.0, 80.1]), residual, "on par")) == "–"
    # the parameter claim: the thin residual net is the control, and with the default coder the thin pnnh
    # net computes its function, so PNNH on par while the thin residual net is not is noise, not a "holds"
    pv = verdict.parameter_verdict
    assert pv({"verdict": "holds"}, {"verdict": "holds"})[0] == "not PNNH's"
    assert pv({"verdict": "holds"}, {"verdict": "does not hold"})[0] == "undecided"
    assert pv({"verdict": "does not hold"}, {"verdict": "holds"})[0] == "does not hold"
    # the A/A pairs check the rule itself: a pair beyond its own 2 SE is said to be so
    line = verdict.calibration_line({"resnet56:pnnh": s([76.2, 75.7, 75.4]), "resnet56:residual": s([76.4, 76.2, 75.9]),
                                     "resnet56:pnnh:learner_ratio=0.5": s([74.3, 74.7, 74.2]),
                                     "resnet56:residual:learner_ratio=0.5": s([73.8, 73.8, 73.3])})
    assert "resnet56:pnnh - residual -0.40" in line and "(within 2 SE)" in line
    assert "(beyond 2 SE)" in line and "understates the noise" in line
    assert "none finished" in verdict.calibration_line({})
    # fewer seeds than needed decide nothing, however clear the gap
    two = verdict.contrast(s([50.0, 50.1]), residual, "behind")
    assert two["verdict"] == "undecided" and "2 of 3 seeds" in two["why"]
    assert verdict.fmt_c(two) == "-29.95 (2 of 3 seeds)"  # a difference on too few seeds says so
    assert verdict.contrast(None, residual, "on par")["why"] == "runs missing (not run)"
    d = verdict.contrast(behind, residual, "on par")
    assert d["diff"] == pytest.approx(-10.0) and not d["marginal"]
    # a verdict the wider t interval would not reach is marked: d = -1.69, 2 SE = 0.67 clears the margin by
    # 0.02; the Welch t interval (df 3.9, t 2.79) does not
    near = verdict.contrast(s([45.59, 46.26, 45.62]), s([47.21, 47.31, 48.01]), "on par")
    assert near["verdict"] == "does not hold" and near["marginal"] and "Welch t interval (df 3.9" in near["why"]
    assert verdict.worst(near, verdict.contrast(None, residual, "on par")) == "does not hold (marginal)"
    assert verdict.worst(near, d) == "does not hold"  # a clear failure beside it decides without the mark
    on_par = verdict.contrast(residual, residual, "on par")
    assert verdict.worst(on_par, {**on_par, "marginal": True}) == "holds (marginal)"  # all must hold: any marks it
    assert verdict.t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-3)
    assert verdict.t_quantile(0.975, 2) == pytest.approx(4.3027, abs=1e-3)
    assert d["se"] == pytest.approx((0.5 ** 2 / 3 + 0.4 ** 2 / 3) ** 0.5)  # stdevs 0.5 and 0.4, 3 seeds each


def _run(folder: Path, name: str, epochs_done: int, **cfg) -> None:
    run = folder / "stage" / "runs" / name
    run.mkdir(parents=True)
    config = {"model": "resnet56", "kind": "residual", "model_kwargs": {}, "seed": 0, "epochs": 2, "lr": 0.1,
              "device": "cpu", "output": str(run), **cfg}
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e + 1, "test_acc": 0.5 + 0.1 * e}) + "\n"
                                               for e in range(epochs_done)))


def test_finished_runs_groups_seeds_and_refuses_mixed_budgets(tmp_path: Path) -> None:
    _run(tmp_path, "a0", 2)
    _run(tmp_path, "a1", 2, seed=1, device="cuda", eval_every=1)  # where it ran is not the budget; nor is a
    # setting an older pnnh did not write (a0 has no eval_every) when it is at its default
    _run(tmp_path, "p0", 2, kind="pnnh", model_kwargs={"code_ratio": 0.25})
    _run(tmp_path, "p1", 1, kind="pnnh", model_kwargs={"code_ratio": 0.25}, seed=1)  # still training
    acc, budget = verdict.finished_runs(tmp_path)
    assert acc == {"resnet56:residual": [pytest.approx(60.0), pytest.approx(60.0)],
                   "resnet56:pnnh:code_ratio=0.25": [pytest.approx(60.0)]}
    assert budget["epochs"] == 2 and budget["lr"] == 0.1 and budget["eval_every"] == 1
    assert budget["hardware"] == {"cpu": 2, "cuda": 1}  # where each finished run ran, from its config here
    # a matrix's table names its budget and rows; the README keeps what lies outside its markers
    table = verdict.runs_table({k: verdict.stats(v) for k, v in acc.items()}, budget, "bash x.sh")
    assert "sgd lr 0.1" in table[0] and "2 epochs" in table[0] and "float32" in table[0] and "`bash x.sh`" in table[0]
    assert "| resnet56:residual | 60.00 ± 0.00% (2 seeds) | 60.00, 60.00 |" in table
    assert verdict.runs_table({}, None, "bash x.sh") == ["No run has finished yet. Command: `bash x.sh`."]
    marked = "a\n<!-- vit: made by benchmarks/verdict.py -->\nold\n<!-- /vit -->\nz"
    assert verdict.between_markers(marked, "vit", ["new"]) == \
        "a\n<!-- vit: made by benchmarks/verdict.py -->\nnew\n<!-- /vit -->\nz"
    with pytest.raises(SystemExit, match="no <!-- verdict"):
        verdict.between_markers(marked, "verdict", ["new"])
    # a diverged seed (diverged.json, as compare writes it; metrics of the epochs before it, or none) is None
    _run(tmp_path, "p2", 0, kind="pnnh", model_kwargs={"code_ratio": 0.25}, seed=2)
    (tmp_path / "stage" / "runs" / "p2" / "diverged.json").write_text(json.dumps({"where": "epoch 1, step 21 of 156"}))
    acc, _ = verdict.finished_runs(tmp_path)
    assert acc["resnet56:pnnh:code_ratio=0.25"] == [pytest.approx(60.0), None]
    table = verdict.runs_table({k: verdict.stats(v) for k, v in acc.items()}, budget, "bash x.sh")
    assert "| resnet56:pnnh:code_ratio=0.25 | 60.00% (1 seed; 1 diverged) | 60.00, diverged |" in table
    _run(tmp_path, "x0", 2, lr=0.2, seed=2)
    with pytest.raises(SystemExit, match="differ in lr"):
        verdict.finished_runs(tmp_path)


def test_a_diverged_seed_is_not_on_par() -> None:
    """A seed with no usable model decides "not on par" against a reference that trained every seed, however
    well the other seeds did; a diverged reference decides nothing."""
    s = verdict.stats
    residual = s([76.0, 76.2, 75.8])
    learned = s([76.1, None, 76.0])
    assert (learned["n"], learned["diverged"], learned["mean"]) == (2, 1, pytest.approx(76.05))
    c = verdict.contrast(learned, residual, "on par")
    assert c["verdict"] == "does not hold" and "1 of 3 seeds diverged at this recipe" in c["why"]
    assert verdict.fmt_c(c) == "+0.05 over the finished seeds (1 of 3 seeds diverged)"
    assert verdict.contrast(learned, residual, "behind")["verdict"] == "holds"
    assert verdict.fmt(learned) == "76.05 ± 0.07% (2 seeds; 1 diverged)"
    gone = verdict.contrast(s([None, None, None]), residual, "on par")
    assert gone["verdict"] == "does not hold" and verdict.fmt_c(gone) == "3 of 3 seeds diverged"
    assert verdict.fmt(s([None, None, None])) == "every seed diverged (3)"
    back = verdict.contrast(residual, learned, "on par")
    assert back["verdict"] == "undecided" and "reference diverged" in back["why"]
    rows = verdict.accuracy_claims({"resnet56:residual": residual,
                                    "resnet56:pnnh:coder=learned,coder_share=stage": learned})
    assert "not: resnet56:pnnh:coder=learned,coder_share=stage" in rows[1]["why"]
    assert ("coder=learned,coder_share=stage at 56: +0.05 over the finished seeds (1 of 3 seeds diverged)"
            in rows[1]["measured"])


def test_pnnh_claim_fails_only_when_every_variant_has_failed() -> None:
    s = verdict.stats
    acc = {"resnet56:residual": s([76.4, 76.2, 75.9]), "resnet110:residual": s([75.0, 75.2, 74.8])}
    behind = s([60.0, 61.0, 59.0])
    narrow = {f"resnet56:pnnh:code_ratio={r}": behind for r in (0.0625, 0.25, 0.5)}
    row = verdict.accuracy_claims({**acc, **narrow})[1]
    assert row["verdict"] == "undecided" and row["why"].startswith("on par: none; not: resnet56:pnnh:code_ratio=0.0625")
    rest = {"resnet110:pnnh:code_ratio=0.25": behind, "resnet56:pnnh:coder=learned,coder_share=stage": behind,
            "resnet56:pnnh:coder=learned,coder_share=block": behind}
    assert verdict.accuracy_claims({**acc, **narrow, **rest})[1]["verdict"] == "does not hold"
    on_par = {"resnet56:pnnh:coder=learned,coder_share=block": s([76.3, 76.1, 76.0])}
    assert verdict.accuracy_claims({**acc, **narrow, **on_par})[1]["verdict"] == "holds in part"
    # every variant must fail for "does not hold": one that fails only marginally marks the verdict
    near = {"resnet56:residual": s([47.21, 47.31, 48.01]), "resnet110:residual": s([75.0, 75.2, 74.8]),
            **{k: s([30.0, 31.0, 29.0]) for k in [*narrow, *rest]},
            "resnet56:pnnh:coder=learned,coder_share=block": s([45.59, 46.26, 45.62])}
    assert verdict.accuracy_claims(near)[1]["verdict"] == "does not hold (marginal)"


def test_a_column_per_budget_reads_only_its_stages(tmp_path: Path) -> None:
    """The near-convergence column reads the full-budget stages of its folder; the gap stages beside them
    (other epochs) would mix budgets, and read together they are refused."""
    for stage, epochs in (("nc_a56", 2), ("nc_half", 1)):
        run = tmp_path / stage / "runs" / "r0"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"model": "resnet56", "kind": "residual", "model_kwargs": {},
                                                     "seed": 0, "epochs": epochs, "device": "cuda"}))
        (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e + 1, "test_acc": 0.8,
                                                               "hardware": "NVIDIA H200"}) + "\n"
                                                   for e in range(epochs)))
    acc, budget = verdict.finished_runs(tmp_path, ("nc_a56",))
    assert acc == {"resnet56:residual": [pytest.approx(80.0)]} and budget["epochs"] == 2
    assert budget["hardware"] == {"NVIDIA H200": 1}  # the metrics' machine, where they name it
    with pytest.raises(SystemExit, match="differ in epochs"):
        verdict.finished_runs(tmp_path)
    s = verdict.stats
    first = verdict.accuracy_claims({"resnet56:residual": s([76.4, 76.2, 75.9])})
    near = verdict.accuracy_claims({"resnet56:residual": s([87.8, 87.7, 88.0]),
                                    "resnet56:pnnh:code_ratio=0.5": s([85.8, 86.6])})
    mixed = {**budget, "hardware": {"AMD EPYC, 2 torch threads": 1, "NVIDIA H200": 8}}
    table = verdict.budgets_table(first, near, budget, mixed)
    assert table[0].startswith("| claim | all training images, 2 epochs")
    assert table[0].endswith("on NVIDIA H200 (8 runs) and AMD EPYC, 2 torch threads (1 run) |")
    assert len(table) == 2 + len(first) and "code_ratio=0.5 at 56: -1.63 (2 of 3 seeds)" in table[3]
    assert verdict.budgets_table(first, near, budget, None) == ["No near-convergence run has finished yet."]
