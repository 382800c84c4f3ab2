"""The ``pnnh`` command: one sub-command per job, each a thin layer over the library."""
from __future__ import annotations

import argparse
import os
import sys

from .errors import PnnhError
from .io import dumps, make_dir, write_csv, write_json
from .models.registry import parse_kwargs
from .progress import bar, log, setup_logging


def cmd_models(args: argparse.Namespace) -> None:
    from .models import KINDS, list_models, model_family
    from .profile import model_summary

    names = list_models(args.pattern)
    if not names:
        raise PnnhError(f"no model matches {args.pattern!r}; try `pnnh models` for the full list")
    rows = []
    for name in bar(names, desc="models", unit="model"):
        per_kind = {kind: model_summary(name, kind) for kind in KINDS}
        rows.append({"model": name, "family": model_family(name), "kinds": list(KINDS),
                     "input_size": per_kind["residual"]["input_size"],
                     "params": {k: s["params"] for k, s in per_kind.items()},
                     "macs": {k: s["macs"] for k, s in per_kind.items()}})
    if args.json:
        print(dumps(rows))
        return
    header = f"{'model':<13} {'family':<13} {'input':<11} " + " ".join(
        f"{k + ' params':>15} {k + ' GMACs':>14}" for k in KINDS)
    print(header)
    for r in rows:
        size = "x".join(str(s) for s in r["input_size"])
        cells = " ".join(f"{r['params'][k] / 1e6:>14.3f}M {r['macs'][k] / 1e9:>14.3f}" for k in KINDS)
        print(f"{r['model']:<13} {r['family']:<13} {size:<11} {cells}")


TRAIN_HELP = {
    "model": "model name (see `pnnh models`)", "kind": "residual | plain | pnnh",
    "model_kwargs": "model options as key=value, separated by spaces or commas, e.g. learner_ratio=0.5 coder=learned",
    "data": "cifar10 | cifar100 | mnist | fashion-mnist | imagefolder",
    "data_dir": "folder of the data set (fashion-mnist: found in /usr/share/datasets if installed)",
    "download": "fetch the official CIFAR/MNIST/Fashion-MNIST files (MD5-checked) if they are not on disk",
    "cache_dir": "where decoded image folders are cached (default ~/.cache/pnnh, or $PNNH_CACHE_DIR)",
    "batch_size": "images per process and step", "opt": "sgd (Nesterov) | adamw",
    "sched": "cosine | step | onecycle | constant", "amp": "none | bf16 | fp16 (autocast)",
    "output": "run folder (default runs/<model>-<kind>-seed<seed>; compare: reports/<model>-<data>)",
    "stop_after_steps": "stop as if interrupted after N steps (checkpoint, exit 130): to test --resume",
    "log": "none | tensorboard: per-epoch metrics and lr as TensorBoard events in <output>/tensorboard",
    "image_pipeline": "image folders: auto (by image size; mixed sizes refused) | memory | stream",
    "checkpoint_every": "also write last.pt every N optimiser steps", "clip_grad": "clip the gradient norm to this",
    "eval_every": "evaluate on the test split every N epochs (and after the last; other epochs' test metrics are null)",
    "checkpoint_minutes": "write last.pt at least this often during an epoch (0: off)",
    "mixup": "Beta alpha of mixup on the batch (e.g. 0.8; 0: off)", "cutmix": "Beta alpha of CutMix (e.g. 1.0; 0: off)",
}


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (timm's names), so the config dataclass is the single source of truth."""
    from dataclasses import MISSING, fields

    from .train import TrainConfig

    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        help_text = TRAIN_HELP.get(f.name, "") + (f" (default: {default})" if default not in (None, {}) else "")
        if f.name == "model_kwargs":
            p.add_argument(flag, nargs="*", default=[], metavar="KEY=VALUE", help=help_text)
        elif isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type).removesuffix(" | None")]
            p.add_argument(flag, type=kind, default=default, help=help_text)


def config_from_args(args: argparse.Namespace):
    from dataclasses import fields

    from .train import TrainConfig

    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    values["model_kwargs"] = parse_kwargs(values["model_kwargs"])
    return TrainConfig.from_dict(values)


