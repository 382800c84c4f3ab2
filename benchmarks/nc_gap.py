"""The PNNH gap against the training budget (issue: evidence near convergence, item 3).

    python benchmarks/nc_gap.py     # prints the table; writes results/gpu_nc_cifar-fast/gap.{json,png}

For resnet56, pnnh minus residual (points of final test accuracy, mean over seeds, +- 2 standard errors
of the difference) at each budget whose runs are committed:
- 20,000 images x 8 epochs: the evidence matrix (benchmarks/results/evidence/, its own recipe: batch 128,
  lr 0.2, float32, on the CPU);
- 1/4, 1/2, 1 and 2 times 25 epochs on all 50,000 images with the time-to-accuracy recipe `cifar-fast`
  (benchmarks/results/gpu_nc_cifar-fast/nc_quarter, nc_half, nc_a56, nc_double; on a lent GPU).
The x axis is training images seen. Only measured points are drawn: no curve is fitted or extended.
"""
from __future__ import annotations

import math

from verdict import NEAR, RESULTS, finished_runs, stats

from pnnh.io import save_figure, write_json

VARIANTS = ("resnet56:pnnh:code_ratio=0.5", "resnet56:pnnh:coder=learned,coder_share=block")
REFERENCE = "resnet56:residual"
BUDGETS = [  # (name, folder, stages or None)
    ("20k x 8 (evidence recipe)", RESULTS / "evidence", None),
    ("cifar-fast 1/4", NEAR, ("nc_quarter",)),
    ("cifar-fast 1/2", NEAR, ("nc_half",)),
    ("cifar-fast", NEAR, ("nc_a56",)),
    ("cifar-fast x2", NEAR, ("nc_double",)),
]


def gaps() -> list[dict]:
    """One row per (budget, variant) with both entries run: their stats, the gap and its standard error."""
    rows = []
    for name, folder, stages in BUDGETS:
        raw, budget = finished_runs(folder, stages)
        if budget is None or REFERENCE not in raw:
            continue
        images = (budget["train_subset"] or 50_000) * budget["epochs"]
        ref = stats(raw[REFERENCE])
        for variant in VARIANTS:
            if variant not in raw:
                continue
            s = stats(raw[variant])
            ses = [x["se"] for x in (s, ref)]
            se = math.sqrt(sum(v ** 2 for v in ses)) if all(x["n"] > 1 for x in (s, ref)) else None
            rows.append({"budget": name, "images_seen": images, "epochs": budget["epochs"], "variant": variant,
                         "reference": ref, "pnnh": s, "gap": s["mean"] - ref["mean"], "se": se})
    return rows


def plot(rows: list[dict], path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, variant in enumerate(VARIANTS):
        for recipe, marker in (("20k", "s"), ("cifar-fast", "o")):  # two recipes: points not joined across them
            pts = [r for r in rows if r["variant"] == variant and r["budget"].startswith(recipe)]
            if not pts:
                continue
            ax.errorbar([r["images_seen"] for r in pts], [r["gap"] for r in pts],
                        yerr=[2 * r["se"] if r["se"] is not None else 0 for r in pts], marker=marker,
                        color=f"C{i}", capsize=3, label=f"{variant.split(':', 2)[2]} ({recipe})")
            for r in pts:
                ax.annotate(f"{min(r['pnnh']['n'], r['reference']['n'])} seeds", (r["images_seen"], r["gap"]),
                            xytext=(4, 4), textcoords="offset points", fontsize=7, color=f"C{i}")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.axhline(-1, color="grey", linestyle=":", linewidth=0.8, label="on-par margin (-1 point)")
    ax.set(xscale="log", xlabel="training images seen", ylabel="pnnh - residual (points), ± 2 SE",
           title="resnet56: the PNNH gap against the training budget")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    rows = gaps()
    write_json(NEAR / "gap.json", {"reference": REFERENCE, "rows": rows})
    plot(rows, NEAR / "gap.png")
    print("| budget | images seen | variant | residual | pnnh | gap ± 2 SE (points) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        spread = f" ± {2 * r['se']:.2f}" if r["se"] is not None else " (one seed: no spread)"
        print(f"| {r['budget']} | {r['images_seen']:,} | {r['variant'].split(':', 2)[2]} | "
              f"{r['reference']['mean']:.2f} ({r['reference']['n']}) | {r['pnnh']['mean']:.2f} ({r['pnnh']['n']}) | "
              f"{r['gap']:+.2f}{spread} |")


if __name__ == "__main__":
    main()
