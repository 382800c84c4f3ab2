"""Time to accuracy: test accuracy against training wall time after every epoch, side by side with airbench.

    python benchmarks/time_to_accuracy.py                 # train what is missing (one process at a time), then report
    python benchmarks/time_to_accuracy.py --only resnet56:residual airbench
    python benchmarks/time_to_accuracy.py --report        # table and plot from the committed runs only
    python benchmarks/time_to_accuracy.py --epochs 12 --only resnet56:residual   # the recipe, shorter
    python benchmarks/time_to_accuracy.py --ablation no-nesterov --seed 0  # one ingredient changed, 12 epochs

Every pnnh entry is one `pnnh compare --recipe RECIPE --no-report` run on the full 50,000 training images
of CIFAR-10 (JPEG q75 copy), tested on the full 10,000-image test set after every epoch, into
benchmarks/results/time_to_accuracy/<recipe>-<N>ep/runs/ (N: the recipe's epochs or --epochs; small files
committed; a run interrupted resumes, a finished one is skipped); the near-convergence matrix's runs of the
same recipe and length that ran on a CPU (benchmarks/results/gpu_nc_cifar-fast/nc_*/) join the report.
airbench 0.1.8's train93 runs through benchmarks/airbench_cpu.py in the timm environment (.venv-timm, where
torchvision imports). Minutes are training time only (evaluation left out, as airbench's own timer does);
the machine's CPU model and bf16 units are recorded with the results. An ablation trains the recipe's run of
its seed and length first where that is missing, and refuses before training when that run's precision is
not the one this machine gives the recipe (bf16 against float32 would be a second change).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from pnnh.compare import run_dir
from pnnh.config import TrainConfig, config_differences, precision
from pnnh.device import bf16_units, cpu_flags, cpu_name
from pnnh.entries import Entry, parse_entries
from pnnh.io import save_figure, write_atomic, write_json
from pnnh.recipes import RECIPES, recipe_options
from pnnh.train import read_metrics

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "time_to_accuracy"
DATA_DIR = "../shared/data/cifar10-jpeg"  # relative to the repository, as benchmarks/evidence.sh records it
ENTRIES = ["resnet56:residual", "resnet20:residual", "resnet110:residual", "resnet56:plain",
           "resnet56:pnnh:code_ratio=0.5"]
AIRBENCH = OUT / "airbench93.json"
# Each ingredient measured alone: the recipe with one change (flags, and the config keys it may change),
# trained at ABLATION_EPOCHS into ablation-<name>/ and set against the recipe's run of the same entry, seed
# and length (cifar-fast-<N>ep/). The average of the weights needs no run: benchmarks/ema_gain.py.
ABLATION_EPOCHS = 12
ABLATIONS = {
    "lr0.4": ("half the peak learning rate (0.4)", ["--lr", "0.4"], {"lr"}),
    "ls0": ("no label smoothing", ["--label-smoothing", "0"], {"label_smoothing"}),
    "no-nesterov": ("classical momentum, not Nesterov", ["--no-nesterov"], {"nesterov"}),
    "warmup0": ("no warm-up", ["--warmup-epochs", "0"], {"warmup_epochs"}),
    "batch256": ("batch 256 at lr 0.4 (the peak scaled with the batch)", ["--batch-size", "256", "--lr", "0.4"],
                 {"batch_size", "lr"}),
}
# The near-convergence matrix (benchmarks/evidence.sh's nc stages, benchmarks/gpu.sh MATRIX=nc) trains this
# recipe at its own length too: its runs on a CPU are entries of the same curve and join the report.
NEAR = OUT.parent / "gpu_nc_cifar-fast"


def study(recipe: str, epochs: int | None) -> str:
    """The folder name of a recipe's runs at ``epochs`` (None: the recipe's own), e.g. cifar-fast-25ep."""
    return f"{recipe}-{epochs or RECIPES[recipe]['epochs']}ep"


def train_entry(entry: str, recipe: str, seed: int, epochs: int | None, ablation: str | None = None) -> None:
    folder = OUT / (f"ablation-{ablation}" if ablation else study(recipe, epochs))
    cmd = [str(ROOT / ".venv" / "bin" / "pnnh"), "compare", "--recipe", recipe, "--entries", entry, "--seeds", "1",
           "--seed", str(seed), "--data", "imagefolder", "--data-dir", DATA_DIR, "--workers", "0",
           *(["--epochs", str(epochs)] if epochs is not None else []), *(ABLATIONS[ablation][1] if ablation else []),
           "--output", str(folder.relative_to(ROOT)), "--no-report"]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def ablation_base(entry: str, recipe: str, seed: int, epochs: int) -> None:
    """Before an ablation trains (an hour or more on a CPU): the recipe's run it is set against (same entry,
    seed and length) is trained first where it is missing; one trained at another precision than this
    machine gives the recipe is refused here, since the ablation would differ from it in more than one thing."""
    base = run_dir(OUT / study(recipe, epochs), parse_entries(entry)[0], seed)
    done = finished(base)
    if done is None:
        print(f"time_to_accuracy: no finished run of the recipe at {epochs} epochs for {entry} seed {seed} "
              f"({base.relative_to(ROOT)}) to set the ablation against: training it first", file=sys.stderr)
        train_entry(entry, recipe, seed, epochs)
        return
    (config, rows), here = done, recipe_options(recipe)["amp"]
    if config.amp != here:
        sys.exit(f"time_to_accuracy: the recipe's run {base.relative_to(ROOT)} trained with amp {config.amp} "
                 f"({rows[-1].get('hardware', 'another machine')}), but this machine runs recipe {recipe} with amp "
                 f"{here} (bf16 units: {', '.join(bf16_units()) or 'none'}), so an ablation trained here would "
                 f"differ from it in precision too: run the ablation where the recipe resolves to amp "
                 f"{config.amp} (bf16: a CPU with amx_bf16 or avx512_bf16, or a GPU)")


def train_airbench() -> None:
    python = ROOT / ".venv-timm" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "airbench==0.1.8"], check=True)
    subprocess.run([str(python), str(ROOT / "benchmarks" / "airbench_cpu.py"), "--output", str(AIRBENCH)],
                   check=True, cwd=ROOT)


def on_a_cpu(rows: list[dict]) -> bool:
    """Whether every epoch of a run ran on a CPU (its metrics name the CPU and its torch threads)."""
    return all("torch thread" in row.get("hardware", "") for row in rows)


def curves(recipe: str) -> dict[str, dict]:
    """Per finished pnnh run of study ``recipe`` (e.g. cifar-fast-25ep): label, config, and (minutes of
    training, test acc, test acc with flips) per epoch. The near-convergence matrix's runs of the same
    recipe and length that ran on a CPU join them, labelled as such."""
    out = {}
    own = sorted((OUT / recipe / "runs").glob("*"))
    for run in own + sorted(NEAR.glob("nc_*/runs/*")):
        done = finished(run)
        if done is None:
            continue  # still training, or nothing readable
        config, rows = done
        if run not in own and (not config.recipe or study(config.recipe, config.epochs) != recipe
                               or not on_a_cpu(rows)):
            continue  # another recipe or length, or a GPU's run
        minutes, points = 0.0, []
        for row in rows:
            minutes += row["seconds"] / 60
            points.append({"epoch": row["epoch"], "minutes": minutes, "test_acc": row["test_acc"],
                           "test_acc_flip": row.get("test_acc_flip"), "img_per_s": row["img_per_s"]})
        # a float32 run (a CPU without bf16 units) is an entry of its own: never averaged with bf16 seeds
        label = Entry(config.model, config.kind, config.model_kwargs).label \
            + (" (float32)" if config.amp == "none" else "") + f" seed {config.seed}" \
            + ("" if run in own else f" ({run.parents[1].name}, near-convergence matrix)")
        out[label] = {"points": points, "hardware": sorted({r.get("hardware") for r in rows} - {None}),
                      "config": json.loads((run / "config.json").read_text())}
    if AIRBENCH.exists():
        ab = json.loads(AIRBENCH.read_text())
        out["airbench93 (train93, CPU shim)"] = {
            "points": [{"epoch": r["epoch"], "minutes": r["train_seconds"] / 60, "test_acc": r["test_acc"],
                        "test_acc_flip": None} for r in ab["epochs"]],
            "tta_test_acc": ab.get("tta_test_acc"), "hardware": [ab["machine"]["cpu"]], "config": "airbench 0.1.8"}
    return out


def seed_summary(runs: dict[str, dict]) -> list[str]:
    """Lines of a table over seeds: per entry with finished pnnh runs, the final test accuracy (without and
    with flips) as mean +- standard deviation over its seeds, and each seed's training minutes (not
    averaged: seeds may have run alone or side by side, which the per-run table's last column says)."""
    groups: dict[str, list[dict]] = {}
    for label, r in runs.items():
        if " seed " in label:
            groups.setdefault(label.rsplit(" seed ", 1)[0], []).append(r["points"][-1])
    lines = ["", "| entry | seeds | final test acc | with flips | training minutes, per seed |",
             "|---|---|---|---|---|"]
    for entry, lasts in groups.items():
        def cell(values: list[float]) -> str:
            mean = statistics.fmean(values) * 100
            return f"{mean:.2f}%" + (f" +- {statistics.stdev(values) * 100:.2f}" if len(values) > 1 else "")
        flips = [p["test_acc_flip"] for p in lasts if p["test_acc_flip"] is not None]
        lines.append(f"| {entry} | {len(lasts)} | {cell([p['test_acc'] for p in lasts])} | "
                     + (cell(flips) if len(flips) == len(lasts) else "–")
                     + " | " + ", ".join(f"{p['minutes']:.1f}" for p in lasts) + " |")
    return lines if groups else []