class Parser(argparse.ArgumentParser):
    """argparse with pnnh's error style (one line, ``error: ...``, exit 2) and no abbreviated flags."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise PnnhError(f"{message} (see `{self.prog} --help`)")


def subcommand_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser | None:
    choices = parser._subparsers._group_actions[0].choices
    return choices.get(argv[0]) if argv else None


def given_options(sub: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The options (as dests) written on the command line; abbreviations are off, so tokens are exact."""
    return {a.dest for a in sub._actions for opt in a.option_strings
            if any(t == opt or t.startswith(opt + "=") for t in argv)}


def load_yaml_defaults(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """--config FILE.yaml: its keys (flag names, - or _) become the sub-command's defaults, checked against
    its options; flags on the line still win. Returns the keys the file set."""
    sub = subcommand_parser(parser, argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv[1:])
    if not known.config:
        return set()
    if sub is None or "config" not in {a.dest for a in sub._actions}:
        raise PnnhError(f"--config is not an option of `pnnh {argv[0] if argv else ''}`")
    try:
        import yaml
    except ImportError:
        raise PnnhError("--config needs PyYAML: pip install 'pnnh[yaml]'") from None
    try:
        with open(known.config) as f:
            values = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise PnnhError(f"cannot read config {known.config}: {' '.join(str(e).split())[:200]}") from None
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise PnnhError(f"config {known.config} must be a mapping of option: value")
    values = {k.replace("-", "_"): v for k, v in values.items()}
    if "model_kwargs" in values:
        options = values["model_kwargs"]
        if isinstance(options, dict):
            values["model_kwargs"] = [f"{k}={v}" for k, v in options.items()]
        elif not (isinstance(options, list) and all(isinstance(o, str) for o in options)):
            raise PnnhError(f"config {known.config}: model_kwargs must be a mapping of option: value")
    known_dests = {a.dest for a in sub._actions} - {"help", "config"}
    unknown = sorted(set(values) - known_dests)
    if unknown:
        raise PnnhError(f"config {known.config}: unknown option(s) {', '.join(unknown)} for `pnnh {argv[0]}`")
    sub.set_defaults(**values)
    return set(values)


def cmd_train(args: argparse.Namespace) -> None:
    from .train import TrainingInterrupted, train

    if args.nproc and args.nproc > 1:
        return launch_torchrun(args.nproc)
    cfg = config_from_args(args)
    resume = None
    if args.resume is not None:
        resume = args.resume if args.resume != "auto" else str(cfg.run_dir / "last.pt")
    is_main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    try:
        summary = train(cfg, resume, given=args.given)
    except TrainingInterrupted as e:
        if is_main:
            print(str(e), file=sys.stderr)
        raise SystemExit(130)
    summary.pop("model")
    if not is_main:
        return
    if args.json:
        print(dumps(summary))
    elif summary["final"]:
        final = summary["final"]
        print(f"done: test acc {100 * final['test_acc']:.2f}% (best {100 * summary['best_acc']:.2f}%), "
              f"run folder {summary['run_dir']}", file=sys.stderr)


def launch_torchrun(nproc: int) -> None:
    """`pnnh train --nproc N ...` = `torchrun --standalone --nproc_per_node=N -m pnnh train ...`."""
    import subprocess

    argv = sys.argv[1:]
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "pnnh", *rest]
    raise SystemExit(subprocess.call(cmd))


