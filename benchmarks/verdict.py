"""The verdict on each of the paper's claims, decided by fixed rules from the measurements committed here.

    python benchmarks/verdict.py           # prints the table; writes results/verdict/verdict.{md,json}, width.png
    python benchmarks/verdict.py --results # also writes the verdict and ViT tables into docs/results.md

Inputs (each made by a command of this repository, named in the output):
- the evidence matrix's finished runs, benchmarks/results/evidence/*/runs/* (benchmarks/evidence.sh);
- the probe at initialisation, docs/figures/probe_resnet56/probe.json, and the theorems' Monte Carlo
  checks, docs/figures/theory/theory.json;
- training throughput, benchmarks/results/throughput/resnet56_controls_b128.json (pnnh bench);
- the ViT matrix, benchmarks/results/evidence_vit/*/runs/* (benchmarks/evidence.sh vit12 vit24);
- near convergence, the full-budget stages of benchmarks/results/gpu_nc_cifar-fast/ (the CPU's time-to-accuracy
  recipe at 25 epochs on all 50,000 images, run on a lent GPU by benchmarks/gpu.sh; a seed the GPU did not
  finish may run on a CPU at the same settings, and the column names where its runs ran, with the device
  control in benchmarks/nc_gap.py): the accuracy claims again, by the same rules, in a column of their own
  (one verdict never mixes budgets).

Rules. Accuracy is the final test accuracy on the full test set, per seed; an entry needs SEEDS_NEEDED
finished seeds to decide anything. A seed that diverged (its loss or gradient became NaN/inf: the run's
diverged.json) ends with no usable model, so an entry with one cannot be on par with (and falls behind)
a reference that trained every seed at the same recipe, however its other seeds did; its means are over
the finished seeds, and the count of diverged ones is shown beside them. For a difference
d = mean(A) - mean(B) with standard error se = sqrt(se_A^2 + se_B^2), and MARGIN = 1 point:
- "A is on par with B"      holds if d - 2 se > -MARGIN, does not hold if d + 2 se < -MARGIN;
- "A falls behind B"        holds if d + 2 se < -MARGIN, does not hold if d - 2 se > -MARGIN;
anything else is undecided at this budget. A verdict that a 95% Welch t interval (d +- t se) would leave
undecided is marked marginal (with 3 seeds the t interval is about 1.4x wider than +- 2 se). The PNNH
claim is that some plain net with an internal path trains on par: it holds if a variant is on par
("holds in part" if another is not), does not hold only when every variant is not, and is undecided
otherwise. The runs of one verdict must share their budget: every
training setting but the model, kind, model options, seed and where/how it ran (RESUME_SAFE) must
agree, or the script stops and names the setting.
"""
from __future__ import annotations

import functools
import json
import math
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

from pnnh.compare import DIVERGED
from pnnh.config import RESUME_SAFE, TrainConfig, config_differences, precision
from pnnh.entries import Entry
from pnnh.errors import PnnhError
from pnnh.io import save_figure, write_atomic, write_json  # the one writer: atomic, strict JSON
from pnnh.train import read_metrics

ROOT = Path(__file__).resolve().parents[1]
RESULTS_PAGE = ROOT / "docs" / "results.md"  # --results writes the tables between its markers
RESULTS = ROOT / "benchmarks" / "results"
SEEDS_NEEDED = 3
MARGIN = 1.0  # points of accuracy
PER_RUN = ("model", "kind", "model_kwargs", "seed")
NEAR = RESULTS / "gpu_nc_cifar-fast"  # benchmarks/gpu.sh MATRIX=nc RECIPE=cifar-fast
NEAR_STAGES = ("nc_a56", "nc_a56_plain", "nc_b110", "nc_b110_plain", "nc_c_thin56", "nc_c_default56",
               "nc_d_skipfree56")  # the full budget
NEAR_COMMAND = "MATRIX=nc RECIPE=cifar-fast bash benchmarks/gpu.sh (on the lease: benchmarks/gpu_lease.sh)"


