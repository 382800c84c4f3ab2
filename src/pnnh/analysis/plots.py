"""PNG plots of probe and theory results (matplotlib, the optional ``plot`` extra)."""
from __future__ import annotations

from pathlib import Path

from ..errors import PnnhError

LABELS = {"cka": "linear CKA with the input", "r2": "input reconstruction R^2", "survival": "surviving fraction",
          "dead": "dead neurons", "erank": "effective rank",
          "spread": "spread across positions (tokens, pixels)", "dists": "DISTS to the input"}


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PnnhError("plots need matplotlib: pip install 'pnnh[plot]'") from None
    return plt


def plot_probe(runs: list[dict], out: Path, prefix: str = "probe") -> list[Path]:
    """One PNG per metric: each run's curve against depth, its noise floor dashed in the same colour."""
    plt = _pyplot()
    paths = []
    for metric, label in LABELS.items():
        if not any(r["layers"] and r["layers"][0].get(metric) is not None for r in runs):
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for i, run in enumerate(runs):
            color = f"C{i}"
            values = [row[metric] for row in run["layers"]]
            name = run.get("label", run["kind"])
            ax.plot(range(len(values)), values, color=color, label=name)
            floor = run["noise_floor"].get(metric)
            if floor is not None:
                ax.axhline(floor, color=color, linestyle="--", linewidth=1, label=f"{name} noise floor")
        ax.set(xlabel="layer (activation) index", ylabel=label, title=f"{runs[0]['model']}: {label}")
        if metric == "spread":  # a collapse falls by orders of magnitude: 1e-2, 1e-8, 1e-14
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{prefix}_{metric}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_theory(result: dict, out: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, kind in enumerate(("plain", "residual", "pnnh")):
        rows = [r for r in result["theorem_3_3"] if r["kind"] == kind]
        depth = [r["depth"] for r in rows]
        axes[0].plot(depth, [r["survival"] for r in rows], color=f"C{i}", marker="o", label=f"{kind} measured")
        axes[0].plot(depth, [r["bound"] for r in rows], color=f"C{i}", linestyle="--", label=f"{kind} bound")
    axes[0].set(xlabel="depth", ylabel="surviving fraction", title="Theorem 3.3: survival vs Cantelli bound")
    axes[0].legend(fontsize=7)
    rows = result["proposition_3_1"]
    axes[1].plot([r["depth"] for r in rows], [r["jacobian_rank_fraction"] for r in rows], marker="o",
                 label="Jacobian rank / width (plain)")
    axes[1].set(xlabel="depth", ylabel="fraction", ylim=(0, 1.05), title="Proposition 3.1: ReLU keeps ~half")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path = out / "theory.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