def cmd_eval(args: argparse.Namespace) -> None:
    from .checkpoint import load_checkpoint, load_model_state, model_from_checkpoint
    from .data.loader import channel_stats
    from .distributed import DistInfo
    from .models import create_model
    from .train import TrainConfig, evaluate, load_splits, make_loaders, resolve_device

    checkpoint = load_checkpoint(args.checkpoint)
    spec = checkpoint.get("model_config")
    if spec and (args.model, args.kind) != (None, None) and (args.model or spec["name"], args.kind or spec["kind"]) \
            != (spec["name"], spec["kind"]):
        raise PnnhError(f"checkpoint {args.checkpoint} holds {spec['name']} ({spec['kind']}), not "
                        f"{args.model or spec['name']} ({args.kind or spec['kind']}): drop --model/--kind or pass "
                        f"--model {spec['name']} --kind {spec['kind']}")
    if not spec and not args.model:
        raise PnnhError(f"{args.checkpoint} is a bare state dict: pass --model (and --kind, --model-kwargs) to say "
                        f"what it holds")
    cfg = TrainConfig(model=spec["name"] if spec else args.model, kind=spec["kind"] if spec else args.kind or "residual",
                      data=args.data, data_dir=args.data_dir, cache_dir=args.cache_dir, test_subset=args.test_subset,
                      batch_size=args.batch_size, device=args.device, workers=args.workers,
                      image_size=args.image_size, image_pipeline=args.image_pipeline, amp=args.amp)
    cfg.validate()
    device = resolve_device(cfg.device)
    stats = (spec["mean"], spec["std"]) if spec and spec["mean"] else None
    splits = load_splits(cfg, ("test",) if stats or spec else ("train", "test"))
    if stats is None and "train" in splits and hasattr(splits["train"], "images"):
        stats = channel_stats(splits.pop("train").images)
    test_set = splits["test"]
    if spec:
        if spec["classes"] and len(spec["classes"]) != len(test_set.classes):
            raise PnnhError(f"{args.checkpoint} was trained on {len(spec['classes'])} classes, the test split of "
                            f"{args.data} has {len(test_set.classes)}: evaluate it on the data it was trained on")
        model = model_from_checkpoint(checkpoint, args.checkpoint)
    else:
        model = create_model(cfg.model, kind=cfg.kind, num_classes=len(test_set.classes),
                             in_chans=test_set.input_size[0], **parse_kwargs(args.model_kwargs or []))
        load_model_state(model, checkpoint["model"], args.checkpoint)
    loader = make_loaders(cfg, {"test": test_set}, device, DistInfo(), stats)["test"]
    model.to(device)
    result = evaluate(model, loader, device, cfg.amp)
    result.update(model=cfg.model, kind=cfg.kind, checkpoint=str(args.checkpoint), data=args.data)
    if args.json:
        print(dumps(result))
    else:
        print(f"{cfg.model} ({cfg.kind}) on {args.data}: top-1 {100 * result['top1']:.2f}%  "
              f"top-5 {100 * result['top5']:.2f}%  loss {result['loss']:.4f}  "
              f"{result['img_per_s']:,.0f} img/s  ({result['images']} images)")


def cmd_export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .export import export_model

    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    if not (args.tolerance > 0) or args.batch_size < 1:
        raise PnnhError("--tolerance must be positive and --batch-size at least 1")
    out = args.output or Path(args.checkpoint).parent / "export"
    report = export_model(args.checkpoint, out, formats, args.batch_size, args.tolerance)
    if args.json:
        print(dumps(report))
    else:
        for name, err in report["parity"].items():
            print(f"{name:<12} max |difference| / max |output| = {err:.2e}  "
                  f"({'ok' if err <= args.tolerance else 'FAILED'}, tolerance {args.tolerance:g})")
        print(f"parameters: {report['params_original']:,} -> {report['params_exported']:,}"
              f"{' (plain form)' if report['plain_form'] else ''}; files in {out}")
    if not report["passed"]:
        failed = [k for k, v in report["parity"].items() if v > args.tolerance]
        raise PnnhError(f"export parity failed for {', '.join(failed)} (above {args.tolerance:g}); see {out}/export.json")


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import bench, format_bench, parse_entries

    if args.repeats < 1 or args.steps < 1 or args.batch_size < 1:
        raise PnnhError("--repeats, --steps and --batch-size must be at least 1")
    result = bench(parse_entries(args.models), args.device, args.batch_size, args.input_size, args.in_chans,
                   args.num_classes, args.repeats, args.steps, args.warmup, args.channels_last, args.amp,
                   args.compile)
    print(dumps(result) if args.json else format_bench(result))


def compare_entries(args: argparse.Namespace) -> list:
    from .bench import Entry, parse_entries
    from .models.registry import check_kind

    if args.entries:
        return parse_entries(args.entries)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for k in kinds:
        check_kind(k)
    pnnh_kwargs = parse_kwargs(args.pnnh_kwargs)
    if args.pnnh_learner_ratio is not None:
        pnnh_kwargs["learner_ratio"] = args.pnnh_learner_ratio
    base_kwargs = parse_kwargs(args.model_kwargs)
    return [Entry(args.model, k, {**base_kwargs, **(pnnh_kwargs if k == "pnnh" else {})}) for k in kinds]