def finished_runs(folder: Path, stages: tuple[str, ...] | None = None
                  ) -> tuple[dict[str, list[float | None]], dict | None]:
    """({entry label: final test accuracies in points, one per finished seed in seed order, None for a seed
    that diverged}, the shared budget) of every run under folder (under its ``stages`` folders only, if
    given); refuses runs whose budgets differ."""
    accs: dict[str, dict[int, float | None]] = {}
    budget, budget_from, hardware = None, None, {}
    for run in sorted(folder.glob("*/runs/*")):
        if stages is not None and run.parent.parent.name not in stages:
            continue
        diverged = (run / DIVERGED).exists()
        try:
            cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))  # with defaults
            rows = [] if diverged else read_metrics(run)
        except (OSError, ValueError, TypeError, PnnhError):
            continue  # started, nothing finished yet
        if not diverged and len(rows) != cfg.epochs:
            continue  # still training
        if budget is None:
            budget, budget_from = cfg, run
        elif keys := config_differences(cfg, budget, ignore=(*PER_RUN, *RESUME_SAFE)):
            sys.exit(f"verdict: {run} and {budget_from} differ in {', '.join(keys)}: one verdict cannot mix budgets")
        accs.setdefault(Entry(cfg.model, cfg.kind, cfg.model_kwargs).label, {})[cfg.seed] = \
            None if diverged else 100 * rows[-1]["test_acc"]
        try:  # a diverged run's epochs before it diverged say where it ran, too
            where = (rows or read_metrics(run))[-1].get("hardware", cfg.device)
        except (OSError, ValueError, IndexError):
            where = cfg.device
        hardware[where] = hardware.get(where, 0) + 1
    shared = budget and {k: v for k, v in asdict(budget).items() if k not in (*PER_RUN, *RESUME_SAFE)}
    if shared:  # where the runs ran (RESUME_SAFE, so not part of the budget): {machine: runs}
        shared["hardware"] = hardware
    return {k: [v[s] for s in sorted(v)] for k, v in accs.items()}, shared


def stats(values: list[float | None] | None) -> dict | None:
    """Mean, spread and standard error over the finished seeds; None in values is a seed that diverged."""
    if not values:
        return None
    done = [v for v in values if v is not None]
    n = len(done)
    sd = statistics.stdev(done) if n > 1 else float("nan")
    return {"n": n, "diverged": len(values) - n, "mean": statistics.fmean(done) if done else float("nan"),
            "std": sd, "se": sd / math.sqrt(n) if n else float("nan"), "values": values}


def _decide(d: float, half: float, claim: str) -> str:
    """The rule above for the interval d +- half."""
    low, high = d - half, d + half
    if claim == "on par":
        return "holds" if low > -MARGIN else "does not hold" if high < -MARGIN else "undecided"
    return "holds" if high < -MARGIN else "does not hold" if low > -MARGIN else "undecided"


@functools.cache
def t_quantile(p: float, df: float) -> float:
    """Student's t quantile: bisection on the CDF, integrated from 0 by Simpson's rule (no scipy here)."""
    if df > 1000:
        return statistics.NormalDist().inv_cdf(p)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x: float, n: int = 2000) -> float:
        h = x / n
        f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, 60.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def welch_df(a: dict, b: dict) -> float:
    """Welch-Satterthwaite degrees of freedom of mean(a) - mean(b)."""
    va, vb = a["se"] ** 2, b["se"] ** 2
    den = va ** 2 / (a["n"] - 1) + vb ** 2 / (b["n"] - 1)
    return (va + vb) ** 2 / den if den > 0 else math.inf


def contrast(a: dict | None, b: dict | None, claim: str) -> dict:
    """The difference a - b (points) with its standard error, and the verdict on `claim`
    ("on par" or "behind") by the rules above. A verdict that a Welch t interval (95%) would leave undecided
    is marked marginal: with 3 seeds the normal +- 2 SE interval is the narrower one."""
    seeds = None if a is None or b is None else min(a["n"], b["n"])
    if seeds is not None and (a["diverged"] or b["diverged"]):
        return diverged_contrast(a, b, claim)
    if seeds is None or seeds < SEEDS_NEEDED:
        have = "not run" if seeds is None else f"{seeds} of {SEEDS_NEEDED} seeds"
        return {"diff": None if seeds is None else a["mean"] - b["mean"], "se": None, "seeds": seeds,
                "verdict": "undecided", "why": f"runs missing ({have})", "marginal": False}
    d, se = a["mean"] - b["mean"], math.sqrt(a["se"] ** 2 + b["se"] ** 2)
    verdict = _decide(d, 2 * se, claim)
    why = f"d = {d:+.2f} ± {2 * se:.2f} (2 SE), margin {MARGIN:g}"
    df = welch_df(a, b)
    half_t = t_quantile(0.975, df) * se
    marginal = verdict != "undecided" and _decide(d, half_t, claim) == "undecided"
    if marginal:
        why += f"; marginal: a Welch t interval (df {df:.1f}, ± {half_t:.2f}) leaves it undecided"
    return {"diff": d, "se": se, "seeds": seeds, "verdict": verdict, "why": why, "marginal": marginal}


