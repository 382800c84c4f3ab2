"""Progress for long work: tqdm bars with ETA on a terminal, plain log lines elsewhere.

Bars go to stderr only, and only when stderr is a terminal, so ``--json`` output on
stdout and logs written to files stay clean. Library code reports through the
``pnnh`` logger; the command line shows its INFO messages on stderr.
"""
from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm

log = logging.getLogger("pnnh")


def bars_enabled() -> bool:
    return sys.stderr.isatty()


def bar(iterable=None, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
        leave: bool = False, enabled: bool = True) -> tqdm:
    """A tqdm bar on stderr with ETA; disabled (a no-op) when stderr is not a terminal or ``enabled`` is False."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=sys.stderr,
                dynamic_ncols=True, disable=not (enabled and bars_enabled()))


class _TqdmHandler(logging.Handler):
    """Log lines on stderr that do not tear an open bar (tqdm.write prints above it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 -- logging must never raise
            self.handleError(record)


def setup_logging(level: int = logging.INFO) -> None:
    """What the command line calls: the ``pnnh`` logger's messages as plain lines on stderr."""
    if not log.handlers:
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(level)
