"""Shared fixtures. Real data lives beside the project in ../shared/data (override: PNNH_DATA_DIR)."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pnnh.convert import randomise_batchnorm  # noqa: F401  (the tests import it from here)

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("PNNH_DATA_DIR", ROOT.parent / "shared" / "data"))

torch.set_num_threads(int(os.environ.get("PNNH_TEST_THREADS", "2")))
# Decoded image folders are cached once per checkout, outside the (read-only) shared data.
os.environ.setdefault("PNNH_CACHE_DIR", str(ROOT / ".cache"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "cifar10-jpeg").is_dir():
        pytest.fail(f"shared data not found at {DATA_DIR}/cifar10-jpeg: put the shared data sets there "
                    f"or point PNNH_DATA_DIR at the folder that holds cifar10-jpeg/", pytrace=False)
    return DATA_DIR


@pytest.fixture(scope="session")
def cifar_jpeg(data_dir: Path) -> Path:
    return data_dir / "cifar10-jpeg"


def run_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m pnnh ARGS` in a subprocess, as a user would run it."""
    return subprocess.run([sys.executable, "-m", "pnnh", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def pnnh_main(*args: str) -> subprocess.CompletedProcess:
    """`pnnh ARGS` run by the CLI's own main() in this process, with the same result object as run_cli.

    No interpreter and torch start-up (about 4 s a call on 2 cores): for checks of what a command does and
    how it fails. run_cli stays for what needs a process of its own (exit on a signal, stdout holding
    nothing but JSON, the console-script entry point)."""
    from pnnh.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's own usage errors
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return subprocess.CompletedProcess(["pnnh", *map(str, args)], code, out.getvalue(), err.getvalue())


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, no traceback, one `error:` line, last, holding every fragment; returns that line."""
    assert result.returncode == 2, f"exit {result.returncode}; stderr: {result.stderr[-2000:]}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert len([line for line in lines if line.startswith("error")]) == 1
    for fragment in fragments:
        assert fragment in lines[-1], f"{fragment!r} not in {lines[-1]!r}"
    return lines[-1]


