"""Monte Carlo checks of the paper's section 3 (docs/paper.md), for He-normal layers (Var(w) = 2 / fan_in).

- Theorem 3.2: for x with mean 0 and variance sigma^2, a plain layer's pre-activation Wx has mean 0 and
  variance 2 sigma^2; a residual layer's Wx + x has variance 3 sigma^2. (The theorem's variances are those
  of a zero-mean input; for mean mu the exact values are 2(mu^2 + sigma^2) and 2(mu^2 + sigma^2) + sigma^2,
  reported as "exact".)
- Theorem 3.3 (Cantelli): a neuron whose pre-activation has mean m > 0 and variance v survives (is
  positive) with probability >= m^2 / (m^2 + v); a plain layer's zero-mean response gives no bound (0);
  a PNNH coder's mirrored pair [act(u), act(-u)] passes every coded coordinate through one of its
  halves (bound 1). Checked layer by layer through a deep stack.
- Proposition 3.1: ReLU is a low-rank operator: at each input it keeps only the active coordinates
  (its Jacobian has rank = the number of surviving neurons, about half the width in a plain layer).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import PnnhError
from ..io import make_dir, write_json
from .plots import plot_theory


def _he(width: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(width, width, generator=g, dtype=torch.float64) * (2 / width) ** 0.5


def theorem_3_2(width: int, samples: int, mu: float, sigma: float, g: torch.Generator, layers: int = 8) -> dict:
    out = {}
    for kind in ("plain", "residual"):
        means, variances = [], []
        for _ in range(layers):  # fresh weights each time: the theorem's expectation is over W and x
            x = mu + sigma * torch.randn(samples, width, generator=g, dtype=torch.float64)
            z = x @ _he(width, g).t() + (x if kind == "residual" else 0)
            means.append(z.mean())
            variances.append(z.var())
        mean, var = float(torch.stack(means).mean()), float(torch.stack(variances).mean())
        second = mu ** 2 + sigma ** 2
        predicted = {"mean": 0.0 if kind == "plain" else mu, "var": (2 if kind == "plain" else 3) * sigma ** 2}
        exact = 2 * second + (sigma ** 2 if kind == "residual" else 0)
        out[kind] = {"mean": mean, "var": var, "var_ratio": var / sigma ** 2, "predicted": predicted,
                     "exact_var": exact}
    return out


def theorem_3_3(width: int, depth: int, samples: int, mu: float, sigma: float, g: torch.Generator) -> list[dict]:
    rows = []
    x0 = mu + sigma * torch.randn(samples, width, generator=g, dtype=torch.float64)
    # the coder's E: orthogonal, one for the whole stack (coder_share="stage")
    e, _ = torch.linalg.qr(torch.randn(width, width, generator=g, dtype=torch.float64))
    for kind in ("plain", "residual", "pnnh"):
        h = x0
        for d in range(1, depth + 1):
            w = _he(width, g)
            if kind == "pnnh":
                # the coder's pair [relu(u), relu(-u)] with u = E h
                u = h @ e.t()
                pair = torch.cat([torch.relu(u), torch.relu(-u)], 1)
                coded = ((pair[:, :width] > 0) | (pair[:, width:] > 0)).double().mean()
                rows.append({"kind": kind, "depth": d, "survival": float(coded), "bound": 1.0,
                             "neuron_survival": float((pair > 0).double().mean())})
                h = torch.relu(h @ w.t() + (pair[:, :width] - pair[:, width:]) @ e)  # learner + decoded code
                continue
            z = h @ w.t() + (h if kind == "residual" else 0)
            m, v = float(z.mean()), float(z.var())
            bound = m * m / (m * m + v) if kind == "residual" and m > 0 else 0.0
            rows.append({"kind": kind, "depth": d, "survival": float((z > 0).double().mean()), "bound": bound,
                         "pre_mean": m, "pre_var": v})
            h = torch.relu(z)
    return rows


def proposition_3_1(width: int, depth: int, samples: int, mu: float, sigma: float, g: torch.Generator) -> list[dict]:
    rows = []
    def rank(m: torch.Tensor) -> int:  # numerical rank from the (width x width) Gram's eigenvalues
        eig = torch.linalg.eigvalsh(m.t() @ m)
        return int((eig > eig.max() * width * torch.finfo(eig.dtype).eps).sum())

    h = mu + sigma * torch.randn(samples, width, generator=g, dtype=torch.float64)
    input_rank = rank(h)
    for d in range(1, depth + 1):
        z = h @ _he(width, g).t()
        active = (z > 0).double().sum(1)  # rank of the layer's Jacobian diag(z > 0) W at each input
        h = torch.relu(z)
        rows.append({"depth": d, "input_rank": input_rank, "output_rank": rank(h), "jacobian_rank_mean":
                     float(active.mean()), "jacobian_rank_fraction": float(active.mean() / width)})
    return rows


def theory(width: int = 512, depth: int = 20, samples: int = 2048, mu: float = 1.0, sigma: float = 1.0,
           seed: int = 0) -> dict:
    """All three checks; ``mu``, ``sigma`` describe the input of Theorem 3.3 and Proposition 3.1
    (Theorem 3.2 is checked at mean 0, its own setting, and at ``mu`` against the exact variances)."""
    if width < 2 or depth < 1 or samples < 8 or not sigma > 0 or not math.isfinite(mu) or not math.isfinite(sigma):
        raise PnnhError("--width >= 2, --depth >= 1, --samples >= 8, a finite --mu and a finite --sigma > 0 "
                        "are needed")
    g = torch.Generator().manual_seed(seed)
    return {"settings": {"width": width, "depth": depth, "samples": samples, "mu": mu, "sigma": sigma, "seed": seed},
            "theorem_3_2": theorem_3_2(width, samples, 0.0, sigma, g),
            "theorem_3_2_at_mu": theorem_3_2(width, samples, mu, sigma, g),
            "theorem_3_3": theorem_3_3(width, depth, samples, mu, sigma, g),
            "proposition_3_1": proposition_3_1(width, min(depth, 8), samples, mu, sigma, g)}


def write_theory(result: dict, out: Path) -> Path:
    """theory.json and theory.png in ``out``; returns the plot's path."""
    make_dir(out, "--output")
    write_json(out / "theory.json", result)
    return plot_theory(result, out)


def format_theory(result: dict) -> str:
    """The three checks as text: measured against predicted."""
    s = result["settings"]
    lines = [f"Theorem 3.2 (width {s['width']}, zero-mean input, sigma {s['sigma']}):"]
    for kind, r in result["theorem_3_2"].items():
        lines.append(f"  {kind:<9} mean {r['mean']:+.4f} (theorem {r['predicted']['mean']:+.1f})  var/sigma^2 "
                     f"{r['var_ratio']:.4f} (theorem {r['predicted']['var'] / s['sigma'] ** 2:.0f})")
    lines.append(f"Theorem 3.3 (input mean {s['mu']}, sigma {s['sigma']}): surviving fraction vs bound by depth")
    for row in result["theorem_3_3"]:
        if row["depth"] in (1, 2, 5, 10, 20, s["depth"]):
            lines.append(f"  {row['kind']:<9} depth {row['depth']:>3}: survival {row['survival']:.4f}  "
                         f"bound {row['bound']:.4f}")
    lines.append("Proposition 3.1 (plain): Jacobian rank / width by depth: " + ", ".join(
        f"{r['jacobian_rank_fraction']:.3f}" for r in result["proposition_3_1"]))
    return "\n".join(lines)