def finished(run: Path) -> tuple[TrainConfig, list[dict]] | None:
    """A run's config and per-epoch rows, if it finished."""
    try:
        config = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
        rows = read_metrics(run)
    except (OSError, ValueError):
        return None
    return (config, rows) if len(rows) == config.epochs else None


def ablations(recipe: str) -> list[dict]:
    """One row per finished ablation run: its final accuracy (and with flips) beside the recipe's run of the
    same entry, seed and length, and the difference. A run that differs from that run in more than its
    ablation's keys is refused: one change at a time, or no row."""
    rows = []
    for name, (words, _, keys) in ABLATIONS.items():
        for run in sorted((OUT / f"ablation-{name}" / "runs").glob("*")):
            done = finished(run)
            if done is None:
                continue
            config, history = done
            base = finished(OUT / study(recipe, config.epochs) / "runs" / run.name)
            if base is None:
                print(f"time_to_accuracy: {run.relative_to(ROOT)} has no finished run of the recipe to set it "
                      f"against ({study(recipe, config.epochs)}/runs/{run.name}): left out", file=sys.stderr)
                continue
            changed = set(config_differences(config, base[0]))
            if changed != keys:
                sys.exit(f"time_to_accuracy: {run.relative_to(ROOT)} differs from the recipe's run in "
                         f"{', '.join(sorted(changed)) or 'nothing'}, where ablation {name} changes "
                         f"{', '.join(sorted(keys))}: not one change")
            last, base_last = history[-1], base[1][-1]
            flips = (last.get("test_acc_flip"), base_last.get("test_acc_flip"))
            rows.append({"ablation": name, "change": words, "run": run.name, "epochs": config.epochs,
                         "seed": config.seed, "precision": precision(config.amp),
                         "hardware": sorted({r.get("hardware", "not recorded") for r in history}),
                         "test_acc": last["test_acc"], "recipe_test_acc": base_last["test_acc"],
                         "difference": last["test_acc"] - base_last["test_acc"],
                         "test_acc_flip": flips[0], "recipe_test_acc_flip": flips[1],
                         "difference_flip": None if None in flips else flips[0] - flips[1],
                         "minutes": sum(r["seconds"] for r in history) / 60,
                         "recipe_minutes": sum(r["seconds"] for r in base[1]) / 60})
    return rows