def diverged_contrast(a: dict, b: dict, claim: str) -> dict:
    """The rule for a diverged seed (the docstring): A with one, against a B that trained every seed, is not on
    par (is behind); the difference shown is over the finished seeds. A diverged B leaves it undecided."""
    d = a["mean"] - b["mean"] if a["n"] and b["n"] else None
    base = {"diff": d, "se": None, "seeds": min(a["n"], b["n"]), "marginal": False}
    if b["diverged"]:
        return {**base, "verdict": "undecided", "note": f"the reference diverged in {b['diverged']} of "
                                                        f"{b['n'] + b['diverged']} seeds",
                "why": "the reference diverged: nothing to compare with"}
    return {**base, "verdict": "does not hold" if claim == "on par" else "holds",
            "note": f"{a['diverged']} of {a['n'] + a['diverged']} seeds diverged",
            "why": f"{a['diverged']} of {a['n'] + a['diverged']} seeds diverged at this recipe (no usable model), "
                   f"the reference none of {b['n']}"}


def within(c: dict) -> str:
    """The ViT issue's own test of "on par", set with it: |d| <= max(MARGIN, 2 se) ("passes"), or "-" without
    enough seeds. Two-sided, and wider than the on-par rule where the seeds spread (that rule asks the whole
    interval d +- 2 se to clear -MARGIN); both are shown."""
    if c["se"] is None:
        return "–"
    return "passes" if abs(c["diff"]) <= max(MARGIN, 2 * c["se"]) else "fails"


def fmt(s: dict | None) -> str:
    if s is None:
        return "not run"
    failed = f"; {s['diverged']} diverged" if s["diverged"] else ""
    if not s["n"]:
        return f"every seed diverged ({s['diverged']})"
    spread = f" ± {s['std']:.2f}" if s["n"] > 1 else ""
    return f"{s['mean']:.2f}{spread}% ({s['n']} seed{'s' if s['n'] > 1 else ''}{failed})"


def fmt_c(c: dict) -> str:
    """d ± 2 SE; on too few seeds for a verdict, d and how many seeds it rests on."""
    if "note" in c:  # a seed diverged: the difference is over the finished seeds only
        return f"{c['diff']:+.2f} over the finished seeds ({c['note']})" if c["diff"] is not None else c["note"]
    if c["diff"] is None:
        return "–"
    if c["se"] is None:
        return f"{c['diff']:+.2f} ({c['seeds']} of {SEEDS_NEEDED} seeds)"
    return f"{c['diff']:+.2f} ± {2 * c['se']:.2f}"


