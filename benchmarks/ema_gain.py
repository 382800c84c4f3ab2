"""What the average of the weights (EMA) adds to the time-to-accuracy recipe, at no training cost.

    python benchmarks/ema_gain.py     # every finished run under benchmarks/results/time_to_accuracy/ with a last.pt

The EMA never feeds back into training: a run's trained weights (``pnnh eval --weights raw`` on its last.pt)
are exactly what the same run without ``--ema`` would have ended with. So evaluating both sets of one
checkpoint is the one-change ablation of the EMA, seed for seed. Each run's last.pt is evaluated on the full
10,000-image test set twice, with its own precision, batch size and flips; the average's figure is checked
against the accuracy the run recorded for its last epoch. Writes ema_gain.json and ema_gain.md beside the
runs. Checkpoints are not committed: this runs where the runs were trained.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from pnnh.config import TrainConfig
from pnnh.device import bf16_units, cpu_name
from pnnh.evaluate import EVAL_OPTIONS, evaluate_checkpoint
from pnnh.io import write_atomic, write_json
from pnnh.train import read_metrics

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "time_to_accuracy"


def finished_ema_runs() -> list[tuple[Path, TrainConfig, dict]]:
    """(folder, config, last epoch's row) of every run whose last epoch is recorded, that kept an average of
    the weights, and whose last.pt is here."""
    runs = []
    for run in sorted(OUT.glob("*/runs/*")):
        try:
            config = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
            rows = read_metrics(run)
        except (OSError, ValueError):
            continue
        if len(rows) == config.epochs and config.ema and (run / "last.pt").exists():
            runs.append((run, config, rows[-1]))
    return runs


def measure(run: Path, config: TrainConfig, recorded: dict) -> dict:
    cfg = TrainConfig(**{k: getattr(config, k) for k in EVAL_OPTIONS})  # the run's own data, precision, flips
    row = {"run": str(run.relative_to(OUT)), "epochs": config.epochs, "seed": config.seed, "lr": config.lr,
           "recorded_test_acc": recorded["test_acc"], "recorded_test_acc_flip": recorded.get("test_acc_flip")}
    for weights in ("ema", "raw"):
        print(f"{row['run']}: {weights}", file=sys.stderr, flush=True)
        result = evaluate_checkpoint(run / "last.pt", cfg, weights=weights)
        row[weights] = {"top1": result["top1"], "top1_flip": result["top1_flip"], "loss": result["loss"]}
    row["gain"] = row["ema"]["top1"] - row["raw"]["top1"]
    row["gain_flip"] = row["ema"]["top1_flip"] - row["raw"]["top1_flip"] if config.eval_flip else None
    return row


def main() -> None:
    rows = [measure(*found) for found in finished_ema_runs()]
    if not rows:
        raise SystemExit("no finished run with an average of the weights and its last.pt under " + str(OUT))
    write_json(OUT / "ema_gain.json", {"runs": rows, "machine": {"cpu": cpu_name(), "bf16_units": bf16_units()},
                                       "command": "python benchmarks/ema_gain.py"})
    lines = ["| run | epochs | seed | recorded (EMA) | EMA | trained weights | gain | gain with flips |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flip = "–" if r["gain_flip"] is None else f"{100 * r['gain_flip']:+.2f}"
        lines.append(f"| {r['run']} | {r['epochs']} | {r['seed']} | {100 * r['recorded_test_acc']:.2f}% | "
                     f"{100 * r['ema']['top1']:.2f}% | {100 * r['raw']['top1']:.2f}% | "
                     f"{100 * r['gain']:+.2f} | {flip} |")
    gains = [100 * r["gain"] for r in rows]
    lines.append(f"\nGain of the average, points: mean {statistics.fmean(gains):+.2f} over {len(gains)} runs "
                 f"(from {min(gains):+.2f} to {max(gains):+.2f}).")
    print("\n".join(lines))
    write_atomic(OUT / "ema_gain.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
