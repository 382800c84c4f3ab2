"""The ``pnnh`` command: argument parsing only; each sub-command calls one library function. Options are added
with ``default=SUPPRESS`` and their defaults kept in ``DEFAULTS``, so the namespace holds what the line wrote
(``args.given``, which ``--resume`` checks). No optional import here (``io.read_yaml`` imports PyYAML)."""
from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from . import distributed
from .analysis.probe import format_probe, probe_entries, write_probe
from .analysis.theory import format_theory, theory, write_theory
from .bench import bench, format_bench
from .checkpoint import WEIGHTS
from .compare import compare
from .config import HELP, TrainConfig
from .entries import Entry, entries_from_options, parse_entries, parse_kwargs, parse_seeds
from .errors import PnnhError
from .evaluate import EVAL_OPTIONS, evaluate_checkpoint, format_eval
from .export import convert_resnet, export_model, format_convert, format_export, parse_formats
from .io import dumps, read_yaml
from .profile import format_model_table, model_table
from .progress import log, setup_logging
from .recipes import recipe_options
from .resnet_import import ARCHS
from .train import TrainingInterrupted, train

DEFAULTS: dict[str, dict[str, Any]] = {}  # sub-command -> {dest: default}
ACTIONS: dict[str, dict[str, argparse.Action]] = {}  # sub-command -> {dest: its option}
BOUNDS: dict[str, dict[str, tuple[float, float]]] = {}  # sub-command -> {dest: (lowest, highest) allowed}


class Parser(argparse.ArgumentParser):
    """argparse with pnnh's error style: one line, ``error: ...``, exit 2 (abbreviated flags are off)."""

    def error(self, message: str):
        raise PnnhError(f"{message} (see `{self.prog} --help`)")


def removed(instead: str) -> type[argparse.Action]:
    """An option that pnnh no longer has: refused, saying what to write instead."""
    class Removed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            raise PnnhError(f"{option_string} was removed: {instead}")
    return Removed


def option(p: argparse.ArgumentParser, *flags: str, default: Any = None, bounds: tuple[float, float] | None = None,
           **kwargs) -> None:
    """``p.add_argument`` whose default is recorded in DEFAULTS instead of the namespace; ``bounds``: the
    lowest and highest value allowed (checked with the option's type by ``check_values``)."""
    action = p.add_argument(*flags, default=argparse.SUPPRESS, **kwargs)
    command = p.prog.split()[-1]
    DEFAULTS[command][action.dest] = default
    ACTIONS.setdefault(command, {})[action.dest] = action
    if bounds:
        BOUNDS.setdefault(command, {})[action.dest] = bounds


def check_values(command: str, values: dict[str, Any], source: str) -> None:
    """Each value of an option (from the line or a --config file) of its option's type, choices and bounds."""
    for dest, value in values.items():
        action, flag = ACTIONS[command].get(dest), "--" + dest.replace("_", "-")
        if action is None or value is None:
            continue
        kind = "bool" if action.nargs == 0 else getattr(action.type, "__name__", "")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        fits = {"bool": isinstance(value, bool), "int": number and isinstance(value, int),
                "float": number and math.isfinite(value), "str": isinstance(value, str)}
        if not fits.get(kind, True):
            raise PnnhError(f"{flag} must be {_WORDS[kind]}, got {value!r} ({source})")
        if action.choices is not None and value not in action.choices:
            raise PnnhError(f"{flag} must be one of {', '.join(map(str, action.choices))}, got {value!r} ({source})")
        low, high = BOUNDS.get(command, {}).get(dest, (-math.inf, math.inf))
        if number and not low <= value <= high:
            raise PnnhError(f"{flag} must be from {low:,} to {high:,}, got {value!r}")


_WORDS = {"bool": "true or false", "int": "an integer", "float": "a finite number", "str": "a string"}


def train_options(p: argparse.ArgumentParser, names: tuple[str, ...] | None = None, **defaults) -> None:
    """One flag per TrainConfig field (timm's names; ``names``: only those), its default the dataclass's
    (or one of ``defaults``): the config is the single source of the training options and their defaults."""
    for f in (f for f in fields(TrainConfig) if names is None or f.name in names):
        flag = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default if f.default is not MISSING else None)
        help_text = HELP.get(f.name, "") + (f" (default: {default})" if default not in (None, {}) else "")
        if f.name == "model_kwargs":
            option(p, flag, default=[], nargs="*", metavar="KEY=VALUE", help=help_text)
        elif isinstance(default, bool):
            option(p, flag, default=default, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type).removesuffix(" | None")]
            option(p, flag, default=default, type=kind, help=help_text)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    values["model_kwargs"] = parse_kwargs(values["model_kwargs"])
    return TrainConfig.from_dict(values)


