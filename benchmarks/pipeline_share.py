"""The data pipeline's share of a resnet20 training step on CPU (target: under 5%).

Both are timed side by side in one process, interleaved over rounds:
  data  = drawing a batch from the TensorLoader (crop, flip, normalise, channels-last);
  step  = the same batch draw plus forward, backward and an SGD step.
share = median(data) / median(step).

    python benchmarks/pipeline_share.py --data-dir ../shared/data/cifar10-jpeg [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import pnnh
from pnnh.data import load_dataset, make_loader

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg"))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="batches per timing")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    data = load_dataset("imagefolder", args.data_dir, "train")
    loader = make_loader(data, args.batch_size, True, "cpu", seed=0, channels_last=True)
    model = pnnh.create_model("resnet20", num_classes=10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    batches = loader.batches(epoch=0)

    def time_data() -> float:
        start = time.perf_counter()
        for _ in range(args.steps):
            next(batches)
        return (time.perf_counter() - start) / args.steps

    def time_step() -> float:
        start = time.perf_counter()
        for _ in range(args.steps):
            x, y = next(batches)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - start) / args.steps

    time_step()  # warm-up
    data_times, step_times = [], []
    for r in range(args.rounds):
        if len(loader) - 2 * args.steps * (r + 2) < 0:
            batches = loader.batches(epoch=r + 1)
        data_times.append(time_data())
        step_times.append(time_step())
        print(f"round {r + 1}/{args.rounds}: data {1e3 * data_times[-1]:.2f} ms, "
              f"step {1e3 * step_times[-1]:.1f} ms", file=sys.stderr)
    share = statistics.median(data_times) / statistics.median(step_times)
    result = {"benchmark": "pipeline_share", "model": "resnet20", "data": "CIFAR-10 (JPEG q75 copy)",
              "batch_size": args.batch_size, "threads": torch.get_num_threads(),
              "data_ms": 1e3 * statistics.median(data_times), "step_ms": 1e3 * statistics.median(step_times),
              "share": share, "share_min_max": [min(d / s for d, s in zip(data_times, step_times)),
                                                max(d / s for d, s in zip(data_times, step_times))]}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"data pipeline: {result['data_ms']:.2f} ms of a {result['step_ms']:.1f} ms resnet20 step "
              f"(batch {args.batch_size}): {100 * share:.2f}% "
              f"(per round {100 * result['share_min_max'][0]:.2f}-{100 * result['share_min_max'][1]:.2f}%)")


if __name__ == "__main__":
    main()
