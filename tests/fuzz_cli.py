"""A fuzzer for the ``pnnh`` command line: every sub-command, every option that takes a value, a fixed list
of hostile values. Each case must exit 0 (the value is allowed) or 2 with one ``error:`` line that names
the option, never a traceback, and a refused case must leave no file behind in its working folder (a
value that is allowed but makes training diverge, e.g. a huge --lr, may exit 3 saying so).

    python tests/fuzz_cli.py             # the full sweep (make fuzz: 1,562 cases, about 10 minutes on 2 cores)
    python tests/fuzz_cli.py --sample 40 --seed 0

tests/test_cli_fuzz.py runs a fixed sample. Each case runs in a child forked from this process (pnnh and
torch imported once: a case costs its own work, not an interpreter start), with its address space capped
(a value that asks for terabytes fails in the child, not the machine) and a time limit, in a fresh folder.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MEMORY_CAP = 6 * 2**30  # bytes of address space per case
TIME_LIMIT = 120  # seconds per case


def hostile_values(folder: Path) -> dict[str, str]:
    """name -> value; the paths are inside ``folder`` (a missing one, a folder, a file)."""
    (folder / "a_folder").mkdir(exist_ok=True)
    (folder / "a_file.txt").write_text("not what was asked for\n")
    return {"empty": "", "nan": "nan", "inf": "inf", "minus one": "-1", "zero": "0",
            "huge": "99999999999999999999", "not a number": "abc", "unicode": "ünï✓ 名前",
            "missing path": str(folder / "missing" / "x"), "folder": str(folder / "a_folder"),
            "file": str(folder / "a_file.txt")}


def fixtures(folder: Path) -> dict[str, str]:
    """Small real inputs the commands need: a trained tiny run's weights, a ResNet state dict."""
    from pnnh.checkpoint import save_weights
    from pnnh.hub import create_model, model_config
    from pnnh.resnet_import import key_map
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_chans=1)
    weights = folder / "run" / "best.safetensors"
    weights.parent.mkdir(parents=True, exist_ok=True)
    config = model_config("resnet20", "residual", {}, 10, (1, 28, 28))
    save_weights(weights, model.state_dict(), {"model_config": config})
    resnet = create_model("resnet18", num_classes=10).state_dict()
    pth = folder / "resnet18.pth"
    torch.save({src: resnet[dst] for src, dst in key_map("resnet18").items()}, pth)
    return {"weights": str(weights), "resnet": str(pth)}


TINY = ["--data", "fashion-mnist", "--train-subset", "64", "--test-subset", "32", "--epochs", "1", "--batch-size",
        "32", "--workers", "0", "--device", "cpu"]


def base_commands(fx: dict[str, str]) -> dict[str, list[str]]:
    """Per sub-command, a cheap complete command line (run in a fresh folder, outputs inside it)."""
    return {
        "models": ["models", "resnet2*"],
        "train": ["train", "--model", "resnet20", *TINY, "--output", "out"],
        "eval": ["eval", "--checkpoint", fx["weights"], "--data", "fashion-mnist", "--test-subset", "32",
                 "--device", "cpu", "--workers", "0"],
        "export": ["export", fx["weights"], "--output", "out", "--formats", "safetensors"],
        "convert": ["convert", fx["resnet"], "--arch", "resnet18", "--output", "out", "--formats", "safetensors",
                    "--batch-size", "1"],
        "bench": ["bench", "--entries", "resnet20:residual", "--repeats", "1", "--steps", "1", "--warmup", "0",
                  "--batch-size", "2"],
        "compare": ["compare", "--model", "resnet20", "--kinds", "residual", *TINY, "--seeds", "1", "--output", "out",
                    "--no-report"],
        "probe": ["probe", "--model", "resnet20", "--data", "fashion-mnist", "--num-images", "8"],
        "theory": ["theory", "--width", "16", "--depth", "3", "--samples", "64"],
    }


@dataclass
class Case:
    command: str
    option: str  # the flag, or the positional's name
    dest: str
    value_name: str
    value: str
    positional: bool = False

    @property
    def id(self) -> str:
        return f"{self.command} {self.option}={self.value_name}"


def cases(folder: Path) -> list[Case]:
    from pnnh.cli import build_parser
    parser = build_parser()
    values = hostile_values(folder)
    found = []
    for command, sub in parser._subparsers._group_actions[0].choices.items():  # type: ignore[union-attr]
        for action in sub._actions:
            if action.nargs == 0 or isinstance(action, argparse._HelpAction):
                continue  # a flag takes no value
            if action.help == argparse.SUPPRESS:
                continue  # a removed option, refused whatever its value
            positional = not action.option_strings
            option = action.dest if positional else max(action.option_strings, key=len)
            for name, value in values.items():
                found.append(Case(command, option, action.dest, name, value, positional))
    return found