def yaml_options(path: str, command: str) -> dict[str, Any]:
    """--config FILE.yaml: its keys (flag names, - or _) checked against the sub-command's options."""
    values = read_yaml(path) or {}
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise PnnhError(f"config {path} must be a mapping of option: value")
    values = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - set(DEFAULTS[command]) - {"config"})
    if unknown:
        raise PnnhError(f"config {path}: unknown option(s) {', '.join(unknown)} for `pnnh {command}`")
    return values


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The sub-command's options: its defaults, then a --recipe's settings, then a --config file's values,
    then the command line's; ``args.given`` names the options set by the recipe, the file or the line."""
    parsed = vars(build_parser().parse_args(argv))
    command = parsed.pop("command")
    from_file = yaml_options(parsed["config"], command) if parsed.get("config") else {}
    chosen = {**from_file, **parsed}
    check_values(command, from_file, f"in {parsed['config']}" if from_file else "")
    check_values(command, parsed, "on the command line")
    recipe = recipe_options(chosen["recipe"], chosen.get("device", "auto")) if chosen.get("recipe") else {}
    args = argparse.Namespace(**{**DEFAULTS[command], **recipe, **chosen})
    args.command, args.given = command, set(recipe) | set(from_file) | set(parsed) - {"config"}
    return args


def cmd_models(args: argparse.Namespace) -> None:
    rows = model_table(args.pattern)
    print(dumps(rows) if args.json else format_model_table(rows))


def cmd_train(args: argparse.Namespace) -> None:
    if args.nproc is not None and args.nproc > 1:
        raise SystemExit(distributed.launch(args.nproc, args.argv))
    cfg = config_from_args(args)
    resume = None if args.resume is None else args.resume if args.resume != "auto" else str(cfg.run_dir / "last.pt")
    is_main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    try:
        summary = train(cfg, resume, given=args.given)
    except TrainingInterrupted as e:
        if is_main:
            print(str(e), file=sys.stderr)
        raise SystemExit(130) from None
    summary.pop("model")
    if is_main and args.json:
        print(dumps(summary))


def cmd_eval(args: argparse.Namespace) -> None:
    cfg = TrainConfig(**{k: getattr(args, k) for k in EVAL_OPTIONS})
    result = evaluate_checkpoint(args.checkpoint, cfg, args.model, args.kind, parse_kwargs(args.model_kwargs or []),
                                 args.weights)
    print(dumps(result) if args.json else format_eval(result))


def cmd_export(args: argparse.Namespace) -> None:
    out = args.output or Path(args.checkpoint).parent / "export"
    report = export_model(args.checkpoint, out, parse_formats(args.formats), args.batch_size, args.tolerance)
    print(dumps(report) if args.json else format_export(report, out))
    if not report["passed"]:
        failed = [k for k, v in report["parity"].items() if v > args.tolerance]
        raise PnnhError(f"export parity failed for {', '.join(failed)} (above {args.tolerance:g}): {out}/export.json")


def cmd_convert(args: argparse.Namespace) -> None:
    formats = parse_formats(args.formats)
    report = convert_resnet(args.weights, args.arch, args.output, formats, args.batch_size, args.tolerance)
    print(dumps(report) if args.json else format_convert(report, args.output))


def cmd_bench(args: argparse.Namespace) -> None:
    result = bench(parse_entries(args.entries), args.device, args.batch_size, args.input_size, args.in_chans,
                   args.num_classes, args.repeats, args.steps, args.warmup, args.channels_last, args.amp, args.compile)
    print(dumps(result) if args.json else format_bench(result))


def model_entries(args: argparse.Namespace) -> list[Entry]:
    """--entries (then --model, --kind(s), --model-kwargs may not be given), or --model in each of --kinds."""
    if args.entries:
        given = [getattr(args, k) if k in args.given else None for k in ("model", "kinds", "kind", "model_kwargs")]
        return entries_from_options(args.entries, given[0], given[1] or given[2], given[3])
    return entries_from_options(None, args.model, args.kinds or args.kind, args.model_kwargs)


