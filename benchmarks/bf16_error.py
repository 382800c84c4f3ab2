"""How far bf16 autocast moves each entry's output from its own float32 output, at initialisation.

A matrix run in bf16 compares the kinds under bf16 rounding; that is fair only if the rounding disturbs
them alike. For each entry and seed: logits of one batch of standard-normal inputs in float32 and under
bf16 autocast (CPU), and the rms and max of their difference over the float32 logits' standard deviation.

    python benchmarks/bf16_error.py --entries vit_cifar_24:residual,vit_cifar_24:pnnh:code_ratio=0.5 > out.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from pnnh import create_model
from pnnh.entries import parse_entries


def relative_error(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(rms, max) of |bf16 logits - float32 logits| / std(float32 logits)."""
    with torch.no_grad():
        ref = model(x).double()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x).double()
    diff, scale = (low - ref).abs(), ref.std()
    return (diff.pow(2).mean().sqrt() / scale).item(), (diff.max() / scale).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", required=True, help="comma-separated model:kind[:options], as pnnh bench takes")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int, default=32)
    args = p.parse_args()
    rows = []
    for entry in parse_entries(args.entries):
        rms, peak = [], []
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            model = create_model(entry.model, kind=entry.kind, num_classes=10, **entry.kwargs).eval()
            x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
            r, m = relative_error(model, x)
            rms.append(r)
            peak.append(m)
        rows.append({"entry": entry.label, "rms": rms, "max": peak, "rms_median": statistics.median(rms)})
        print(f"{entry.label}: rms {', '.join(f'{v:.4f}' for v in rms)}", file=sys.stderr)
    print(json.dumps({"command": "python benchmarks/bf16_error.py " + " ".join(sys.argv[1:]),
                      "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
