"""``pnnh compare``: train every entry with the same data, order, budget and seeds, then report side by side.

Each (entry, seed) is an ordinary ``pnnh train`` run in ``<out>/runs/<entry>-seed<s>``; a compare
started again skips finished runs and resumes unfinished ones from their last checkpoint. A run that
diverges is a result, not the end of the comparison: it is recorded in its folder (``diverged.json``),
reported as diverged, and left out of the entry's mean, which the report says rests on fewer seeds.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import time
from collections import Counter
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from .analysis.plots import plot_probe
from .analysis.probe import load_probe_images, probe, spread_cell
from .checkpoint import load_checkpoint
from .config import TrainConfig, config_differences
from .entries import Entry
from .errors import PnnhError
from .hub import build_model, model_from_checkpoint
from .io import make_dir, save_figure, write_atomic, write_json
from .profile import count_params
from .progress import bar, log
from .train import TrainingDiverged, read_metrics, train

DIVERGED = "diverged.json"  # in a run folder: where that run diverged (committed with its small files)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_dir(out: Path, entry: Entry, seed: int) -> Path:
    return out / "runs" / f"{entry.slug}-seed{seed}"


def existing_run(path: Path, cfg: TrainConfig, overwrite: bool = False) -> dict | None:
    """What ``path`` holds of this very run (the same config but for RESUME_SAFE keys), or None if nothing.

    {"checkpoint": last.pt's contents or None, "history": per-epoch rows, "model_config", "done": bool,
    "diverged": where it diverged (``diverged.json``) or None}. A finished run's small files alone
    (config.json, model.json, metrics.jsonl: what benchmarks commit, without checkpoints) count as done;
    so does a diverged run (trained again only once its folder is deleted). A run with other settings is
    refused, naming the keys, or with ``overwrite`` deleted so that it is trained again."""
    if not (path / "config.json").exists() and not (path / "last.pt").exists():
        return None
    try:
        saved = TrainConfig.from_dict(json.loads((path / "config.json").read_text()))
        conflicts = config_differences(cfg, saved)
    except (OSError, ValueError, TypeError, PnnhError):
        saved, conflicts = None, ["config.json"]
    if conflicts:
        if overwrite:
            log.info(f"{path}: trained with other settings ({', '.join(conflicts)}); --overwrite: training it again")
            shutil.rmtree(path)
            return None
        was = ", ".join(f"{k}={getattr(saved, k)!r}" for k in conflicts) if saved else "an unreadable config.json"
        asked = ", ".join(f"{k}={getattr(cfg, k)!r}" for k in conflicts) if saved else "this compare's settings"
        raise PnnhError(f"{path} holds a run with {was}, but this compare asks for {asked}: use another "
                        f"--output, or --overwrite to train it again")
    if (path / DIVERGED).exists():
        try:
            diverged = json.loads((path / DIVERGED).read_text())
            model_config = json.loads((path / "model.json").read_text())
        except (OSError, ValueError):
            raise PnnhError(f"{path / DIVERGED} or model.json beside it is unreadable: delete {path} to train "
                            f"that run again") from None
        history = read_metrics(path) if (path / "metrics.jsonl").exists() else []
        return {"checkpoint": None, "history": history, "model_config": model_config, "done": True,
                "diverged": diverged}
    if (path / "last.pt").exists():
        checkpoint = load_checkpoint(path / "last.pt")
        return {"checkpoint": checkpoint, "history": checkpoint["history"], "model_config": checkpoint["model_config"],
                "done": (checkpoint["epoch"], checkpoint["step"]) == (cfg.epochs, 0), "diverged": None}
    try:
        history = read_metrics(path)
        model_config = json.loads((path / "model.json").read_text())
    except (OSError, ValueError):
        return None  # started but never checkpointed: train it from the start
    done = len(history) == cfg.epochs
    if not done:
        return None
    return {"checkpoint": None, "history": history, "model_config": model_config, "done": True, "diverged": None}


def record_divergence(path: Path, e: TrainingDiverged) -> None:
    """Write where a run diverged into its folder, so that the comparison reports it and does not retrain it."""
    write_json(path / DIVERGED, {"epoch": e.epoch, "step": e.step, "steps_per_epoch": e.steps_per_epoch,
                                 "where": f"epoch {e.epoch}, step {e.step} of {e.steps_per_epoch}",
                                 "message": str(e)})


def compare(entries: list[Entry], base: TrainConfig, seeds: list[int], out: Path, command: str,
            overwrite: bool = False, report: bool = True) -> dict:
    """Train each entry for each seed (resuming where possible) and write the report folder.

    A run folder already there is reused only if it holds the same run (see ``existing_run``). With
    ``report=False`` only the runs are made: a worker filling one (entry, seed) of a larger matrix leaves
    the folder's report, plots and probe to the compare over all of them."""
    for entry in entries:  # every run's settings, checked before anything is written
        replace(base, model=entry.model, kind=entry.kind, model_kwargs=dict(entry.kwargs)).validate()
    created = not out.exists()
    make_dir(out, "--output")
    try:
        return _compare(entries, base, seeds, out, command, overwrite, report)
    except PnnhError:  # refused (data, device, a stale run, ...) before any run wrote a file: leave nothing
        if created and not any(p.is_file() for p in out.rglob("*")):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _compare(entries: list[Entry], base: TrainConfig, seeds: list[int], out: Path, command: str,
             overwrite: bool, report: bool) -> dict:
    plan = [(e, s) for e in entries for s in seeds]
    runs: dict[tuple[str, int], dict] = {}
    trained: dict[str, torch.nn.Module] = {}  # seed 0's trained model of each entry, where last.pt is here
    trained_config: dict | None = None  # the build record of one of them: the seed's data normalisation
    started = time.time()
    for i, (entry, seed) in enumerate(bar(plan, desc="compare", unit="run", leave=True)):
        path = run_dir(out, entry, seed)
        cfg = replace(base, model=entry.model, kind=entry.kind, model_kwargs=dict(entry.kwargs), seed=seed,
                      output=str(path))
        found = existing_run(path, cfg, overwrite)
        done = found is not None and found["done"]
        diverged_before = found is not None and found["done"] and found["diverged"]
        status = ("diverged before, skipped (delete its folder to train it again)" if diverged_before
                  else "done, skipped" if done else "resuming" if found is not None else "training")
        log.info(f"[{i + 1}/{len(plan)}] {entry.label} seed {seed}: {status}")
        if not done:
            try:
                train(cfg, path / "last.pt" if found is not None else None)
            except TrainingDiverged as e:
                record_divergence(path, e)
                log.warning(f"{entry.label} seed {seed} diverged at epoch {e.epoch}, step {e.step}: recorded in "
                            f"{path / DIVERGED} and reported; the comparison goes on")
            found = existing_run(path, cfg)
        if found is None:
            raise PnnhError(f"{path} holds no run after training it: delete the folder and run the compare again")
        weights = report and found["checkpoint"] is not None  # the trained weights are needed only to probe
        if weights:
            model = model_from_checkpoint(found["checkpoint"], path / "last.pt")
        else:  # only the small files are here, diverged, or no report: count the parameters on the meta device
            with torch.device("meta"):
                model = build_model(found["model_config"])
        runs[(entry.label, seed)] = {"history": found["history"], "params": count_params(model),
                                     "diverged": found["diverged"]}
        if seed == seeds[0] and weights:
            trained[entry.label], trained_config = model, found["model_config"]
    results = summarise(entries, seeds, runs, base, command)
    results["wall_seconds_this_call"] = time.time() - started
    diverged = [f"{r['label']} seed {s}" for r in results["entries"] for s in r["diverged"]]
    if diverged:
        log.warning(f"warning: {len(diverged)} run(s) diverged ({', '.join(diverged)}): reported as diverged and left "
                    f"out of the means; delete a run's folder to train it again")
    if not report:
        return results
    for stale in [out / "probe_end.json", *out.glob("probe_end_*.png")]:  # an earlier compare's, maybe of other runs
        stale.unlink(missing_ok=True)
    probes = []
    probed = [e for e in entries if runs[(e.label, seeds[0])]["diverged"] is None]  # a diverged run has no model
    if probed and trained_config is not None and all(e.label in trained for e in probed):
        probes = probe_trained(probed, seeds[0], base, [trained[e.label] for e in probed], trained_config, out)
    elif probed:
        log.warning("no probe of the trained models: some runs are here as metrics only (no last.pt)")
    write_report(out, results, runs, probes)
    return results


