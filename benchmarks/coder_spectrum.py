"""Why a learned, stage-shared coder diverges: the spectrum of E^T E over the first steps of the evidence recipe.

    python benchmarks/coder_spectrum.py                  # seeds 0-2, coder_share stage and block, 30 steps
    python benchmarks/coder_spectrum.py --seeds 1 --steps 20 --every 5

A learned tied coder's internal path is E^T E x (act(u) - act(-u) = u for ReLU). It starts at the identity
(E orthogonal); a learned E drifts, and where one E serves every block of a stage the drift compounds along
the stage's chain of blocks. This trains resnet56 pnnh with coder=learned (the evidence matrix's stage d,
on its recipe, read from stage d's committed run configs) for a few steps at a time, resuming each time
(bit for bit), and records the largest and smallest eigenvalue of E^T E of each distinct coder after every
`--every` steps, until `--steps` or until the run diverges. Writes
benchmarks/results/coder_spectrum/{spectrum.json,README.md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import torch

from pnnh.checkpoint import load_checkpoint
from pnnh.config import TrainConfig
from pnnh.io import write_atomic, write_json
from pnnh.progress import log, setup_logging
from pnnh.train import TrainingDiverged, TrainingInterrupted, train

ROOT = Path(__file__).resolve().parents[1]

# The recipe is the one stage d trained with, read from its recorded run config (one source: evidence.sh)
STAGE_D = ROOT / "benchmarks" / "results" / "evidence" / "d_learned56" / "runs"
DATA_DIR = str(ROOT.parent / "shared" / "data" / "cifar10-jpeg")


def stage_d_config(share: str, seed: int, data_dir: str, output: Path, every: int) -> TrainConfig:
    """Stage d's recorded config for this coder_share, with this seed and output, stopping every few steps."""
    path = STAGE_D / f"resnet56-pnnh-coderlearned-coder_share{share}-seed0" / "config.json"
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: cannot read stage d's recorded recipe {path} ({e}): run "
                         f"`bash benchmarks/evidence.sh d_learned56` first, or check out its committed runs") from None
    return replace(TrainConfig.from_dict(recorded), seed=seed, data_dir=data_dir, output=str(output),
                   stop_after_steps=every)


def spectrum(checkpoint: Path) -> list[dict]:
    """For each distinct tied coder E (blocks sharing one E are one entry; the stage-changing projections,
    whose path is BN(D E x), are left out): the blocks, and E^T E's extreme eigenvalues (1 at the start)."""
    state = load_checkpoint(checkpoint)["model"]  # torch.load keeps a shared E one tensor
    groups: dict[int, dict] = {}
    for key, w in state.items():
        parts = key.split(".")  # a tied coder's E: blocks.<i>.coder.weight, without a coder.conv (projection)
        if len(parts) == 4 and parts[0] == "blocks" and parts[2:] == ["coder", "weight"] \
                and f"blocks.{parts[1]}.coder.conv.weight" not in state:
            g = groups.setdefault(w.untyped_storage().data_ptr(), {"blocks": [], "weight": w.double()})
            g["blocks"].append(int(parts[1]))
    out = []
    for g in groups.values():
        e = torch.linalg.eigvalsh(g["weight"].t() @ g["weight"])
        out.append({"blocks": g["blocks"], "eig_max": e.max().item(), "eig_min": e.min().item()})
    return sorted(out, key=lambda g: g["blocks"][0])


def trace(cfg: TrainConfig, steps: int) -> dict:
    folder, every = cfg.run_dir, cfg.stop_after_steps
    rows, diverged = [], None
    while len(rows) * every < steps:
        last = folder / "last.pt"
        try:
            train(cfg, last if last.exists() else None)
        except TrainingInterrupted:
            rows.append({"step": (len(rows) + 1) * every, "coders": spectrum(last)})
            continue
        except TrainingDiverged as e:
            diverged = {"epoch": e.epoch, "step": e.step}
        break
    return {"seed": cfg.seed, "coder_share": cfg.model_kwargs["coder_share"], "rows": rows, "diverged": diverged}


def table(traces: list[dict]) -> list[str]:
    lines = ["| seed | coder_share | step | largest eigenvalue of E^T E, per stage (stage 1 / 2 / 3; block-wise: "
             "the largest over the stage's coders) |", "|---|---|---|---|"]
    for t in traces:
        for row in t["rows"]:
            by_stage = {}
            for g in row["coders"]:  # blocks 0-8 stage 1, 9-17 stage 2, 18-26 stage 3 (resnet56)
                stage = g["blocks"][0] // 9
                by_stage[stage] = max(by_stage.get(stage, 0.0), g["eig_max"])
            lines.append(f"| {t['seed']} | {t['coder_share']} | {row['step']} | "
                         + " / ".join(f"{by_stage[s]:.3g}" for s in sorted(by_stage)) + " |")
        if t["diverged"]:
            lines.append(f"| {t['seed']} | {t['coder_share']} | {t['diverged']['step']} | diverged (loss or "
                         f"gradient NaN/inf) |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--shares", default="stage,block")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--data-dir", default=DATA_DIR)
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "coder_spectrum"))
    args = p.parse_args()
    setup_logging()  # the trainings' progress on stderr, as the command line shows it
    traces, recipe = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            for share in args.shares.split(","):
                log.info(f"seed {seed}, coder_share={share}")
                cfg = stage_d_config(share, seed, args.data_dir, Path(tmp) / f"{share}{seed}", args.every)
                recipe = recipe or {k: v for k, v in asdict(cfg).items()
                                    if k not in ("seed", "output", "stop_after_steps", "model_kwargs")}
                traces.append(trace(cfg, args.steps))
    command = "python benchmarks/coder_spectrum.py " + " ".join(sys.argv[1:])
    out = Path(args.output)
    write_json(out / "spectrum.json", {"command": command.strip(), "recipe": recipe, "traces": traces})
    lines = table(traces)
    write_atomic(out / "README.md", "\n".join([
        "# The learned coder's spectrum over the first steps", "",
        "resnet56 pnnh, coder=learned, on the evidence recipe (CIFAR-10 (JPEG q75 copy), 20,000 training images, "
        "SGD lr 0.2 one-cycle, batch 128, float32), traced every few steps. E starts orthogonal (E^T E = I, every "
        f"eigenvalue 1). Command: `{command.strip()}`.", "", *lines, ""]))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
