"""Reading run records (docs/record-schema.md) for the report, validated by the lenient mode
of :func:`reports.schema.record_problem` (only the fields the report needs are checked;
anything else in a record is passed through).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from .schema import is_diverged, record_problem
from .text import first_line

__all__ = ["RecordWarning", "ReportError", "load_records", "normalise"]


class ReportError(Exception):
    """A user-facing error: the CLI prints its message as one line and exits with code 2."""


class RecordWarning(UserWarning):
    """A run record file that was skipped (one warning per file, naming it)."""


def normalise(rec: dict[str, Any], source: str) -> dict[str, Any]:
    """A validated record with optional fields filled (``tag`` "", ``params`` {}, ``hat``,
    ``valid_accuracy`` and ``selection`` None), ``diverged`` a bool (:func:`is_diverged`;
    a diverged record's ``hat`` and ``valid_accuracy`` are set to None: not used) and
    ``_source`` naming where it came from."""
    out = dict(rec)
    out.setdefault("tag", "")
    out.setdefault("params", {})
    for key in ("hat", "valid_accuracy", "selection"):
        out.setdefault(key, None)
    out["diverged"] = is_diverged(out)
    if out["diverged"]:
        out["hat"] = out["valid_accuracy"] = None
    out["_source"] = source
    return out


def load_records(folder: str | Path) -> list[dict[str, Any]]:
    """Read every run record under ``<folder>/runs/*.json`` (or ``<folder>/*.json`` when there
    is no ``runs`` sub-folder), sorted by file name.

    A file that is not valid JSON, or is JSON but not a usable run record (see
    :func:`reports.schema.record_problem`, lenient), is skipped with one
    :class:`RecordWarning` naming the file and the reason. Each returned record has
    ``tag``/``params``/``hat``/``valid_accuracy``/``selection`` filled and a ``_source`` key
    holding its path.
    """
    folder = Path(folder)
    runs = folder / "runs" if (folder / "runs").is_dir() else folder
    out: list[dict[str, Any]] = []
    for path in sorted(runs.glob("*.json")):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            warnings.warn(f"skipping {path}: invalid JSON ({first_line(e)})", RecordWarning,
                          stacklevel=2)
            continue
        problem = record_problem(rec, strict=False)
        if problem:
            warnings.warn(
                f"skipping {path}: not a run record ({problem})", RecordWarning, stacklevel=2
            )
            continue
        out.append(normalise(rec, str(path)))
    return out
