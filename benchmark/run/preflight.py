"""Checks of ``--out`` before any run starts: every folder a run writes to can be a folder and
can be written, so that a command does not fail after training started (and again on the
advised rerun) for a reason it could have told at once."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..errors import BenchmarkError


def write_probe(folder: Path) -> tuple[Path, str] | None:
    """Where ``folder`` (or its nearest existing parent) cannot be written, and why: creates
    and removes a file there; None when it can be written. Leaves nothing behind."""
    where = Path(folder).resolve()
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        if not where.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "a file, not a folder")
        fd, tmp = tempfile.mkstemp(prefix=".hat-bench-probe-", dir=where)
    except OSError as err:
        return where, str(err.strerror or err)
    os.close(fd)
    os.unlink(tmp)
    return None


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
    bad = write_probe(out)
    if bad is not None:
        raise BenchmarkError(f"cannot write to {bad[0]} ({bad[1]}): choose another {option} or "
                             "make it writable")
