"""The ``pnnh`` command: one sub-command per job, each a thin layer over the library."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import PnnhError


def cmd_models(args: argparse.Namespace) -> None:
    from .models import KINDS, list_models, model_family
    from .profile import model_summary

    names = list_models(args.pattern)
    if not names:
        raise PnnhError(f"no model matches {args.pattern!r}; try `pnnh models` for the full list")
    rows = []
    for i, name in enumerate(names):
        print(f"\r[{i + 1}/{len(names)}] {name:<12}", end="", file=sys.stderr, flush=True)
        per_kind = {kind: model_summary(name, kind) for kind in KINDS}
        rows.append({"model": name, "family": model_family(name), "kinds": list(KINDS),
                     "input_size": per_kind["residual"]["input_size"],
                     "params": {k: s["params"] for k, s in per_kind.items()},
                     "macs": {k: s["macs"] for k, s in per_kind.items()}})
    print("\r" + " " * 30 + "\r", end="", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    header = f"{'model':<11} {'family':<13} {'input':<11} " + " ".join(
        f"{k + ' params':>15} {k + ' GMACs':>14}" for k in KINDS)
    print(header)
    for r in rows:
        size = "x".join(str(s) for s in r["input_size"])
        cells = " ".join(f"{r['params'][k] / 1e6:>14.3f}M {r['macs'][k] / 1e9:>14.3f}" for k in KINDS)
        print(f"{r['model']:<11} {r['family']:<13} {size:<11} {cells}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pnnh", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list every registered model with its parameters and MACs per kind")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'resnet*'")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except PnnhError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
