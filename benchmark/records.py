"""Run records on disk: names, writing and reading (the contract itself, fields and validator,
is :mod:`reports.schema`; docs/record-schema.md).

A record is written atomically (temporary file in the same folder, fsync, ``os.replace``), so
an interrupted run leaves either a complete record or none. It is strict JSON: a run whose
numbers became non-finite (a diverged loss) is written with those numbers as null and
``"diverged": true`` (:func:`finite_record`), never with ``NaN``/``Infinity`` tokens.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reports.io import write_text
from reports.schema import (
    SCHEMA_VERSION,
    TIMING_FIELDS,
    RecordError,
    validate,
)

__all__ = [
    "SCHEMA_VERSION",
    "TIMING_FIELDS",
    "RecordError",
    "finite_record",
    "is_complete",
    "now_iso",
    "read_record",
    "record_name",
    "record_path",
    "record_text",
    "set_aside",
    "validate_record",
    "versions",
    "write_record",
]


def record_name(scenario: str, strategy: str, seed: int, tag: str = "",
                protocol: str = "task") -> str:
    """File name of a run record: ``<scenario>__<strategy>__s<seed>[__class][__<tag>].json``
    (``__class``: a class-incremental run, so that both protocols' records of one experiment
    share a folder).

    A tag with characters other than letters, digits and ``._=-,`` has them replaced by
    ``-`` and ``~`` plus 8 hex digits of the tag's SHA-1 appended (``~`` never occurs in a
    kept tag), so two tags never share a file (``a:b`` and ``a-b``)."""
    name = f"{scenario}__{strategy}__s{seed}"
    if protocol != "task":
        name += f"__{protocol}"
    if tag:
        safe = "".join(c if c.isalnum() or c in "._=-," else "-" for c in tag)
        if safe != tag:
            safe += "~" + hashlib.sha1(tag.encode()).hexdigest()[:8]
        name += f"__{safe}"
    return name + ".json"


def record_path(out: Path, scenario: str, strategy: str, seed: int, tag: str = "",
                protocol: str = "task") -> Path:
    return Path(out) / "runs" / record_name(scenario, strategy, seed, tag, protocol)


def versions() -> dict[str, str]:
    import avalanche
    import torch

    from . import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "avalanche": getattr(avalanche, "__version__", "unknown"),
        "suite": __version__,
    }


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def validate_record(rec: Any) -> dict:
    """``rec`` when it is a valid record to write (:func:`reports.schema.validate`, strict);
    else :class:`RecordError`."""
    return validate(rec, strict=True)


def finite_record(rec: dict) -> dict:
    """``rec`` with every NaN or infinite number replaced by None and, when there was one (a
    run whose loss blew up: its history holds NaN/inf losses), ``diverged`` set to true
    (otherwise the field is left as it is)."""
    found = False

    def clean(value: Any) -> Any:
        nonlocal found
        if isinstance(value, float) and not math.isfinite(value):
            found = True
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    out = clean(rec)
    if found:
        out["diverged"] = True
    return out


def record_text(rec: dict) -> str:
    """The text :func:`write_record` writes for ``rec``: validated strict JSON (non-finite
    numbers as null, the record marked diverged: :func:`finite_record`)."""
    return json.dumps(validate_record(finite_record(rec)), indent=1, allow_nan=False)


def write_record(path: Path, rec: dict) -> Path:
    """Validate and write ``rec`` atomically to ``path`` (:func:`record_text`); a file there
    that is not a readable record is moved aside first (:func:`set_aside`), never
    overwritten."""
    text = record_text(rec)
    set_aside(path)
    return write_text(path, text)


def set_aside(path: Path) -> Path | None:
    """Move a file at ``path`` that is not a readable record (not JSON, not a valid record) to
    ``<name>.unreadable-<n>`` (the first free ``n``), saying so in one warning line on stderr
    naming both paths, so that a record written there overwrites nothing unread. Returns
    where it went; None when nothing was moved (no file, or a valid record)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        read_record(path)
    except RecordError:
        pass
    else:
        return None
    n = 1
    while (aside := path.with_name(f"{path.name}.unreadable-{n}")).exists():
        n += 1
    os.rename(path, aside)
    print(f"warning: {path} is not a readable run record: moved it to {aside}, the new "
          "record takes its place", file=sys.stderr)
    return aside


def read_record(path: Path) -> dict:
    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise RecordError(f"{path}: {err}") from None
    return validate_record(rec)


def is_complete(path: Path) -> bool:
    """True when ``path`` holds a valid record (so the run can be skipped)."""
    try:
        read_record(path)
    except RecordError:
        return False
    return True
