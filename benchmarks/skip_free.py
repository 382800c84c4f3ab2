"""The skip-free kinds side by side, and does the probe at initialisation predict which nets train?

    python benchmarks/skip_free.py              # probe what is missing, then report
    python benchmarks/skip_free.py --report     # only the report, from the committed results

The accuracies are the 20k x 8 budget's (benchmarks/evidence.sh: stages a-e, and f_skipfree56,
g_skipfree110 for the kinds tat, looks_linear, dirac, repvgg), read from benchmarks/results/evidence/ (the
CPUs' runs) and benchmarks/results/gpu_skipfree_evidence/ (the same budget on an H200 in float32,
benchmarks/gpu.sh MATRIX=skipfree). An entry's seeds all come from one device, the one with more finished
seeds (the CPUs' on a tie); the table names it, and the GPU folder's residual resnet56 (control56) set
against the CPUs' is the control for the device.

The probe scalar at initialisation, defined once (docs/skip-free.md): the linear CKA between the input
images and the output of the net's last non-linear layer (the features the classifier pools), on 256
test images of CIFAR-10 (JPEG q75 copy), BatchNorm on the batch's statistics (a net at initialisation),
averaged over seeds 0, 1, 2 (each seed draws the weights and the 256 images). It is computed for every
entry of the budget, cached in benchmarks/results/skip_free/probe_init.json (a run continues where it
stopped), and set against the entry's final test accuracy (mean over its finished seeds): the Spearman
rank correlation with a bootstrap interval over entries, a scatter plot, and the outliers named.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

import torch
from verdict import finished_runs, stats

from pnnh.analysis.probe import load_probe_images, probe
from pnnh.device import bf16_units, cpu_name
from pnnh.entries import Entry
from pnnh.hub import create_model
from pnnh.io import save_figure, write_atomic, write_json
from pnnh.profile import count_params

ROOT = Path(__file__).resolve().parents[1]
EVIDENCE = ROOT / "benchmarks" / "results" / "evidence"
GPU_EVIDENCE = ROOT / "benchmarks" / "results" / "gpu_skipfree_evidence"
OUT = ROOT / "benchmarks" / "results" / "skip_free"
DATA_DIR = str(ROOT.parent / "shared" / "data" / "cifar10-jpeg")
SEEDS, IMAGES = (0, 1, 2), 256
DEFINITION = ("linear CKA between the input images and the output of the net's last non-linear layer, at "
              "initialisation (BatchNorm on the batch's statistics), on 256 test images of CIFAR-10 (JPEG q75 "
              "copy); per seed, the seed draws the weights and the images")


def ranks(v: list[float]) -> list[float]:
    """0-based ranks, ties sharing their average rank."""
    order = sorted(range(len(v)), key=v.__getitem__)
    r = [0.0] * len(v)
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2
        i = j + 1
    return r


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return cov / den if den else float("nan")


def bootstrap(x: list[float], y: list[float], n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of Spearman's rho, resampling entries with replacement."""
    rng = random.Random(seed)
    rhos = []
    for _ in range(n):
        idx = [rng.randrange(len(x)) for _ in x]
        rho = spearman([x[i] for i in idx], [y[i] for i in idx])
        if rho == rho:  # a resample of one repeated entry has no ranks
            rhos.append(rho)
    rhos.sort()
    return rhos[int(0.025 * len(rhos))], rhos[int(0.975 * len(rhos)) - 1]


def accuracies() -> dict[str, dict]:
    """{entry label: stats of its final test accuracies, with "device"} over every stage of the 20k x 8
    budget; each entry's seeds from one device (the one with more finished seeds, the CPUs' on a tie)."""
    cpu, _ = finished_runs(EVIDENCE)
    gpu, _ = finished_runs(GPU_EVIDENCE, stages=("f_skipfree56", "g_skipfree110"))  # none if no folder
    out = {}
    for label in sorted(set(cpu) | set(gpu)):
        device, values = max((("cpu", cpu.get(label) or []), ("gpu", gpu.get(label) or [])),
                             key=lambda d: (len(d[1]), d[0] == "cpu"))
        if (s := stats(values)) is not None:
            out[label] = s | {"device": device}
    return out


def device_control() -> dict | None:
    """Residual resnet56 at the budget on both devices: {"cpu": stats, "gpu": stats}, if both ran."""
    cpu, _ = finished_runs(EVIDENCE, stages=("a_depth56",))
    gpu, _ = finished_runs(GPU_EVIDENCE, stages=("control56",))
    label = "resnet56:residual"
    if not cpu.get(label) or not gpu.get(label):
        return None
    return {"entry": label, "cpu": stats(cpu[label]), "gpu": stats(gpu[label])}


