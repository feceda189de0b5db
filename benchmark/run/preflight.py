"""Checks of ``--out`` before any run starts: every folder a run writes to can be a folder and
can be written, so that a command does not fail after training started (and again on the
advised rerun) for a reason it could have told at once."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..errors import BenchmarkError


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe(folder: Path, option: str) -> None:
    """Create and remove a file in ``folder`` (or in its nearest existing parent)."""
    where = _existing_ancestor(folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".hat-bench-probe-", dir=where)
    except OSError as err:
        raise BenchmarkError(f"cannot write to {where} ({err.strerror or err}): choose another "
                             f"{option} or make it writable") from None
    os.close(fd)
    os.unlink(tmp)


def check_out(out: Path, run_folders: Sequence[Path] = (), option: str = "--out") -> None:
    """BenchmarkError (one line naming the path and the fix) when ``out`` or a folder under it
    that runs write to (``runs``, ``locks``, ``checkpoints`` and each run's checkpoint folder,
    ``run_folders``) is a file, or when ``out`` cannot be written. Writes nothing that stays."""
    out = Path(out)
    folders = [out, out / "runs", out / "locks", out / "checkpoints", *run_folders]
    for folder in folders:
        for p in [*reversed(folder.parents), folder]:
            if p.exists() and not p.is_dir():
                raise BenchmarkError(
                    f"{p} is a file where a folder must be (the runs of {out} write under it): "
                    f"move it away, or choose another {option}")
    _probe(out, option)