PROBE_IMAGES = 64


def probe_trained(entries: list[Entry], seed: int, base: TrainConfig, models: list[torch.nn.Module],
                  model_config: dict, out: Path) -> list[dict]:
    """The probe (CKA, R^2, survival, effective rank, spread across positions) of each entry's trained
    seed-``seed`` model, on a fixed subset of test images; [] where the data set cannot be probed.
    ``model_config``: one of the runs' build records (every run of one seed trained on the same subset,
    so shares its normalisation)."""
    try:
        stats = (model_config["mean"], model_config["std"]) if model_config["mean"] else None
        images, _, _ = load_probe_images(base.data, base.data_dir, PROBE_IMAGES, 0, stats, base.cache_dir)
    except PnnhError as e:
        log.warning(f"no probe curves: {e}")
        return []
    runs = []
    for entry, model in bar(list(zip(entries, models)), desc="probe", unit="model"):
        result = probe(model, images, metrics=("cka", "r2", "survival", "erank", "spread"))
        runs.append({"model": entry.model, "kind": entry.kind, "label": entry.label, "seed": seed, **result})
    write_json(out / "probe_end.json", runs)
    return runs


def finished_seeds(runs: dict, label: str, seeds: list[int]) -> list[int]:
    """The seeds of an entry whose runs finished (did not diverge)."""
    return [s for s in seeds if runs[(label, s)]["diverged"] is None]