def probe_missing(labels: list[str]) -> dict[str, dict]:
    """The init scalar of every entry (cached per entry and seed in probe_init.json)."""
    path = OUT / "probe_init.json"
    cache = json.loads(path.read_text()) if path.exists() else {"definition": DEFINITION,
                                                                 "entries": {}}
    for seed in SEEDS:
        images, _, num_classes = load_probe_images("imagefolder", DATA_DIR, IMAGES, seed)
        for label in labels:
            done = cache["entries"].setdefault(label, {})
            if str(seed) in done:
                entry = Entry.parse(label)
                with torch.device("meta"):
                    params = count_params(create_model(entry.model, kind=entry.kind, num_classes=num_classes,
                                                       **entry.kwargs))
                if done[str(seed)].get("params") == params:
                    continue
                print(f"{label} seed {seed}: the cached reading is of another model definition "
                      f"({done[str(seed)].get('params')} parameters, now {params}): probed again", file=sys.stderr)
            entry = Entry.parse(label)
            torch.manual_seed(seed)
            model = create_model(entry.model, kind=entry.kind, num_classes=num_classes, **entry.kwargs)
            run = probe(model, images, metrics=("cka", "survival"), seed=seed, batch_stats=True)
            done[str(seed)] = {"last_cka": run["layers"][-1]["cka"], "last_survival": run["layers"][-1]["survival"],
                               "noise_floor_cka": run["noise_floor"]["cka"], "layers": len(run["layers"]),
                               "params": count_params(model)}
            write_json(path, cache)  # after every probe: an interrupted run keeps what it measured
            print(f"{label} seed {seed}: CKA at the last layer {done[str(seed)]['last_cka']:.4f}", file=sys.stderr)
    return cache["entries"]


def report(acc: dict[str, dict], probes: dict[str, dict]) -> None:
    rows = []
    for label, s in acc.items():
        p = probes.get(label)
        if not p:
            continue
        rows.append({"entry": label, "acc_mean": s["mean"], "acc_std": s["std"], "seeds": s["n"],
                     "device": s["device"],
                     "diverged": s["diverged"], "init_cka": statistics.fmean(v["last_cka"] for v in p.values()),
                     "init_cka_seeds": len(p)})
    x, y = [r["init_cka"] for r in rows], [r["acc_mean"] for r in rows]
    result = {"entries": rows, "n_entries": len(rows), "machine": {"cpu": cpu_name(), "bf16_units": bf16_units()},
              "command": "python benchmarks/skip_free.py", "device_control": device_control()}
    if len(rows) >= 4:
        rho = spearman(x, y)
        low, high = bootstrap(x, y)
        rank_x, rank_y = ranks(x), ranks(y)
        gaps = sorted(((abs(a - b), r["entry"]) for a, b, r in zip(rank_x, rank_y, rows)), reverse=True)
        result |= {"spearman": rho, "bootstrap_95": [low, high], "outliers": [e for _, e in gaps[:3]]}
    write_json(OUT / "probe_vs_accuracy.json", result)
    lines = ["| entry | test acc (20k x 8) | seeds | trained on | CKA with the input at the last layer, at init |",
             "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["acc_mean"]):
        spread = f" +- {r['acc_std']:.2f}" if r["seeds"] > 1 else ""  # one seed has no spread
        lines.append(f"| {r['entry']} | {r['acc_mean']:.2f}{spread}% | {r['seeds']} "
                     f"| {'H200 (float32)' if r['device'] == 'gpu' else 'CPU'} | {r['init_cka']:.3f} |")
    if "spearman" in result:
        lines.append(f"\nSpearman rho = {result['spearman']:.2f} (95% bootstrap over entries "
                     f"{result['bootstrap_95'][0]:.2f} to {result['bootstrap_95'][1]:.2f}), {len(rows)} entries; "
                     f"furthest from the rank line: {', '.join(result['outliers'])}")
    if c := result["device_control"]:
        lines.append(f"\nDevice control, {c['entry']} at this budget: CPU {c['cpu']['mean']:.2f} +- "
                     f"{c['cpu']['std']:.2f}% ({c['cpu']['n']} seeds), H200 {c['gpu']['mean']:.2f} +- "
                     f"{c['gpu']['std']:.2f}% ({c['gpu']['n']} seeds): difference "
                     f"{c['gpu']['mean'] - c['cpu']['mean']:+.2f} points")
    write_atomic(OUT / "probe_vs_accuracy.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, result)


def _plot(rows: list[dict], result: dict) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in rows:
        ax.errorbar(r["init_cka"], r["acc_mean"], yerr=r["acc_std"] if r["seeds"] > 1 else None, fmt="o")
        ax.annotate(r["entry"].replace("resnet", "r"), (r["init_cka"], r["acc_mean"]), fontsize=6)
    title = "probe at initialisation against accuracy (20k x 8, CIFAR-10 JPEG q75 copy)"
    if "spearman" in result:
        low, high = result["bootstrap_95"]
        title += f"\nSpearman {result['spearman']:.2f} [{low:.2f}, {high:.2f}]"
    ax.set(xlabel="linear CKA with the input at the last layer, at initialisation (mean of 3 seeds)",
           ylabel="final test accuracy (%), mean over seeds", title=title)
    fig.tight_layout()
    save_figure(fig, OUT / "probe_vs_accuracy.png")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--report", action="store_true", help="only the report, from the committed results")
    p.add_argument("--entries", nargs="*", help="probe these entries too (model:kind[:options]), trained or not")
    args = p.parse_args()
    acc = accuracies()
    labels = sorted(set(acc) | set(args.entries or []))
    path = OUT / "probe_init.json"
    probes = json.loads(path.read_text())["entries"] if args.report and path.exists() else probe_missing(labels)
    report(acc, probes)


if __name__ == "__main__":
    main()