def accuracy_claims(acc: dict[str, dict]) -> list[dict]:
    g = acc.get
    rows = []
    # the phenomenon: plain nets fall behind residual ones, more so with depth
    c56, c110 = (contrast(g(f"resnet{d}:plain"), g(f"resnet{d}:residual"), "behind") for d in (56, 110))
    rows.append({"claim": "Plain nets fall behind residual nets with depth (the premise)",
                 "measured": f"plain - residual: depth 56 {fmt_c(c56)}, depth 110 {fmt_c(c110)} points; "
                             + "; ".join(f"{k} {fmt(g(k))}" for d in (56, 110)
                                         for k in (f"resnet{d}:residual", f"resnet{d}:plain")),
                 "decided_by": "plain vs residual, same learner, same budget",
                 "verdict": worst(c56, c110), "why": f"56: {c56['why']}; 110: {c110['why']}"})
    # PNNH on par: the default coder is the residual function (calibration); the others are the evidence
    calib = [contrast(g(f"resnet{d}:pnnh"), g(f"resnet{d}:residual"), "on par") for d in (56, 110)]
    variants = [("resnet56", "code_ratio=0.0625"), ("resnet56", "code_ratio=0.25"), ("resnet56", "code_ratio=0.5"),
                ("resnet110", "code_ratio=0.25"), ("resnet56", "coder=learned,coder_share=stage"),
                ("resnet56", "coder=learned,coder_share=block")]
    evidence = [(f"{m}:pnnh:{v}", contrast(g(f"{m}:pnnh:{v}"), g(f"{m}:residual"), "on par")) for m, v in variants]
    holding = [k + marked([c]) for k, c in evidence if c["verdict"] == "holds"]
    failing = [k + marked([c]) for k, c in evidence if c["verdict"] == "does not hold"]
    # some PNNH net on par is the claim: it fails only when every variant has failed
    verdict = ("holds in part" if holding and failing else "holds" if holding
               else "does not hold" if len(failing) == len(evidence) else "undecided")
    # one variant on par decides "holds" (marginal only if every such one is); "does not hold" needs them all
    deciding = "does not hold" if verdict == "does not hold" else "holds"
    verdict += marked([c for _, c in evidence if c["verdict"] == deciding], every=deciding == "holds")
    rows.append({"claim": "A plain net with an internal path (PNNH) trains on par with the residual net",
                 "measured": "; ".join(f"{k.split(':pnnh:')[1]} at {k.split(':')[0][6:]}: {fmt_c(c)}"
                                       for k, c in evidence)
                 + f" (pnnh - residual, points). Calibration, default coder (the residual function by "
                   f"construction): {fmt_c(calib[0])} at 56 ({calib[0]['verdict']} by the on-par rule), "
                   f"{fmt_c(calib[1])} at 110 ({calib[1]['verdict']})",
                 "decided_by": "pnnh variants whose code is not the identity (narrow or learned coders) vs residual",
                 "verdict": verdict,
                 "why": (f"on par: {', '.join(holding) or 'none'}; not: {', '.join(failing) or 'none'}; "
                         f"{'the rest' if holding or failing else 'all'} undecided. The default coder's match is "
                         f"an A/A test, not evidence; "
                         + {"holds": "by the same rule that pair is on par at depth 56 (the rule can resolve parity)",
                            "does not hold": "yet by the same rule that pair is not on par at depth 56: a difference "
                                             "beyond the function (initialisation, rounding) or chance",
                            "undecided": "the same rule cannot resolve even that pair at depth 56 (more seeds would "
                                         "narrow it)",
                            "missing": "the A/A pair at depth 56 is not finished"}[
                             calib[0]["verdict"] if calib[0]["se"] is not None else "missing"])})
    # parameter efficiency: half the learner, with the residual net at half the learner as the control
    thin_p = contrast(g("resnet56:pnnh:learner_ratio=0.5"), g("resnet56:residual"), "on par")
    thin_r = contrast(g("resnet56:residual:learner_ratio=0.5"), g("resnet56:residual"), "on par")
    share = contrast(g("resnet56:pnnh:learner_ratio=0.5"), g("resnet56:residual:learner_ratio=0.5"), "on par")
    v, why = parameter_verdict(thin_p, thin_r)
    rows.append({"claim": "2x parameter efficiency (half the parameters, on par)",
                 "measured": f"learner_ratio=0.5 (0.5x parameters) minus full residual: pnnh {fmt_c(thin_p)}, "
                             f"residual {fmt_c(thin_r)}; thin pnnh - thin residual {fmt_c(share)} points (a "
                             f"calibration: with the default coder the two compute one function)",
                 "decided_by": "thin pnnh vs full residual, controlled by thin residual vs full residual",
                 "verdict": v, "why": why})
    return rows


def parameter_verdict(thin_p: dict, thin_r: dict) -> tuple[str, str]:
    """The parameter claim from thin pnnh vs full residual (thin_p) and its control, thin residual vs full
    residual (thin_r). With the default coder (E^T E = I) the thin pnnh net computes the thin residual net's
    function, so PNNH can be credited with nothing the thin residual net does not also show."""
    same = "the thin pnnh and thin residual nets compute one function (default coder)"
    if thin_p["verdict"] == "holds" and thin_r["verdict"] == "holds":
        return "not PNNH's", "the thin residual net is on par with the full one too: the budget, not PNNH"
    if thin_p["verdict"] == "does not hold":
        return ("does not hold" + marked([thin_p]),
                "the thin PNNH net falls more than the margin behind the full residual net")
    if thin_p["verdict"] == "holds" and thin_r["verdict"] == "does not hold":
        return "undecided", (f"the thin PNNH net is on par and the thin residual net is not, but {same}: the noise "
                             f"of the comparison")
    return "undecided", f"thin pnnh: {thin_p['why']}; thin residual: {thin_r['why']}"


# Pairs that compute one function by construction (the default coder: E^T E = I; at stage changes D E spans
# what the residual projection P does, an orthogonal reparametrisation): their differences are the noise.
CALIBRATIONS = [("resnet56:pnnh", "resnet56:residual"),
                ("resnet56:pnnh:learner_ratio=0.5", "resnet56:residual:learner_ratio=0.5"),
                ("resnet110:pnnh", "resnet110:residual")]


