"""The one writer of files: atomic, strict JSON, and failures as one-line errors.

Every file pnnh writes (checkpoints, metrics, reports, caches, plots) goes through
``write_atomic``: the bytes go to a hidden temporary file beside the target, which
is renamed over it only once it is complete. A crash or a full disk never leaves
half a file under the real name, and the temporary file is removed on every
failure path, so a full disk is not kept full by pnnh's own leftovers. Each write
names its own temporary file, so two processes writing one file (two runs filling
one shared cache) never rename each other's away; the last complete write wins.
A killed process's leftover is removed by its owner with ``remove_leftovers``: a
run folder's at the run's next start, a data cache's once it is an hour old.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import time
import uuid
from pathlib import Path

from .errors import PnnhError

_CAUSES = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
           errno.EFBIG: "file size limit exceeded",
           errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied"}
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_DENIED = (errno.EROFS, errno.EACCES, errno.EPERM)


def describe_os_error(e: OSError) -> str:
    return _CAUSES.get(e.errno or 0, e.strerror or type(e).__name__)


def make_dir(path: Path, option: str | None = None) -> Path:
    """``mkdir -p`` with a one-line error (read-only, permission, a file in the way) naming ``option``, the
    command-line option that chose the folder, if any."""
    named = f" ({option})" if option else ""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise PnnhError(f"cannot create folder {path}{named}: a file of that name is in the way") from None
    except OSError as e:
        raise PnnhError(f"cannot create folder {path}{named}: {describe_os_error(e)}") from None
    return path


def _temporary(path: Path, write_id: str = "*") -> Path:
    """The name of ``write_atomic``'s temporary file for ``path`` (``write_id="*"``: a glob of them all)."""
    return path.with_name(f".{path.name}.{write_id}.tmp")


def remove_leftovers(folder: Path, names: str = "*", older_than_s: float = 0.0) -> list[Path]:
    """Remove the temporary files that killed ``write_atomic`` calls left in ``folder`` for targets
    matching the glob ``names``, if older than ``older_than_s`` (a newer one may be a write in progress)."""
    removed = []
    for left in folder.glob(_temporary(Path(names)).name):
        try:
            if older_than_s <= 0 or time.time() - left.stat().st_mtime > older_than_s:
                left.unlink()
                removed.append(left)
        except OSError:
            pass
    return removed


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + rename)."""
    path = Path(path)
    make_dir(path.parent)
    tmp = _temporary(path, uuid.uuid4().hex[:12])
    payload = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        fix = ("free space" if e.errno in _FULL else "make the folder writable" if e.errno in _DENIED
               else "check that the folder still exists" if e.errno == errno.ENOENT else "check the folder")
        raise PnnhError(f"cannot write {path}: {describe_os_error(e)}; {fix} or write elsewhere (--output, "
                        f"or --cache-dir for the data cache)") from None


def finite_or_none(obj):
    """``obj`` with every NaN or infinity replaced by None, so that it is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def dumps(obj, indent: int | None = 2) -> str:
    """Strict JSON (RFC 8259): non-finite numbers become null rather than the bare NaN parsers reject."""
    return json.dumps(finite_or_none(obj), indent=indent, allow_nan=False)


def write_json(path: str | Path, obj) -> None:
    write_atomic(path, dumps(obj) + "\n")


def write_csv(path: str | Path, rows: list[dict], fieldnames: list[str] | None = None) -> None:
    """Rows as CSV; columns ``fieldnames``, or every key in order of first use (rows may lack some: blank)."""
    buf = io.StringIO()
    if rows or fieldnames:
        writer = csv.DictWriter(buf, fieldnames=fieldnames or list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    write_atomic(path, buf.getvalue())


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """A matplotlib figure as PNG, written atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    write_atomic(path, buf.getvalue())
    return Path(path)


def read_yaml(path: str | Path):
    """A YAML file's contents (``yaml.safe_load``: no objects, no code), or a one-line error."""
    try:
        import yaml  # optional: the yaml extra
    except ImportError:
        raise PnnhError(f"reading {path} needs PyYAML: pip install 'pnnh[yaml]'") from None
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise PnnhError(f"cannot read config {path}: {' '.join(str(e).split())[:200]}") from None
