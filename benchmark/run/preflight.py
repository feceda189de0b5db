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


def check_out(out: Path, run_folders: Sequence[Path] = ()) -> None:
    """BenchmarkError (one line naming the path and the fix) when ``out`` or a folder under it
    that runs write to (``runs``, ``locks``, ``checkpoints`` and each run's checkpoint folder,
    ``run_folders``) is a file or a folder that cannot be written, or when ``out`` cannot be
    written. Writes nothing that stays."""
    out = Path(out)
    paths = [*reversed(out.parents), out]  # each path once: the run folders share parents
    seen = set(paths)
    for folder in [out / "runs", out / "locks", out / "checkpoints", *run_folders]:
        p = out
        for part in Path(folder).relative_to(out).parts:
            p = p / part
            if p not in seen:
                seen.add(p)
                paths.append(p)
    for p in paths:
        if p.exists() and not p.is_dir():
            raise BenchmarkError(
                f"{p} is a file where a folder must be (the runs of {out} write under it): "
                "move it away, or choose another --out")
    bad = write_probe(out)
    if bad is None:
        bad = next(((p, "no write permission") for p in paths[len(out.parents) + 1:]
                    if p.is_dir() and not os.access(p, os.W_OK | os.X_OK)), None)
    if bad is not None:
        where = "" if bad[0] == out else f"{bad[0]}: "
        raise BenchmarkError(f"cannot write to {out} ({where}{bad[1]}): choose another --out "
                             "or make it writable")