def ablation_table(rows: list[dict]) -> list[str]:
    lines = ["| change to the recipe | run | precision | recipe | changed | difference | with flips: recipe, changed, "
             "difference | minutes: recipe, changed |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flip = (f"{100 * r['recipe_test_acc_flip']:.2f}%, {100 * r['test_acc_flip']:.2f}%, "
                f"{100 * r['difference_flip']:+.2f}" if r["difference_flip"] is not None else "–")
        lines.append(f"| {r['change']} (`ablation-{r['ablation']}`) | {r['run']}, {r['epochs']} epochs | "
                     f"{r['precision']} | {100 * r['recipe_test_acc']:.2f}% | {100 * r['test_acc']:.2f}% | "
                     f"{100 * r['difference']:+.2f} | {flip} | {r['recipe_minutes']:.1f}, {r['minutes']:.1f} |")
    return lines


def report_ablations(recipe: str) -> None:
    rows = ablations(recipe)
    lines = ablation_table(rows)
    print("\n".join(["", *lines]))
    write_json(OUT / "ablations.json", {"recipe": recipe, "rows": rows,
                                        "command": "python benchmarks/time_to_accuracy.py --ablation NAME"})
    write_atomic(OUT / "ablations.md", "\n".join(lines) + "\n")


def report(recipe: str) -> None:
    runs = curves(recipe)
    machine = {"cpu": cpu_name(), "bf16_units": bf16_units(),
               "avx2": "avx2" in cpu_flags(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    write_json(OUT / f"{recipe}.json", {"recipe": recipe, "runs": runs, "report_written_on": machine,
                                        "command": "python benchmarks/time_to_accuracy.py"})
    lines = ["| entry | final test acc | with flips | training minutes | img/s | ran on |", "|---|---|---|---|---|---|"]
    for label, r in runs.items():
        last = r["points"][-1]
        flips = r.get("tta_test_acc") if last["test_acc_flip"] is None else last["test_acc_flip"]
        img_s = last.get("img_per_s")
        lines.append(f"| {label} | {100 * last['test_acc']:.2f}% | "
                     + (f"{100 * flips:.2f}%" if flips is not None else "–")
                     + f" | {last['minutes']:.1f} | " + (f"{img_s:.0f}" if img_s else "–")
                     + f" | {', '.join(r['hardware'])} |")
    lines += seed_summary(runs)
    print("\n".join(lines))
    write_atomic(OUT / f"{recipe}_table.md", "\n".join(lines) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, r in runs.items():
        ax.plot([p["minutes"] for p in r["points"]], [100 * p["test_acc"] for p in r["points"]], marker="o",
                label=label)
    ax.axhline(90, color="grey", linestyle=":", label="90%")
    ax.axvline(25, color="grey", linestyle="--", label="25 minutes")
    ax.set(xlabel="training time (minutes; evaluation left out)", ylabel="test accuracy (%), no test-time flips",
           title=f"CIFAR-10 (JPEG q75 copy), full training set, recipe {recipe}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, OUT / f"{recipe}.png")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="cifar-fast")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="train the recipe for this many epochs instead of its own")
    p.add_argument("--only", nargs="*", help="entries to train (model:kind[:options] or airbench); default all")
    p.add_argument("--report", action="store_true", help="only the table and plot of the committed runs")
    p.add_argument("--ablation", choices=sorted(ABLATIONS),
                   help=f"train the recipe with this one change (default {ABLATION_EPOCHS} epochs, resnet56:residual "
                        "unless --only) into ablation-<name>/, then report the ablations")
    args = p.parse_args()
    if args.ablation:
        epochs = args.epochs or ABLATION_EPOCHS
        if not args.report:
            for entry in args.only or ["resnet56:residual"]:
                ablation_base(entry, args.recipe, args.seed, epochs)
                train_entry(entry, args.recipe, args.seed, epochs, args.ablation)
        report_ablations(args.recipe)
        return
    if not args.report:
        for entry in args.only or [*ENTRIES, "airbench"]:
            if entry == "airbench":
                if not AIRBENCH.exists():
                    train_airbench()
            else:
                train_entry(entry, args.recipe, args.seed, args.epochs)
    report(study(args.recipe, args.epochs))
    report_ablations(args.recipe)


if __name__ == "__main__":
    main()
