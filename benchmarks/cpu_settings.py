"""Speed of the CPU settings side by side: float32 vs bf16 autocast, NCHW vs channels-last, eager vs
torch.compile, for the three kinds of one model. Every setting is timed in this one process, in
interleaved rounds (settings A B C A B C ...), and reported as a ratio to float32 eager NCHW.

    python benchmarks/cpu_settings.py --model resnet56 --batch-size 64 --rounds 3 [--compile] > out.json
    python benchmarks/cpu_settings.py --batch-size 512 --settings fp32,fp32_channels_last > out.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from pnnh.bench import bench
from pnnh.device import bf16_units, cpu_flags, cpu_name
from pnnh.entries import parse_entries


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet56")
    p.add_argument("--kinds", default="residual,plain,pnnh")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also time torch.compile (float32, NCHW)")
    p.add_argument("--settings", default="fp32,fp32_channels_last,bf16,bf16_channels_last",
                   help="which settings to time (fp32 always runs: it is the ratios' base); on a CPU without "
                        "bf16 units leave the bf16 ones out at large batches (emulated, about 0.07x)")
    args = p.parse_args()
    entries = parse_entries(",".join(f"{args.model}:{k}" for k in args.kinds.split(",")))
    settings = {"fp32": dict(amp="none", channels_last=False),
                "fp32_channels_last": dict(amp="none", channels_last=True),
                "bf16": dict(amp="bf16", channels_last=False),
                "bf16_channels_last": dict(amp="bf16", channels_last=True)}
    if args.compile:
        settings["fp32_compile"] = dict(amp="none", channels_last=False, compile=True)
    asked = set(args.settings.split(","))
    if unknown := asked - set(settings):
        p.error(f"unknown setting(s) {', '.join(sorted(unknown))}; settings: {', '.join(settings)}")
    settings = {k: v for k, v in settings.items() if k in asked | {"fp32", "fp32_compile"}}
    times: dict[str, dict[str, dict[str, list[float]]]] = {s: {} for s in settings}
    for r in range(args.rounds):
        for name, options in settings.items():
            out = bench(entries, batch_size=args.batch_size, repeats=1, steps=args.steps, warmup=2, **options)
            for row in out["entries"]:
                t = times[name].setdefault(row["label"], {"train": [], "infer": []})
                t["train"].append(row["train_img_s"])
                t["infer"].append(row["infer_img_s"])
            print(f"round {r + 1}/{args.rounds} {name} done", file=sys.stderr)
    rows = []
    for name in settings:
        for label, t in times[name].items():
            base = times["fp32"][label]
            rows.append({"setting": name, "entry": label, "train_img_s": statistics.median(t["train"]),
                         "infer_img_s": statistics.median(t["infer"]),
                         "train_ratio_to_fp32": statistics.median(t["train"]) / statistics.median(base["train"]),
                         "infer_ratio_to_fp32": statistics.median(t["infer"]) / statistics.median(base["infer"])})
    print(json.dumps({"command": "python benchmarks/cpu_settings.py " + " ".join(sys.argv[1:]), "cpu": cpu_name(),
                      "bf16_units": bf16_units(), "avx2": "avx2" in cpu_flags(), "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "batch_size": args.batch_size, "rounds": args.rounds,
                      "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