def cmd_compare(args: argparse.Namespace) -> None:
    import shlex
    from pathlib import Path

    from .compare import compare
    from .train import TrainingInterrupted

    entries = compare_entries(args)
    if "," in args.seeds:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    else:
        seeds = list(range(args.seed, args.seed + int(args.seeds)))
    if not seeds:
        raise PnnhError("--seeds needs a count (3) or a list (0,1,2)")
    cfg = config_from_args(args)
    out = Path(args.output or f"reports/{entries[0].model}-{cfg.data}")
    command = "pnnh " + " ".join(shlex.quote(a) for a in (args.argv or sys.argv[1:]))
    try:
        results = compare(entries, cfg, seeds, out, command, overwrite=args.overwrite, report=not args.no_report)
    except TrainingInterrupted:
        print(f"interrupted: run the same command again to continue ({out})", file=sys.stderr)
        raise SystemExit(130)
    if args.json:
        print(dumps(results))
    diverged = [f"{r['label']} seed {s}" for r in results["entries"] for s in r["diverged"]]
    if diverged:
        print(f"warning: {len(diverged)} run(s) diverged ({', '.join(diverged)}): reported as diverged and left out "
              f"of the means; delete a run's folder to train it again", file=sys.stderr)
    print(f"runs: {out / 'runs'} (no report)" if args.no_report else f"report: {out / 'report.md'}", file=sys.stderr)


def cmd_probe(args: argparse.Namespace) -> None:
    from pathlib import Path

    import torch

    from .analysis import DISTS, probe
    from .analysis.probe import load_probe_images, spread_cell
    from .bench import Entry, parse_entries
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .models import create_model

    checkpoint = load_checkpoint(args.checkpoint) if args.checkpoint else {}
    spec = checkpoint.get("model_config")
    if args.checkpoint and not spec:
        raise PnnhError(f"{args.checkpoint} does not record its model (a bare state dict): probe a checkpoint "
                        f"written by pnnh train")
    if spec:
        if (args.kinds or args.entries or (args.model and args.model != spec["name"])
                or (args.kind and args.kind != spec["kind"])):
            raise PnnhError(f"--checkpoint holds one model, {spec['name']} ({spec['kind']}): drop --model, --kind, "
                            f"--kinds and --entries, or probe other kinds at initialisation without --checkpoint")
        entries = [Entry(spec["name"], spec["kind"], dict(spec.get("kwargs") or {}))]  # for its label
    elif args.entries:
        if args.model or args.kind or args.kinds or args.model_kwargs:
            raise PnnhError("--entries names each model, kind and option: drop --model, --kind, --kinds and "
                            "--model-kwargs")
        entries = parse_entries(args.entries)
    else:
        if not args.model:
            raise PnnhError("--model is needed (or --entries, or --checkpoint of a trained run)")
        kwargs = parse_kwargs(args.model_kwargs or [])
        entries = [Entry(args.model, k.strip(), kwargs)
                   for k in (args.kinds or args.kind or "residual").split(",") if k.strip()]
    images, rgb, num_classes = load_probe_images(args.data, args.data_dir, args.num_images, args.seed,
                                                 (spec["mean"], spec["std"]) if spec and spec["mean"] else None,
                                                 args.cache_dir)
    dists = DISTS.from_vgg16(args.dists_weights) if args.dists_weights else None
    runs = []
    for entry in bar(entries, desc="probe", unit="model"):
        torch.manual_seed(args.seed)
        if spec:
            model = model_from_checkpoint(checkpoint, args.checkpoint)
        else:
            model = create_model(entry.model, kind=entry.kind, num_classes=num_classes, in_chans=images.shape[1],
                                 **entry.kwargs)
        log.info(f"probing {entry.label} on {len(images)} images")
        result = probe(model, images, rgb, dists=dists, seed=args.seed, batch_stats=not checkpoint)
        runs.append({"model": entry.model, "kind": entry.kind, "label": entry.label.split(":", 1)[1],
                     "trained": bool(checkpoint), **result})
    if args.output:
        out = Path(args.output)
        make_dir(out)
        write_json(out / "probe.json", runs if len(runs) > 1 else runs[0])
        write_csv(out / "probe.csv", [{"model": run["model"], "kind": run["kind"], "label": run["label"], **row}
                                      for run in runs for row in run["layers"]],
                  ["model", "kind", "label", "index", "name", "cka", "r2", "survival", "dead", "erank", "spread",
                   "dists"])
        from .analysis.plots import plot_probe
        for path in plot_probe(runs, out):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(dumps(runs if len(runs) > 1 else runs[0]))
        return
    for run in runs:
        floor = run["noise_floor"]
        print(f"{run['model']} ({run['label']}): noise floor CKA {floor['cka']:.3f}, R^2 {floor['r2']:.3f}")
        print(f"  {'layer':<28} {'cka':>6} {'r2':>7} {'surv':>6} {'dead':>6} {'erank':>7} {'spread':>7} {'dists':>6}")
        for row in run["layers"]:
            d = "-" if row.get("dists") is None else f"{row['dists']:.3f}"
            print(f"  {row['name']:<28} {row['cka']:>6.3f} {row['r2']:>7.3f} {row['survival']:>6.3f} "
                  f"{row['dead']:>6.3f} {row['erank']:>7.2f} {spread_cell(row):>7} {d:>6}")
        for note in run["notes"]:
            print(f"  note: {note}")