def cmd_compare(args: argparse.Namespace) -> None:
    entries = model_entries(args)
    seeds = parse_seeds(args.seeds, args.seed)
    cfg = config_from_args(args)
    out = Path(args.output or f"reports/{entries[0].model}-{cfg.data}")
    command = "pnnh " + " ".join(shlex.quote(a) for a in args.argv)
    try:
        results = compare(entries, cfg, seeds, out, command, overwrite=args.overwrite, report=not args.no_report)
    except TrainingInterrupted:
        print(f"interrupted: run the same command again to continue ({out})", file=sys.stderr)
        raise SystemExit(130) from None
    if args.json:
        print(dumps(results))
    print(f"runs: {out / 'runs'} (no report)" if args.no_report else f"report: {out / 'report.md'}", file=sys.stderr)


def cmd_probe(args: argparse.Namespace) -> None:
    if args.checkpoint and (args.kinds or args.entries or args.model or args.kind or args.model_kwargs):
        raise PnnhError("--checkpoint holds one model: drop --model, --kind, --kinds, --model-kwargs and --entries, "
                        "or probe other kinds at initialisation without --checkpoint")
    entries = [] if args.checkpoint else model_entries(args)
    runs = probe_entries(entries, args.checkpoint, args.data, args.data_dir, args.cache_dir, args.num_images,
                         args.seed, args.dists_weights)
    if args.output:
        for path in write_probe(runs, Path(args.output)):
            print(f"wrote {path}", file=sys.stderr)
    print(dumps(runs if len(runs) > 1 else runs[0]) if args.json else format_probe(runs))


def cmd_theory(args: argparse.Namespace) -> None:
    result = theory(args.width, args.depth, args.samples, args.mu, args.sigma, args.seed)
    if args.output:
        print(f"wrote {write_theory(result, Path(args.output))}", file=sys.stderr)
    print(dumps(result) if args.json else format_theory(result))


ENTRIES_HELP = "model:kind[:key=value,...], comma-separated, e.g. resnet56:residual,resnet56:pnnh:code_ratio=0.5"