def calibration_line(acc: dict[str, dict]) -> str:
    """The A/A pairs' differences, and whether each lies within its own 2 SE: the check on the rule itself."""
    parts, beyond = [], []
    for a, b in CALIBRATIONS:
        c = contrast(acc.get(a), acc.get(b), "on par")
        if c["se"] is None:
            continue
        inside = abs(c["diff"]) <= 2 * c["se"]
        parts.append(f"{a} - {b.split(':', 1)[1]} {fmt_c(c)} ({'within' if inside else 'beyond'} 2 SE)")
        beyond += [] if inside else [a]
    if not parts:
        return "Calibrations (pairs that compute one function): none finished yet."
    return ("Calibrations (pairs that compute one function by construction): " + "; ".join(parts) + "."
            + (" An A/A pair beyond its own 2 SE: with 3 seeds a normal ± 2 SE interval understates the noise (a t "
               "interval with about 4 degrees of freedom is 1.4x wider), so read verdicts near the margin with care."
               if beyond else ""))


def worst(*cs: dict) -> str:
    """A claim that needs every contrast to hold: the weakest verdict. "(marginal)" when a t interval could
    undo it: for "does not hold", every failing contrast is marginal; for "holds", any one is."""
    verdicts = [c["verdict"] for c in cs]
    v = next((v for v in ("does not hold", "undecided") if v in verdicts), "holds")
    return v + marked([c for c in cs if c["verdict"] == v], every=v != "holds")


def marked(cs: list[dict], every: bool = True) -> str:
    """The mark " (marginal)" if every (or, with every=False, any) of these decided contrasts is marginal."""
    flags = [bool(c.get("marginal")) for c in cs if c["verdict"] != "undecided"]
    return " (marginal)" if flags and (all(flags) if every else any(flags)) else ""


def probe_claim() -> dict:
    path = ROOT / "docs/figures/probe_resnet56/probe.json"
    runs = {r["kind"]: r for r in json.loads(path.read_text())}
    at = [10, 20, 40, 54]
    cka = {k: [runs[k]["layers"][i]["cka"] for i in at] for k in runs}
    floor = {k: runs[k]["noise_floor"]["cka"] for k in runs}
    # where the plain kind's CKA with the input first comes within 3x its noise floor
    gone = next((l["index"] for l in runs["plain"]["layers"] if l["cka"] < 3 * floor["plain"]), None)
    kept = gone is not None and runs["residual"]["layers"][gone]["cka"] > 10 * floor["residual"]
    return {"claim": "Dissipating inputs: a plain net's layers lose the input",
            "measured": "CKA with the input at layers " + "/".join(map(str, at)) + ": "
                        + "; ".join(f"{k} " + " / ".join(f"{v:.2f}" for v in cka[k])
                                    for k in ("residual", "plain", "pnnh"))
                        + f"; plain within 3x its noise floor ({floor['plain']:.3f}) from layer {gone}",
            "decided_by": "resnet56 at initialisation, 256 CIFAR-10 (JPEG q75 copy) test images, one seed, "
                          "`pnnh probe` (CKA and R^2; DISTS needs VGG16 weights, not available offline)",
            "verdict": "holds" if kept else "does not hold",
            "why": (f"at layer {gone} the residual kind still keeps CKA {runs['residual']['layers'][gone]['cka']:.2f}"
                    if kept else "the plain kind keeps the input as long as the residual kind")}


def theory_claims() -> list[dict]:
    t = json.loads((ROOT / "docs/figures/theory/theory.json").read_text())
    s = t["settings"]
    p, r = t["theorem_3_2"]["plain"], t["theorem_3_2"]["residual"]
    off = max(abs(p["var_ratio"] / p["predicted"]["var"] - 1), abs(r["var_ratio"] / r["predicted"]["var"] - 1))
    pm, rm = t["theorem_3_2_at_mu"]["plain"], t["theorem_3_2_at_mu"]["residual"]
    rows = [{"claim": "Theorem 3.2: pre-activation variance 2 sigma^2 (plain), 3 sigma^2 (residual)",
             "measured": f"zero-mean input: {p['var_ratio']:.3f} / {r['var_ratio']:.3f}; mean {s['mu']:g} input: "
                         f"{pm['var_ratio']:.3f} / {rm['var_ratio']:.3f} "
                         f"(exact {pm['exact_var']:g} / {rm['exact_var']:g})",
             "decided_by": f"Monte Carlo, He-normal, width {s['width']}, {s['samples']} samples (`pnnh theory`)",
             "verdict": "holds" if off < 0.02 else "does not hold",
             "why": f"within {100 * off:.1f}% for zero-mean inputs; for mean mu the variances are "
                    f"2(mu^2+sigma^2) and 2(mu^2+sigma^2)+sigma^2, so the 2/3 sigma^2 form needs mu = 0"}]
    res = [x for x in t["theorem_3_3"] if x["kind"] == "residual"]
    plain = [x for x in t["theorem_3_3"] if x["kind"] == "plain"]
    above = all(x["survival"] >= x["bound"] for x in res)
    rows.append({"claim": "Theorem 3.3: a residual layer keeps a lower bound on surviving neurons; a plain one none",
                 "measured": f"residual survival {min(x['survival'] for x in res):.2f}-"
                             f"{max(x['survival'] for x in res):.2f} "
                             f"(Cantelli bound {min(x['bound'] for x in res):.2f}-{max(x['bound'] for x in res):.2f}); "
                             f"plain {min(x['survival'] for x in plain):.2f}-{max(x['survival'] for x in plain):.2f} "
                             f"over {len(res)} layers",
                 "decided_by": "Monte Carlo through a He-normal stack (`pnnh theory`)",
                 "verdict": "holds" if above else "does not hold",
                 "why": "measured survival above the bound at every depth (the bound is loose)" if above
                        else "a residual layer fell below the bound"})
    return rows