def argv_for(case: Case, base: list[str]) -> list[str]:
    """The base command with this option set to the hostile value (replacing the base's own, if any)."""
    argv = list(base)
    if case.positional:
        positions = [i for i, a in enumerate(argv[1:], 1) if not a.startswith("-")
                     and not argv[i - 1].startswith("-")]
        if positions:
            argv[positions[0]] = case.value
        else:
            argv.append(case.value)
        return argv
    if case.option in argv:
        i = argv.index(case.option)
        end = i + 1
        while end < len(argv) and not argv[end].startswith("--"):
            end += 1
        del argv[i:end]
    return [*argv, case.option, case.value]


def run_case(argv: list[str], folder: Path) -> dict:
    """Run ``pnnh argv`` in a child forked from this process, in ``folder``; exit code, stdout, stderr, seconds."""
    out_path, err_path = folder.parent / f"{folder.name}.out", folder.parent / f"{folder.name}.err"
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 70
        try:
            os.chdir(folder)
            resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
            torch.set_num_threads(1)
            with open(out_path, "w") as out, open(err_path, "w") as err:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = open(1, "w", buffering=1, closefd=False)  # line-buffered: a killed case's progress
                sys.stderr = open(2, "w", buffering=1, closefd=False)  # is still there to read
                from pnnh.cli import main
                try:
                    code = main(argv)
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
                sys.stdout.flush()
                sys.stderr.flush()
        finally:
            os._exit(code)
    deadline = start + TIME_LIMIT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = -1
            break
        time.sleep(0.02)
    code = os.waitstatus_to_exitcode(status) if status != -1 else "timeout"
    result = {"exit": code, "stdout": out_path.read_text(errors="replace") if out_path.exists() else "",
              "stderr": err_path.read_text(errors="replace") if err_path.exists() else "",
              "seconds": round(time.monotonic() - start, 2)}
    return result


def check(case: Case, result: dict, left: list[str]) -> str | None:
    """What is wrong with this case's outcome, or None."""
    err = result["stderr"]
    if result["exit"] == "timeout":  # allowed, and still training (e.g. a huge --train-subset: all the data)
        return None if " step " in err and "error:" not in err else f"ran past {TIME_LIMIT} s"
    if "Traceback" in err:
        return "traceback: " + err.strip().splitlines()[-1][:200]
    if result["exit"] == 0 or result["exit"] == 3 and "diverged" in err:  # allowed; or a documented divergence
        return None
    if result["exit"] != 2:
        return f"exit {result['exit']}: " + (err.strip().splitlines() or [""])[-1][:200]
    lines = [line for line in err.splitlines() if line.strip()]
    if not lines or not lines[-1].startswith("error: ") or sum(line.startswith("error") for line in lines) != 1:
        return "not one error line last: " + (lines[-1] if lines else "(nothing)")[:200]
    names = {case.option, case.dest, case.dest.replace("_", "-"), "--" + case.dest.replace("_", "-")}
    named_by_value = case.positional and case.value and case.value in lines[-1]
    if not any(name in lines[-1] for name in names) and not named_by_value:
        return f"the error does not name {case.option}: {lines[-1][:200]}"
    if left:
        return f"refused but left files: {', '.join(left[:5])}"
    return None


def sweep(command: str | None = None, sample: int | None = None, seed: int = 0,
          log=None) -> list[tuple[Case, str]]:
    """Run the cases (all, those of ``command``, or a seeded sample of ``sample`` of them); the failures."""
    workdir = Path(tempfile.mkdtemp(prefix="pnnh-fuzz-"))
    os.environ.setdefault("PNNH_CACHE_DIR", str(ROOT / ".cache"))
    try:
        fx = fixtures(workdir)
        all_cases = [c for c in cases(workdir) if command is None or c.command == command]
        if sample is not None and sample < len(all_cases):
            all_cases = random.Random(seed).sample(all_cases, sample)
        bases = base_commands(fx)
        failures = []
        for n, case in enumerate(all_cases):
            folder = workdir / f"case{n}"
            folder.mkdir()
            result = run_case(argv_for(case, bases[case.command]), folder)
            left = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
            problem = check(case, result, left if result["exit"] == 2 else [])
            if problem:
                failures.append((case, problem))
            if log:
                log(f"[{n + 1}/{len(all_cases)}] {case.id}: exit {result['exit']} in {result['seconds']} s"
                    + (f"  FAIL {problem}" if problem else ""))
            shutil.rmtree(folder, ignore_errors=True)
        return failures
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sample", type=int, help="a seeded sample of this many cases (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--command", help="only this sub-command")
    p.add_argument("--json", action="store_true", help="the failures as JSON on stdout")
    args = p.parse_args()
    failures = sweep(args.command, args.sample, args.seed, log=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps([{"case": c.id, "problem": p} for c, p in failures]))
    print(f"{len(failures)} failing case(s)", file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