def summarise(entries: list[Entry], seeds: list[int], runs: dict, base: TrainConfig, command: str) -> dict:
    """Per entry: "test_acc" per seed (None where the run diverged, "diverged" says where), and means, spreads
    and speeds over the finished seeds only (None if none finished)."""
    rows = []
    for e in entries:
        ok = finished_seeds(runs, e.label, seeds)
        hs = [runs[(e.label, s)]["history"] for s in ok]
        final = {s: h[-1]["test_acc"] for s, h in zip(ok, hs)}
        best = [max(r["test_acc"] for r in h if r["test_acc"] is not None) for h in hs]  # --eval-every: gaps
        img_s = [statistics.fmean(r["img_per_s"] for r in h) for h in hs]
        acc_mean, acc_std = _mean_std(list(final.values())) if ok else (None, None)
        row = {"model": e.model, "kind": e.kind, "variant": e.variant, "label": e.label,
               "params": runs[(e.label, seeds[0])]["params"], "seeds": seeds,
               "test_acc": [final.get(s) for s in seeds],
               "diverged": {str(s): runs[(e.label, s)]["diverged"]["where"] for s in seeds if s not in ok},
               "test_acc_mean": acc_mean, "test_acc_std": acc_std,
               "best_acc_mean": None, "best_acc_std": None, "train_acc_mean": None, "train_img_s": None,
               "train_img_s_std": None, "train_seconds": None, "trained_on": _trained_on(hs)}
        if ok:
            row.update({"best_acc_mean": statistics.fmean(best), "best_acc_std": _mean_std(best)[1],
                        "train_acc_mean": statistics.fmean(h[-1]["train_acc"] for h in hs),
                        "train_img_s": statistics.fmean(img_s), "train_img_s_std": _mean_std(img_s)[1],
                        "train_seconds": statistics.fmean(sum(r["seconds"] for r in h) for h in hs)})
        rows.append(row)
    reference = next((r for r in rows if r["kind"] == "residual" and r["variant"] == "default"), rows[0])
    for r in rows:
        r["ratio_params"] = r["params"] / reference["params"]
        both = r["test_acc_mean"] is not None and reference["test_acc_mean"] is not None
        r["ratio_train_img_s"] = r["train_img_s"] / reference["train_img_s"] if both else None
        r["delta_acc_vs_reference"] = r["test_acc_mean"] - reference["test_acc_mean"] if both else None
    budget = {k: getattr(base, k) for k in ("epochs", "batch_size", "lr", "opt", "sched", "weight_decay",
                                            "warmup_epochs", "train_subset", "test_subset", "label_smoothing")}
    return {"command": command, "data": _data_name(base), "budget": budget, "reference": reference["label"],
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "device": base.device if base.device != "auto" else
                        ("cuda" if torch.cuda.is_available() else "cpu"),
                        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
            "versions": _versions(), "entries": rows,
            "trained_on": dict(sum((Counter(r["trained_on"]) for r in rows), Counter()))}