def build_parser() -> Parser:
    parser = Parser(prog="pnnh", allow_abbrev=False, description="Residual, plain and PNNH networks side by side "
                    "(the Plain Neural Net Hypothesis, arXiv 2402.08645)")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, allow_abbrev=False)
        DEFAULTS[name] = {"func": func}
        option(p, "--config", help="YAML file of this command's options (flag names as keys); the command line wins")
        option(p, "--json", default=False, action="store_true", help="print JSON only on stdout")
        return p

    def export_options(p: argparse.ArgumentParser) -> None:
        option(p, "--formats", default="safetensors,pt2,onnx", help="any of safetensors, pt2, onnx")
        option(p, "--batch-size", default=8, type=int, bounds=(1, 4096), help="inputs of the parity check")
        option(p, "--tolerance", default=1e-4, type=float, help="largest max |diff| / max |output| accepted")

    p = command("models", cmd_models, "list every registered model with its parameters and MACs per kind")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'resnet*'")

    p = command("train", cmd_train, "train a model; torchrun --nproc_per_node=N -m pnnh train ... for N processes")
    train_options(p)
    option(p, "--resume", nargs="?", const="auto", metavar="CHECKPOINT",
           help="continue an interrupted run (default: <output>/last.pt)")
    option(p, "--nproc", type=int, bounds=(1, 1024), help="launch N data-parallel processes (via torchrun)")

    p = command("eval", cmd_eval, "evaluate a checkpoint: top-1, top-5, loss, images/s")
    option(p, "--checkpoint", required=True)
    option(p, "--model", help="checked against the checkpoint; needed only for a bare state dict")
    option(p, "--kind", help="checked against the checkpoint; needed only for a bare state dict")
    option(p, "--model-kwargs", nargs="*", metavar="KEY=VALUE", help="options of a bare state dict's model")
    option(p, "--weights", choices=list(WEIGHTS), default="auto",
           help="of a last.pt trained with --ema: the average (auto, ema: what the run tested) or the trained "
                "weights (raw)")
    train_options(p, EVAL_OPTIONS, batch_size=256)

    p = command("export", cmd_export, "a trained model's deployable forms (the plain chain of a pnnh/plain model): "
                "safetensors, torch.export, ONNX, each checked against the original")
    p.add_argument("checkpoint", help="last.pt or best.safetensors of a run")
    option(p, "--output", help="folder for the files (default: <checkpoint's folder>/export)")
    export_options(p)

    p = command("convert", cmd_convert, "a torchvision/timm ResNet's weights as pnnh's residual and pnnh models "
                "and the plain chain, each checked (docs/workflows/convert.md)")
    p.add_argument("weights", help="the ResNet's state dict (.pth, .pt) or .safetensors")
    option(p, "--arch", required=True, choices=list(ARCHS), help="its architecture")
    option(p, "--output", required=True, help="a new folder for the files")
    export_options(p)

    p = command("bench", cmd_bench, "training and inference throughput side by side, interleaved")
    option(p, "--entries", default="resnet56:residual,resnet56:plain,resnet56:pnnh",
           help=ENTRIES_HELP + "; a last part :plain_form measures the to_plain chain; ratios are to the first")
    p.add_argument("--models", action=removed("name the entries with --entries"), help=argparse.SUPPRESS)
    option(p, "--device", default="cpu")
    option(p, "--input-size", type=int, bounds=(8, 4096), help="image side (default: the model's)")
    option(p, "--repeats", default=5, type=int, bounds=(1, 1000), help="interleaved rounds; the median is reported")
    option(p, "--steps", default=3, type=int, bounds=(1, 10_000), help="steps timed per entry and round")
    option(p, "--batch-size", default=32, type=int, bounds=(1, 65_536))
    option(p, "--in-chans", default=3, type=int, bounds=(1, 1024))
    option(p, "--num-classes", default=10, type=int, bounds=(1, 1_000_000))
    option(p, "--warmup", default=2, type=int, bounds=(0, 10_000))
    option(p, "--channels-last", default=False, action="store_true")
    option(p, "--amp", default="none", choices=["none", "bf16"])
    option(p, "--compile", default=False, action="store_true", help="torch.compile every entry")

    p = command("compare", cmd_compare, "train the kinds side by side over seeds and write a report")
    train_options(p)
    option(p, "--kinds", default="residual,plain,pnnh", help="with --model: the kinds, comma-separated")
    option(p, "--entries", help="instead of --model/--kinds/--model-kwargs: " + ENTRIES_HELP)
    option(p, "--seeds", default="3", help="a count (from --seed) or a list, e.g. 0,1,2")
    for flag in ("--pnnh-kwargs", "--pnnh-learner-ratio"):
        p.add_argument(flag, nargs="*", help=argparse.SUPPRESS, action=removed(
            "give each entry its options with --entries, e.g. resnet56:residual,resnet56:pnnh:learner_ratio=0.5"))
    option(p, "--overwrite", default=False, action="store_true",
           help="train again any run folder whose recorded settings differ from this compare's")
    option(p, "--no-report", default=False, action="store_true",
           help="only train (or skip) the runs: no report, plots or probe (one worker of a larger matrix)")

    p = command("probe", cmd_probe, "dissipating inputs: how much of the input survives each layer")
    option(p, "--model", help="model name (not needed with --checkpoint)")
    option(p, "--kind", help="residual (default) | plain | pnnh | tat | looks_linear | dirac | repvgg")
    option(p, "--kinds", help="several kinds side by side (at initialisation), e.g. residual,plain,pnnh")
    option(p, "--model-kwargs", nargs="*", metavar="KEY=VALUE")
    option(p, "--entries", help="instead of --model/--kinds: " + ENTRIES_HELP)
    option(p, "--checkpoint", help="probe trained weights (default: at initialisation)")
    train_options(p, ("data", "data_dir", "cache_dir", "seed"))
    option(p, "--num-images", default=256, type=int, bounds=(8, 1_000_000))
    option(p, "--dists-weights", help="ImageNet VGG16 state dict (torchvision layout) for DISTS")
    option(p, "--output", help="folder for probe.json, probe.csv and PNG plots")

    p = command("theory", cmd_theory, "Monte Carlo checks of Theorems 3.2, 3.3 and Proposition 3.1")
    option(p, "--width", default=512, type=int, bounds=(2, 65_536))
    option(p, "--depth", default=20, type=int, bounds=(1, 10_000))
    option(p, "--samples", default=2048, type=int, bounds=(8, 10_000_000))
    option(p, "--seed", default=0, type=int, bounds=(0, 2**32 - 1))
    option(p, "--mu", default=1.0, type=float, help="the input's mean (Theorem 3.3; 3.2 also runs at 0)")
    option(p, "--sigma", default=1.0, type=float, help="the input's standard deviation")
    option(p, "--output", help="folder for theory.json and theory.png")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    setup_logging()
    try:
        args = parse_args(argv)
        args.argv = argv
        args.func(args)
    except PnnhError as e:
        if os.environ.get("PNNH_DEBUG"):  # the traceback of a refusal, for whoever debugs pnnh
            raise
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 -- not a refusal: a bug, shown in full
        log.exception("internal error: this is a bug in pnnh, not in your input; please report it with the "
                      "command line and this traceback")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