def cmd_theory(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .analysis import theory

    if args.width < 2 or args.depth < 1 or args.samples < 8 or args.sigma <= 0:
        raise PnnhError("--width >= 2, --depth >= 1, --samples >= 8 and --sigma > 0 are needed")
    result = theory(args.width, args.depth, args.samples, args.mu, args.sigma, args.seed)
    if args.output:
        out = Path(args.output)
        make_dir(out)
        write_json(out / "theory.json", result)
        from .analysis.plots import plot_theory
        print(f"wrote {plot_theory(result, out)}", file=sys.stderr)
    if args.json:
        print(dumps(result))
        return
    print(f"Theorem 3.2 (width {args.width}, zero-mean input, sigma {args.sigma}):")
    for kind, r in result["theorem_3_2"].items():
        print(f"  {kind:<9} mean {r['mean']:+.4f} (theorem {r['predicted']['mean']:+.1f})  var/sigma^2 "
              f"{r['var_ratio']:.4f} (theorem {r['predicted']['var'] / args.sigma ** 2:.0f})")
    print(f"Theorem 3.3 (input mean {args.mu}, sigma {args.sigma}): surviving fraction vs bound by depth")
    for row in result["theorem_3_3"]:
        if row["depth"] in (1, 2, 5, 10, 20, args.depth):
            print(f"  {row['kind']:<9} depth {row['depth']:>3}: survival {row['survival']:.4f}  bound {row['bound']:.4f}")
    print("Proposition 3.1 (plain): Jacobian rank / width by depth: " + ", ".join(
        f"{r['jacobian_rank_fraction']:.3f}" for r in result["proposition_3_1"]))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="pnnh", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list every registered model with its parameters and MACs per kind")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'resnet*'")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("train", help="train a model; torchrun --nproc_per_node=N -m pnnh train ... for N processes")
    add_train_arguments(p)
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue an interrupted run (default: <output>/last.pt)")
    p.add_argument("--nproc", type=int, default=None, help="launch N data-parallel processes (via torchrun)")
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON on stdout")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint: top-1, top-5, loss, images/s")
    p.add_argument("--model", help="checked against the checkpoint; needed only for a bare state dict")
    p.add_argument("--kind", help="checked against the checkpoint; needed only for a bare state dict")
    p.add_argument("--model-kwargs", nargs="*", default=None, metavar="KEY=VALUE",
                   help="options of a bare state dict's model (a pnnh checkpoint records its own)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default="cifar10")
    p.add_argument("--data-dir")
    p.add_argument("--cache-dir")
    p.add_argument("--test-subset", type=int)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--image-pipeline", default="auto", help="image folders: auto | memory | stream")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="a trained model's deployable forms (the plain chain of a pnnh/plain model): "
                       "safetensors, torch.export, ONNX, each checked against the original")
    p.add_argument("checkpoint", help="last.pt or best.safetensors of a run")
    p.add_argument("--output", help="folder for the files (default: <checkpoint's folder>/export)")
    p.add_argument("--formats", default="safetensors,pt2,onnx", help="any of safetensors, pt2, onnx")
    p.add_argument("--batch-size", type=int, default=8, help="inputs of the parity check")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest max |diff| / max |output| accepted")
    p.add_argument("--json", action="store_true", help="print the report as JSON only")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="training and inference throughput side by side, interleaved")
    p.add_argument("--models", default="resnet56:residual,resnet56:plain,resnet56:pnnh",
                   help="entries model:kind[:key=value,...], comma-separated; ratios are to the first")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--input-size", type=int, default=None, help="image side (default: the model's)")
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds; the median is reported")
    p.add_argument("--steps", type=int, default=3, help="steps timed per entry and round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--amp", default="none", choices=["none", "bf16"])
    p.add_argument("--compile", action="store_true", help="torch.compile every entry")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("compare", help="train the kinds side by side over seeds and write a report")
    add_train_arguments(p)
    p.add_argument("--kinds", default="residual,plain,pnnh")
    p.add_argument("--seeds", default="3", help="a count (from --seed) or a list, e.g. 0,1,2")
    p.add_argument("--entries", help="instead of --model/--kinds: model:kind[:key=value,...], comma-separated")
    p.add_argument("--pnnh-learner-ratio", type=float, help="learner_ratio for the pnnh entries")
    p.add_argument("--pnnh-kwargs", nargs="*", default=[], metavar="KEY=VALUE", help="options of the pnnh entries")
    p.add_argument("--overwrite", action="store_true",
                   help="train again any run folder whose recorded settings differ from this compare's")
    p.add_argument("--no-report", action="store_true",
                   help="only train (or skip) the runs: no report, plots or probe, e.g. one (entry, seed) of a "
                        "larger matrix filled by several workers")
    p.add_argument("--json", action="store_true", help="print results.json on stdout")
    p.set_defaults(func=cmd_compare, argv=None)

    p = sub.add_parser("probe", help="dissipating inputs: how much of the input survives each layer")
    p.add_argument("--model", help="model name (not needed with --checkpoint)")
    p.add_argument("--kind", help="residual (default) | plain | pnnh")
    p.add_argument("--kinds", help="several kinds side by side (at initialisation), e.g. residual,plain,pnnh")
    p.add_argument("--model-kwargs", nargs="*", default=None, metavar="KEY=VALUE")
    p.add_argument("--entries", help="instead of --model/--kinds: model:kind[:key=value,...], comma-separated, "
                                     "e.g. vit_cifar_12:residual,vit_cifar_12:pnnh:code_ratio=0.5")
    p.add_argument("--checkpoint", help="probe trained weights (default: at initialisation)")
    p.add_argument("--data", default="cifar10")
    p.add_argument("--data-dir")
    p.add_argument("--cache-dir")
    p.add_argument("--num-images", type=int, default=256)
    p.add_argument("--dists-weights", help="ImageNet VGG16 state dict (torchvision layout) for DISTS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="folder for probe.json, probe.csv and PNG plots")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("theory", help="Monte Carlo checks of Theorems 3.2, 3.3 and Proposition 3.1")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--mu", type=float, default=1.0, help="input mean for Theorem 3.3 (3.2 is also run at 0)")
    p.add_argument("--sigma", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="folder for theory.json and theory.png")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.set_defaults(func=cmd_theory)
    for name, p in sub.choices.items():
        p.add_argument("--config", help="YAML file of this command's options (flag names as keys); flags on the "
                       "command line win")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    setup_logging()
    parser = build_parser()
    try:
        from_config = load_yaml_defaults(parser, argv)
        args = parser.parse_args(argv)
        sub = subcommand_parser(parser, argv)
        args.given = from_config | (given_options(sub, argv[1:]) if sub else set())
        args.func(args)
    except PnnhError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
