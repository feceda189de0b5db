"""Run records: the JSON contract between runner, tracker and report (README "Run record").

A record is written atomically (temporary file in the same folder, fsync, ``os.replace``), so
an interrupted run leaves either a complete record or none. It is strict JSON: a run whose
numbers became non-finite (a diverged loss) is written with those numbers as null and
``"diverged": true`` (:func:`finite_record`), never with ``NaN``/``Infinity`` tokens.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reports.render import write_text

#: 2 added ``valid_accuracy`` and ``selection`` (README "Run record"); 1 is still read
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)

#: record fields that measure the time or memory of the process: they differ between two runs
#: of one experiment (and after a resume); every other field is the same for the same seed
TIMING_FIELDS = ("seconds", "peak_memory_mb", "created")

REQUIRED = {
    "schema": int,
    "scenario": str,
    "strategy": str,
    "seed": int,
    "tag": str,
    "params": dict,
    "task_names": list,
    "accuracy": list,
    "random_accuracy": list,
    "epochs": list,
    "seconds": list,
    "versions": dict,
    "created": str,
}


class RecordError(ValueError):
    """A file that is not a valid run record."""


def record_name(scenario: str, strategy: str, seed: int, tag: str = "") -> str:
    """File name of a run record: ``<scenario>__<strategy>__s<seed>[__<tag>].json``.

    A tag with characters other than letters, digits and ``._=-,`` has them replaced by
    ``-`` and ``~`` plus 8 hex digits of the tag's SHA-1 appended (``~`` never occurs in a
    kept tag), so two tags never share a file (``a:b`` and ``a-b``)."""
    name = f"{scenario}__{strategy}__s{seed}"
    if tag:
        safe = "".join(c if c.isalnum() or c in "._=-," else "-" for c in tag)
        if safe != tag:
            safe += "~" + hashlib.sha1(tag.encode()).hexdigest()[:8]
        name += f"__{safe}"
    return name + ".json"


def record_path(out: Path, scenario: str, strategy: str, seed: int, tag: str = "") -> Path:
    return Path(out) / "runs" / record_name(scenario, strategy, seed, tag)


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
    """Check the schema (types, T×T accuracy with every entry filled); return ``rec``."""
    if not isinstance(rec, dict):
        raise RecordError("a run record is a JSON object")
    for key, typ in REQUIRED.items():
        if key not in rec:
            raise RecordError(f"missing field '{key}'")
        if not isinstance(rec[key], typ) or (typ is int and isinstance(rec[key], bool)):
            raise RecordError(f"field '{key}' must be {typ.__name__}")
    if rec["schema"] not in READABLE_SCHEMAS:
        raise RecordError(f"unsupported schema {rec['schema']} (this suite reads "
                          f"{', '.join(map(str, READABLE_SCHEMAS))})")
    n = len(rec["task_names"])
    if n == 0:
        raise RecordError("'accuracy' must be a T×T matrix with T >= 1 (no task_names)")
    _check_matrix(rec["accuracy"], n, "accuracy")
    if rec.get("valid_accuracy") is not None:
        _check_matrix(rec["valid_accuracy"], n, "valid_accuracy")
    if rec.get("selection") is not None and not isinstance(rec["selection"], dict):
        raise RecordError("field 'selection' must be an object or null")
    for key in ("random_accuracy", "epochs", "seconds"):
        if len(rec[key]) != n:
            raise RecordError(f"'{key}' must have one entry per task ({n})")
    _check_optional_fields(rec, n)
    if not isinstance(rec.get("diverged", False), bool):
        raise RecordError("field 'diverged' must be true or false")
    threads = rec.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                or threads < 1):
        raise RecordError("field 'threads' must be an integer >= 1")
    return rec


def _check_optional_fields(rec: dict, n: int) -> None:
    """The fields added by issue 16 (absent in older records): ``agnostic_accuracy`` (null,
    or row t holding t+1 accuracies), ``peak_memory_mb`` (T numbers >= 0, null where a
    diverged run's value was lost) and ``memory_samples`` (null, or T integers >= 0)."""
    agn = rec.get("agnostic_accuracy")
    if agn is not None:
        if not isinstance(agn, list) or len(agn) != n or any(
                not isinstance(r, list) or len(r) != t + 1 for t, r in enumerate(agn)):
            raise RecordError("'agnostic_accuracy' must be null or T rows, row t with t+1 "
                              "entries")
        for row in agn:
            for v in row:
                if (not isinstance(v, int | float) or isinstance(v, bool)
                        or not 0.0 <= v <= 1.0):
                    raise RecordError("'agnostic_accuracy' entries must be numbers in [0, 1]")
    peak = rec.get("peak_memory_mb")
    if peak is not None and (not isinstance(peak, list) or len(peak) != n or any(
            v is not None and (not isinstance(v, int | float) or isinstance(v, bool) or v < 0)
            for v in peak)):
        raise RecordError(f"'peak_memory_mb' must be a list of {n} numbers >= 0")
    held = rec.get("memory_samples")
    if held is not None and (not isinstance(held, list) or len(held) != n or any(
            not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in held)):
        raise RecordError(f"'memory_samples' must be null or a list of {n} integers >= 0")


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


def _check_matrix(m: Any, n: int, name: str) -> None:
    """``m`` is an n×n matrix of numbers in [0, 1] (every entry filled)."""
    if not isinstance(m, list) or len(m) != n or any(
            not isinstance(r, list) or len(r) != n for r in m):
        raise RecordError(f"'{name}' must be a {n}×{n} matrix")
    for row in m:
        for v in row:
            if (not isinstance(v, int | float) or isinstance(v, bool)
                    or not (0.0 <= v <= 1.0) or math.isnan(v)):
                raise RecordError(f"'{name}' entries must be numbers in [0, 1]")


def write_record(path: Path, rec: dict) -> Path:
    """Validate and write ``rec`` atomically to ``path``, as strict JSON (non-finite numbers
    as null, the record marked diverged: :func:`finite_record`)."""
    rec = validate_record(finite_record(rec))
    return write_text(path, json.dumps(rec, indent=1, allow_nan=False))


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