def throughput_claim() -> dict:
    path = RESULTS / "throughput" / "resnet56_controls_b128.json"
    base = {"claim": "Up to 0.3x higher training throughput",
            "decided_by": "`pnnh bench`, training img/s ratios, entries interleaved in one process"}
    if not path.exists():
        return {**base, "measured": "not run", "verdict": "undecided", "why": f"{path.name} missing"}
    r = {e["label"]: e for e in json.loads(path.read_text())["entries"]}
    ratio = {k: v["train_img_s"] / r["resnet56:residual"]["train_img_s"] for k, v in r.items()}
    thin = (ratio.get("resnet56:pnnh:learner_ratio=0.5", float("nan"))
            / ratio.get("resnet56:residual:learner_ratio=0.5", float("nan")))
    same = [k for k in ratio if ":pnnh" in k and "learner_ratio" not in k]
    lo, hi = min(ratio[k] for k in same), max(ratio[k] for k in same)
    fast_thin = ratio.get("resnet56:pnnh:learner_ratio=0.5", 0.0)
    if hi >= 1.3:
        verdict, why = "holds", "a pnnh net with the residual net's learner trains at least 1.3x faster"
    elif fast_thin >= 1.3 and thin < 1.3:
        verdict, why = ("not PNNH's", f"the thin pnnh net trains {fast_thin:.2f}x the full residual net, but the thin "
                        f"residual net gains as much (thin pnnh / thin residual {thin:.2f}x): the gain is the thinner "
                        f"learner's; at the same learner every pnnh variant trains at {lo:.2f}-{hi:.2f}x")
    else:
        verdict = "does not hold"
        why = f"every pnnh variant trains at {lo:.2f}-{max(hi, fast_thin):.2f}x the residual net"
    return {**base, "measured": "vs residual resnet56: "
                                + ", ".join(f"{k.split(':', 1)[1]} {v:.2f}x" for k, v in ratio.items()
                                            if k != "resnet56:residual")
                                + f"; thin pnnh / thin residual {thin:.2f}x (batch 128, channels-last, 2 threads)",
            "verdict": verdict, "why": why + " (whether the thin nets keep the accuracy: the parameter row)"}


def transformer_claim(acc: dict[str, dict]) -> dict:
    """vit_cifar_12 / 24 (benchmarks/evidence.sh vit12 vit24, their own budget): pnnh at code_ratio=0.5 is the
    evidence (the default coder is the residual function, a calibration); plain shows what the path buys."""
    base = {"claim": "PNNH Transformers on par with residual ViTs",
            "decided_by": "vit_cifar_12/24: pnnh (code_ratio=0.5) vs residual; plain vs residual as the premise"}
    if not acc:
        return {**base, "measured": "not run", "verdict": "undecided", "why": "the ViT matrix has not run yet"}
    ev = {d: contrast(acc.get(f"vit_cifar_{d}:pnnh:code_ratio=0.5"), acc.get(f"vit_cifar_{d}:residual"), "on par")
          for d in (12, 24)}
    cal = {d: contrast(acc.get(f"vit_cifar_{d}:pnnh"), acc.get(f"vit_cifar_{d}:residual"), "on par")
           for d in (12, 24)}
    plain = {d: contrast(acc.get(f"vit_cifar_{d}:plain"), acc.get(f"vit_cifar_{d}:residual"), "behind")
             for d in (12, 24)}
    return {**base, "measured": "; ".join(f"depth {d}: residual {fmt(acc.get(f'vit_cifar_{d}:residual'))}, pnnh "
                                          f"code_ratio=0.5 - residual {fmt_c(ev[d])}, "
                                          f"plain - residual {fmt_c(plain[d])}, "
                                          f"default pnnh - residual (calibration) {fmt_c(cal[d])}" for d in (12, 24)),
            "verdict": worst(*ev.values()),
            "why": "; ".join(f"{d}: {c['why']}" for d, c in ev.items())
                   + "; the ViT issue's own test, abs(d) <= max(1 point, 2 SE): "
                   + ", ".join(f"{d} {within(c)}" for d, c in ev.items())}


