"""Print the stale smoke benchmark's table (docs/results.md) from benchmarks/results/smoke/*/results.json.

    python benchmarks/summarise.py
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "smoke"


def main() -> None:
    print("| depth | entry | params | seeds | final test acc (mean ± std) | vs residual (points) |")
    print("|---|---|---|---|---|---|")
    for name in ("depth20", "depth56", "depth110"):
        path = RESULTS / name / "results.json"
        if not path.exists():
            print(f"| {name[5:]} | (not run) | | | | |")
            continue
        results = json.loads(path.read_text())
        for r in results["entries"]:
            print(f"| {name[5:]} | {r['kind']}" + (f" ({r['variant']})" if r["variant"] != "default" else "")
                  + f" | {r['params'] / 1e6:.2f}M | {len(r['seeds'])} | {100 * r['test_acc_mean']:.1f} ± "
                  f"{100 * r['test_acc_std']:.1f}% | {100 * r['delta_acc_vs_reference']:+.1f} |")


if __name__ == "__main__":
    main()
