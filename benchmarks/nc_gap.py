"""The PNNH gap against the training budget, and against the learning rate (issue: evidence near
convergence, items 3 and 4).

    python benchmarks/nc_gap.py     # prints both tables; writes results/gpu_nc_cifar-fast/gap.{json,png}
                                    # and results/evidence_lr/lr.json

For resnet56, pnnh minus residual (points of final test accuracy, mean over seeds, +- 2 standard errors
of the difference) at each budget whose runs are committed:
- 20,000 images x 8 epochs: the evidence matrix (benchmarks/results/evidence/, its own recipe: batch 128,
  lr 0.2, float32, on the CPU);
- 1/4, 1/2, 1 and 2 times 25 epochs on all 50,000 images with the time-to-accuracy recipe `cifar-fast`
  (benchmarks/results/gpu_nc_cifar-fast/nc_quarter, nc_half, nc_a56, nc_double; on a lent GPU).
The x axis is training images seen. Only measured points are drawn: no curve is fitted or extended.

The device: the matrix ran on a lent GPU, and a seed missing there may run on a CPU at the same settings;
the control is the residual resnet56 at the full budget on each (nc_a56 on the GPU, the time-to-accuracy
runs of benchmarks/results/time_to_accuracy/cifar-fast-25ep/ on the CPU): their difference, +- 2 SE.

The learning rate: at the 20k x 8 budget, residual and pnnh `code_ratio=0.5` at the evidence recipe's
lr 0.2 (stages a and c of benchmarks/results/evidence/) and at half and double it
(benchmarks/results/evidence_lr/lr_half, lr_double: `JOBS=2 bash benchmarks/evidence.sh lr_half
lr_double`), and the gap with each kind at its own best learning rate (best by mean accuracy over its
finished seeds: 3 at lr 0.2, 2 at the others; a learning rate at which a seed diverged is never the best).
"""
from __future__ import annotations

import math

from verdict import NEAR, RESULTS, finished_runs, stats

from pnnh.io import save_figure, write_json

VARIANTS = ("resnet56:pnnh:code_ratio=0.5", "resnet56:pnnh:coder=learned,coder_share=block")
REFERENCE = "resnet56:residual"
LR_SWEEP = [(0.1, RESULTS / "evidence_lr", ("lr_half",)), (0.2, RESULTS / "evidence", ("a_depth56", "c_width56")),
            (0.4, RESULTS / "evidence_lr", ("lr_double",))]
BUDGETS = [  # (name, folder, stages or None)
    ("20k x 8 (evidence recipe)", RESULTS / "evidence", None),
    ("cifar-fast 1/4", NEAR, ("nc_quarter",)),
    ("cifar-fast 1/2", NEAR, ("nc_half",)),
    ("cifar-fast", NEAR, ("nc_a56",)),
    ("cifar-fast x2", NEAR, ("nc_double",)),
]


def difference(a: dict, b: dict) -> dict:
    """mean(a) - mean(b) with its standard error (None unless both have 2 seeds or more). Unlike verdict's
    contrast it asks no 3 seeds: the gap is shown at every budget, decided at none."""
    se = math.sqrt(a["se"] ** 2 + b["se"] ** 2) if a["n"] > 1 and b["n"] > 1 else None
    return {"gap": a["mean"] - b["mean"], "se": se}


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
            rows.append({"budget": name, "images_seen": images, "epochs": budget["epochs"], "variant": variant,
                         "reference": ref, "pnnh": s, **difference(s, ref)})
    return rows


CPU_RUNS = RESULTS / "time_to_accuracy"  # the recipe's own runs on the CPU (benchmarks/time_to_accuracy.py)


def device_control() -> dict | None:
    """The residual resnet56 at the full budget on the CPU minus on the GPU, with its standard error."""
    cpu, budget_cpu = finished_runs(CPU_RUNS, ("cifar-fast-25ep",))
    gpu, _ = finished_runs(NEAR, ("nc_a56",))
    if REFERENCE not in cpu or REFERENCE not in gpu:
        return None
    a, b = stats(cpu[REFERENCE]), stats(gpu[REFERENCE])
    return {"cpu": a | {"hardware": budget_cpu["hardware"]}, "gpu": b, **difference(a, b)}


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


def lr_sweep() -> dict:
    """{kind label: {lr: stats}} over the sweep, the best lr of each kind, and the gap at each one's best."""
    by_kind: dict[str, dict[float, dict]] = {REFERENCE: {}, VARIANTS[0]: {}}
    for lr, folder, stages in LR_SWEEP:
        raw, budget = finished_runs(folder, stages)
        if budget is not None and budget["lr"] != lr:
            raise SystemExit(f"nc_gap: {folder} {stages} ran at lr {budget['lr']}, not {lr}")
        for label in by_kind:
            if label in raw:
                by_kind[label][lr] = stats(raw[label])
    clean = {k: {lr: st for lr, st in v.items() if st["n"] and not st["diverged"]} for k, v in by_kind.items()}
    best = {k: max(v, key=lambda lr: v[lr]["mean"]) for k, v in clean.items() if v}  # a diverged lr is never best
    out: dict = {"accuracy": {k: {str(lr): s for lr, s in v.items()} for k, v in by_kind.items()},
                 "best_lr": best}
    if len(best) == 2:
        out["gap_at_best"] = difference(by_kind[VARIANTS[0]][best[VARIANTS[0]]], by_kind[REFERENCE][best[REFERENCE]])
    return out


def main() -> None:
    sweep = lr_sweep()
    write_json(RESULTS / "evidence_lr" / "lr.json", sweep)
    rows = gaps()
    control = device_control()
    write_json(NEAR / "gap.json", {"reference": REFERENCE, "rows": rows, "device_control": control})
    plot(rows, NEAR / "gap.png")
    print("| budget | images seen | variant | residual | pnnh | gap ± 2 SE (points) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        spread = f" ± {2 * r['se']:.2f}" if r["se"] is not None else " (one seed: no spread)"
        print(f"| {r['budget']} | {r['images_seen']:,} | {r['variant'].split(':', 2)[2]} | "
              f"{r['reference']['mean']:.2f} ({r['reference']['n']}) | {r['pnnh']['mean']:.2f} ({r['pnnh']['n']}) | "
              f"{r['gap']:+.2f}{spread} |")
    if control:
        print(f"\ndevice control, residual resnet56 at the full budget: CPU {control['cpu']['mean']:.2f} "
              f"({control['cpu']['n']} seeds) minus GPU {control['gpu']['mean']:.2f} ({control['gpu']['n']} seeds): "
              f"{control['gap']:+.2f}" + (f" ± {2 * control['se']:.2f}" if control["se"] is not None else ""))
    print("\n| lr (20k x 8) | " + " | ".join(sweep["accuracy"]) + " |")
    print("|---|---|---|")
    for lr, _, _ in LR_SWEEP:
        cells = [sweep["accuracy"][k].get(str(lr)) for k in sweep["accuracy"]]
        print(f"| {lr:g} | " + " | ".join(f"{c['mean']:.2f} ± {c['std']:.2f} ({c['n']} seeds)" if c and c["n"] > 1
                                           else f"{c['mean']:.2f} (1 seed)" if c else "not run" for c in cells) + " |")
    if "gap_at_best" in sweep:
        g = sweep["gap_at_best"]
        print(f"\nbest lr: {sweep['best_lr']}; gap at each kind's best: {g['gap']:+.2f}"
              + (f" ± {2 * g['se']:.2f} (2 SE)" if g["se"] is not None else ""))


if __name__ == "__main__":
    main()