def width_plot(acc: dict[str, dict], out: Path) -> None:
    """Accuracy against the code's width (0: the plain kind; 1: the default pnnh), per depth."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for depth, colour in ((56, "C0"), (110, "C1")):
        pts = [(0.0, acc.get(f"resnet{depth}:plain")), (1.0, acc.get(f"resnet{depth}:pnnh"))]
        pts += [(w, acc.get(f"resnet{depth}:pnnh:code_ratio={w}")) for w in (0.0625, 0.25, 0.5)]
        pts = sorted((w, s) for w, s in pts if s is not None and s["n"])  # not where every seed diverged
        if pts:
            ax.errorbar([w for w, _ in pts], [s["mean"] for _, s in pts],
                        yerr=[2 * s["se"] if s["n"] > 1 else 0 for _, s in pts], marker="o", color=colour,
                        capsize=3, label=f"resnet{depth} pnnh (0 = plain)")
            for w, s in pts:  # a point on fewer seeds than a verdict needs says so
                if s["n"] < SEEDS_NEEDED or s["diverged"]:
                    failed = f", {s['diverged']} diverged" if s["diverged"] else ""
                    ax.annotate(f"{s['n']} seed{'s' if s['n'] > 1 else ''}{failed}", (w, s["mean"]), xytext=(4, -12),
                                textcoords="offset points", fontsize=7, color=colour)
        ref = acc.get(f"resnet{depth}:residual")
        if ref and ref["n"]:
            ax.axhline(ref["mean"], color=colour, linestyle="--", label=f"resnet{depth} residual")
    ax.set(xscale="symlog", xlabel="code width / block width (code_ratio)",
           ylabel="final test accuracy (%), mean ± 2 SE",
           title="How much of the input must cross each layer")
    ax.set_xticks([0, 0.0625, 0.25, 0.5, 1], ["0", "1/16", "1/4", "1/2", "1"])
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)


def describe_budget(b: dict) -> str:
    """One line naming every setting of a matrix's shared budget that changes what is learnt."""
    images = f"{b['train_subset']:,}" if b["train_subset"] else "all"
    parts = [f"{images} training images, {b['epochs']} epochs, batch {b['batch_size']}",
             f"{b['opt']} lr {b['lr']:g} {b['sched']}"
             + (f", warm-up {b['warmup_epochs']:g} epoch" + "s" * (b["warmup_epochs"] != 1)
                if b["warmup_epochs"] else ""),
             f"label smoothing {b['label_smoothing']:g}", f"weight decay {b['weight_decay']:g}"]
    parts += [f"gradient clipping at norm {b['clip_grad']:g}"] if b["clip_grad"] else []
    parts += [f"mixup {b['mixup']:g}"] if b["mixup"] else []
    parts += [f"cutmix {b['cutmix']:g}"] if b["cutmix"] else []
    parts += [precision(b["amp"]) + (" channels-last" if b["channels_last"] else "")]
    return ", ".join(parts)


def describe_hardware(hardware: dict[str, int]) -> str:
    """Where a matrix's runs ran, e.g. "NVIDIA H200 (8 runs) and AMD EPYC, 2 torch threads (1 run)"."""
    return " and ".join(f"{where} ({n} run{'s' * (n != 1)})" for where, n in
                        sorted(hardware.items(), key=lambda kv: -kv[1])) or "no machine recorded"


def runs_table(acc: dict[str, dict], budget: dict | None, command: str) -> list[str]:
    """A matrix's finished runs (Markdown lines): its budget, command and one row per entry."""
    if not acc:
        return [f"No run has finished yet. Command: `{command}`."]
    return [f"CIFAR-10 (JPEG q75 copy), {describe_budget(budget)}; final-epoch accuracy on the full 10,000-image "
            f"test set. Command: `{command}`.", "",
            "| entry | final test accuracy, mean ± std over seeds | per seed |", "|---|---|---|",
            *(f"| {k} | {fmt(s)} | {', '.join('diverged' if v is None else f'{v:.2f}' for v in s['values'])} |"
              for k, s in sorted(acc.items()))]