def _trained_on(histories: list[list[dict]]) -> dict[str, int]:
    """Epochs per hardware they ran on (the epoch rows record it; rows of older runs do not)."""
    return dict(Counter(row.get("hardware", "not recorded (older runs)") for h in histories for row in h))


def _data_name(cfg: TrainConfig) -> str:
    if cfg.data == "imagefolder" and cfg.data_dir and "cifar10-jpeg" in str(cfg.data_dir):
        return f"CIFAR-10 (JPEG q75 copy) at {cfg.data_dir}"
    return {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"
            }.get(cfg.data, f"{cfg.data} at {cfg.data_dir}")


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in ("pnnh", "torch", "numpy", "matplotlib", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def write_report(out: Path, results: dict, runs: dict, probes: list[dict] | None = None) -> None:
    write_json(out / "results.json", results)
    plots = write_plots(out, results, runs)
    if probes and plots:
        plots += [p.name for p in plot_probe(probes, out, prefix="probe_end")
                  if p.stem.endswith(("cka", "r2", "spread"))]
    b = results["budget"]
    lines = [f"# pnnh compare: {', '.join(r['label'] for r in results['entries'])}", "",
             f"Data: {results['data']}. Budget: {b['epochs']} epochs, batch {b['batch_size']}, {b['opt']} lr "
             f"{b['lr']}, {b['sched']} schedule, weight decay {b['weight_decay']}, training subset "
             f"{b['train_subset'] or 'all'}, test subset {b['test_subset'] or 'all'}. "
             f"Seeds: {', '.join(map(str, results['entries'][0]['seeds']))}.", "",
             "| entry | params | final test acc (mean ± std) | best test acc | train acc | train img/s | "
             "img/s ratio | wall s/run |", "|---|---|---|---|---|---|---|---|"]
    for r in results["entries"]:
        n, failed = len(r["seeds"]), len(r["diverged"])
        if r["test_acc_mean"] is None:
            lines.append(f"| {r['label']} | {r['params'] / 1e6:.3f}M | every seed diverged | – | – | – | – | – |")
            continue
        note = f" ({n - failed} of {n} seeds; {failed} diverged)" if failed else ""
        spread = f" ± {100 * r['test_acc_std']:.2f}" if n - failed > 1 else ""  # one seed has no spread
        ratio = "–" if r["ratio_train_img_s"] is None else f"{r['ratio_train_img_s']:.2f}"
        lines.append(f"| {r['label']} | {r['params'] / 1e6:.3f}M | {100 * r['test_acc_mean']:.2f}{spread}"
                     f"%{note} | {100 * r['best_acc_mean']:.2f}% | "
                     f"{100 * r['train_acc_mean']:.2f}% | {r['train_img_s']:.1f} | {ratio} | "
                     f"{r['train_seconds']:.0f} |")
    lines += ["", f"Ratios are to {results['reference']}. Train img/s is each run's own speed in wall time "
              "(a run that shared the machine or was paused reads slower): a record, not a throughput comparison, "
              "which is `pnnh bench` (entries interleaved in one process). Means and spreads are over the seeds that "
              "finished: a run that diverged (its loss or gradient became NaN/inf) has no accuracy and is listed as "
              "such. "
              "Per-seed final test accuracies:", ""]
    lines += [f"- {r['label']}: " + ", ".join(f"{100 * a:.2f}%" if a is not None else
                                             f"diverged (seed {s}, {r['diverged'][str(s)]})"
                                             for s, a in zip(r["seeds"], r["test_acc"])) for r in results["entries"]]
    m, trained_on = results["machine"], results["trained_on"]
    lines += ["", "## Command", "", "```", results["command"], "```", "", "## Machine", "",
              "The epochs were trained on: " + "; ".join(f"{k} ({v} epochs)" for k, v in trained_on.items()) + "."
              + (" The train img/s column mixes these machines." if len(trained_on) > 1 else ""), "",
              f"This report was written on {m['platform']}, Python {m['python']}, {m['cpus']} CPUs "
              f"({m['torch_threads']} torch threads), device {m['device']}" + (f" ({m['gpu']})" if m["gpu"] else "")
              + ".", "",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items() if v) + "."]
    if probes:
        lines += ["", f"## The probe at the end of training (seed {probes[0]['seed']}, {PROBE_IMAGES} test images)",
                  "", "| entry | CKA with the input, first / middle / last layer | R^2, first / middle / last | "
                  "noise floor (CKA, R^2) | spread across positions, first / middle / last |", "|---|---|---|---|---|"]
        for p in probes:
            layers = p["layers"]
            picks = [layers[0], layers[len(layers) // 2], layers[-1]]
            lines.append(f"| {p['label']} | " + " / ".join(f"{r['cka']:.3f}" for r in picks) + " | "
                         + " / ".join(f"{r['r2']:.3f}" for r in picks)
                         + f" | {p['noise_floor']['cka']:.3f}, {p['noise_floor']['r2']:.3f} | "
                         + " / ".join(spread_cell(r) for r in picks) + " |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    else:
        lines += ["", "(No plots: matplotlib is not installed; pip install 'pnnh[plot]'.)"]
    write_atomic(out / "report.md", "\n".join(lines) + "\n")


def write_plots(out: Path, results: dict, runs: dict) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    entries = [r for r in results["entries"] if r["test_acc_mean"] is not None]  # every seed diverged: no curve
    if not entries:
        return []
    seeds = entries[0]["seeds"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in entries:
        hs = [runs[(r["label"], s)]["history"] for s in finished_seeds(runs, r["label"], seeds)]
        for ax, key in zip(axes, ("test_acc", "train_loss")):
            rows = [i for i in range(len(hs[0])) if all(h[i][key] is not None for h in hs)]  # --eval-every: gaps
            ax.plot([hs[0][i]["epoch"] for i in rows], [statistics.fmean(h[i][key] for h in hs) for i in rows],
                    marker="o", label=r["label"])
    axes[0].set(xlabel="epoch", ylabel="test accuracy (mean over finished seeds)")
    axes[1].set(xlabel="epoch", ylabel="training loss (mean over finished seeds)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "curves.png")
    plt.close(fig)

    # one column per entry (kinds often have nearly the same parameter count: on a parameter axis their
    # points would sit on one another), the count in its label
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    at = range(len(entries))
    labels = [f"{r['label']}\n{r['params'] / 1e6:.2f}M params" for r in entries]
    for i, r in zip(at, entries):
        axes[0].errorbar(i, 100 * r["test_acc_mean"], yerr=100 * r["test_acc_std"], fmt="o", capsize=4,
                         color=f"C{i % 10}")
        axes[0].annotate(f"{100 * r['test_acc_mean']:.1f}%", (i, 100 * r["test_acc_mean"]),
                         textcoords="offset points", xytext=(8, 0), va="center", fontsize=8)
    axes[0].set(ylabel=f"final test accuracy (%), mean ± std over {len(seeds)} seed(s)",
                xlim=(-0.5, len(entries) - 0.5))
    axes[1].bar(at, [r["train_img_s"] for r in entries], yerr=[r["train_img_s_std"] for r in entries], capsize=3,
                color=[f"C{i % 10}" for i in at])
    axes[1].set(ylabel="training images/s")
    for ax in axes:
        ax.set_xticks(at, labels, rotation=20, ha="right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "accuracy_params_throughput.png")
    plt.close(fig)
    return ["curves.png", "accuracy_params_throughput.png"]