def between_markers(text: str, name: str, lines: list[str]) -> str:
    """text with the lines between its <!-- name: made by benchmarks/verdict.py --> and <!-- /name --> markers."""
    start, end = f"<!-- {name}: made by benchmarks/verdict.py -->", f"<!-- /{name} -->"
    if start not in text or end not in text:
        sys.exit(f"verdict: {RESULTS_PAGE.relative_to(ROOT)} has no {start} ... {end} markers to put the table "
                 f"between")
    head, rest = text.split(start, 1)
    return head + start + "\n" + "\n".join(lines) + "\n" + end + rest.split(end, 1)[1]


def budgets_table(rows: list[dict], near_rows: list[dict], budget: dict | None, near: dict | None) -> list[str]:
    """The accuracy claims side by side, one column per budget (Markdown lines)."""
    if near is None:
        return ["No near-convergence run has finished yet."]
    name = f"near convergence: {describe_budget(near)}, on {describe_hardware(near['hardware'])}"
    lines = [f"| claim | {describe_budget(budget) if budget else 'first budget'} | {name} |", "|---|---|---|"]
    for a, b in zip(rows, near_rows):
        lines.append(f"| {a['claim']} | **{a['verdict']}**: {a['measured']} | **{b['verdict']}**: {b['measured']} |")
    return lines


def main() -> None:
    raw, budget = finished_runs(RESULTS / "evidence")
    acc = {k: stats(v) for k, v in raw.items()}
    raw_vit, budget_vit = finished_runs(RESULTS / "evidence_vit")
    acc_vit = {k: stats(v) for k, v in raw_vit.items()}
    raw_near, budget_near = finished_runs(NEAR, NEAR_STAGES)  # its "hardware": where each run ran
    acc_near = {k: stats(v) for k, v in raw_near.items()}
    acc_rows, near_rows = accuracy_claims(acc), accuracy_claims(acc_near)
    rows = [probe_claim(), *theory_claims(), *acc_rows, throughput_claim(), transformer_claim(acc_vit)]
    lines = ["| claim | measured | decided by | verdict |", "|---|---|---|---|"]
    lines += [f"| {r['claim']} | {r['measured']} | {r['decided_by']} | **{r['verdict']}**: {r['why']} |" for r in rows]
    by_budget = budgets_table(acc_rows, near_rows, budget, budget_near)
    done, failed = sum(v["n"] for v in acc.values()), sum(v["diverged"] for v in acc.values())
    decided = [k for k, v in sorted(acc.items()) if v["n"] + v["diverged"] >= SEEDS_NEEDED]
    lines += ["", f"Evidence matrix: {done} trainings finished" + (f", {failed} diverged" if failed else "")
                  + f"; entries with {SEEDS_NEEDED} seeds or more run: "
                  f"{', '.join(decided) or 'none yet'}. "
                  "Differences are in points of test accuracy, ± 2 standard errors.", "", calibration_line(acc)]
    vit_table = runs_table(acc_vit, budget_vit, "JOBS=2 bash benchmarks/evidence.sh vit12 vit24")
    near_table = runs_table(acc_near, budget_near, NEAR_COMMAND)
    text = "\n".join(["# The paper's claims, decided", "",
                      "Made by `python benchmarks/verdict.py` from the committed measurements; rules in its docstring "
                      f"(margin {MARGIN:g} point, 2 standard errors, {SEEDS_NEEDED} seeds needed).", "",
                      *lines, "", "## The accuracy claims at each budget", "", *by_budget, "",
                      "## The evidence matrix's finished runs", "",
                      *runs_table(acc, budget, "JOBS=2 bash benchmarks/evidence.sh"), "",
                      "## The near-convergence matrix's finished runs", "", *near_table, "",
                      "## The ViT matrix's finished runs", "", *vit_table, ""])
    write_atomic(RESULTS / "verdict" / "verdict.md", text)
    write_json(RESULTS / "verdict" / "verdict.json", {"rules": {"margin_points": MARGIN, "seeds_needed": SEEDS_NEEDED},
                                          "claims": rows, "entries": acc, "budget": budget,
                                          "vit_entries": acc_vit, "vit_budget": budget_vit,
                                          "near": {"claims": near_rows, "entries": acc_near, "budget": budget_near,
                                                   "stages": list(NEAR_STAGES), "command": NEAR_COMMAND}})
    width_plot(acc, RESULTS / "evidence" / "width.png")
    if "--readme" in sys.argv[1:]:
        sys.exit("verdict: --readme was removed: the README is written by people; --results writes the tables "
                 "into docs/results.md")
    if "--results" in sys.argv[1:]:
        page = between_markers(RESULTS_PAGE.read_text(), "verdict", lines)
        page = between_markers(page, "budgets", [*by_budget, "", *near_table])
        write_atomic(RESULTS_PAGE, between_markers(page, "vit", vit_table))
    print(text)


if __name__ == "__main__":
    main()
