"""Reading run records (docs/record-schema.md) for the report, with shape validation.

Only the fields the report needs are checked; anything else in a record is passed through.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

__all__ = ["RecordWarning", "ReportError", "is_diverged", "load_records", "record_problem"]

#: Fields without which a JSON object is not a run record the report can use.
REQUIRED = ("scenario", "strategy", "seed", "task_names", "accuracy", "random_accuracy")
#: Record schemas the report reads (2 added ``valid_accuracy`` and ``selection``; a schema-1
#: record reads as having both null).
SCHEMAS = (1, 2)


class ReportError(Exception):
    """A user-facing error: the CLI prints its message as one line and exits with code 2."""


class RecordWarning(UserWarning):
    """A run record file that was skipped (one warning per file, naming it)."""


def _is_num(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _is_frac(x: object) -> bool:
    return _is_num(x) and -1e-9 <= x <= 1 + 1e-9


def _matrix_problem(m: object, rows: int, cols: int, name: str) -> str | None:
    if not isinstance(m, list) or len(m) != rows:
        return f"'{name}' must be a list of {rows} rows"
    for i, row in enumerate(m):
        if not isinstance(row, list) or len(row) != cols:
            return f"'{name}' row {i} must have {cols} entries"
        if not all(_is_frac(v) for v in row):
            return f"'{name}' row {i} must hold numbers in [0, 1]"
    return None


def _hat_problem(hat: object) -> str | None:
    if not isinstance(hat, dict):
        return "'hat' must be an object or null"
    layers, tasks = hat.get("layers"), hat.get("tasks")
    if not isinstance(layers, list) or not layers or not isinstance(tasks, list) or not tasks:
        return "'hat' needs non-empty 'layers' and 'tasks' lists"
    for key in ("used", "overlap", "layer_weights_kept"):
        if key in hat and hat[key] is not None:
            p = _matrix_problem(hat[key], len(layers), len(tasks), f"hat.{key}")
            if p:
                return p
    wk = hat.get("weights_kept")
    if wk is not None and (
        not isinstance(wk, list) or len(wk) != len(tasks) or not all(_is_frac(v) for v in wk)
    ):
        return f"'hat.weights_kept' must hold {len(tasks)} numbers in [0, 1]"
    return None


def param_text(v: object) -> str:
    """Canonical text of a hyperparameter value, as grid tags and selections spell it:
    ``25`` for 25 and 25.0, ``0.1``, ``true``; strings as they are; lists and objects as
    compact JSON (``benchmark.grid.format_value`` uses it too)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return str(int(v)) if math.isfinite(v) and v.is_integer() and abs(v) < 1e15 else repr(v)
    if isinstance(v, str):
        return v
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


def _is_scalar(x: object) -> bool:
    """A parameter value: number, text, boolean or null (e.g. ``ewc.decay_factor=none``)."""
    return x is None or isinstance(x, str | bool) or _is_num(x)


def selection_problem(sel: object) -> str | None:
    """Why ``sel`` is not a hyperparameter selection block (as ``benchmark.tune`` writes it
    into presets and run records), or None."""
    if not isinstance(sel, dict):
        return "'selection' must be an object or null"
    space = sel.get("space")
    if not isinstance(space, dict) or not space or not all(
        isinstance(k, str) and isinstance(v, list) and v and all(_is_scalar(x) for x in v)
        for k, v in space.items()
    ):
        return "'selection.space' must map each key to a non-empty list of numbers or strings"
    keys = set(space)
    points = sel.get("points")
    if not isinstance(points, list) or not points:
        return "'selection.points' must be a non-empty list of {params, value}"
    for i, pt in enumerate(points):
        if not isinstance(pt, dict) or not isinstance(pt.get("params"), dict) or "value" not in pt:
            return f"'selection.points' entry {i} must be an object with 'params' and 'value'"
        if set(pt["params"]) != keys or not all(_is_scalar(v) for v in pt["params"].values()):
            return f"'selection.points' entry {i}: 'params' must set exactly the space's keys"
        v = pt.get("value")
        if not (v is None or _is_num(v) or (isinstance(v, float) and math.isnan(v))):
            return f"'selection.points' entry {i}: 'value' must be a number or null"
    chosen = sel.get("chosen")
    if not isinstance(chosen, dict) or set(chosen) != keys:
        return "'selection.chosen' must be an object setting exactly the space's keys"
    return None


def is_diverged(rec: dict) -> bool:
    """A run whose loss became non-finite: ``"diverged": true``, or (records written before
    the flag existed) an accuracy matrix holding NaN/Infinity tokens. Its numbers are never
    used: the report shows "diverged" for it and leaves it out of every mean."""
    if rec.get("diverged") is True:
        return True
    acc = rec.get("accuracy")
    return isinstance(acc, list) and any(
        isinstance(v, float) and not math.isfinite(v)
        for row in acc if isinstance(row, list) for v in row
    )


def record_problem(rec: object) -> str | None:
    """Why ``rec`` is not a usable run record, or None when it is.

    Checks: a JSON object with the fields in :data:`REQUIRED`; ``schema`` (when present) 1 or 2;
    non-empty string ``scenario``/``strategy``; integer ``seed``; ``task_names`` a non-empty
    list of T strings; ``accuracy`` T×T and ``random_accuracy`` length T, numbers in [0, 1];
    ``tag`` a string when present; ``params`` an object when present; ``hat`` null or mask
    statistics whose ``used``/``overlap`` are layers×tasks and ``weights_kept`` per task;
    ``valid_accuracy`` null or T×T in [0, 1]; ``selection`` null or an object whose ``space``
    maps keys to non-empty lists, whose ``points`` are ``{params, value}`` (params setting
    exactly the space's keys; value a number, or null/NaN when unknown) and whose ``chosen``
    sets those keys; ``diverged`` (when present) true or false.

    A diverged run (:func:`is_diverged`) only needs its identity (scenario, strategy, seed,
    tag, task names) and ``accuracy``/``random_accuracy`` lists: its numbers (null or
    non-finite where the loss blew up) and its ``hat``/``valid_accuracy`` are not checked,
    since the report never uses them.
    """
    if not isinstance(rec, dict):
        return "not a JSON object"
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        return "missing field(s) " + ", ".join(missing)
    if rec.get("diverged") not in (None, True, False):
        return "'diverged' must be true or false"
    if rec.get("schema", 1) not in SCHEMAS or isinstance(rec.get("schema"), bool):
        return f"unsupported schema {rec.get('schema')!r} (expected 1 or 2)"
    for key in ("scenario", "strategy"):
        if not isinstance(rec[key], str) or not rec[key]:
            return f"'{key}' must be a non-empty string"
    if not isinstance(rec["seed"], int) or isinstance(rec["seed"], bool):
        return "'seed' must be an integer"
    names = rec["task_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return "'task_names' must be a non-empty list of strings"
    n = len(names)
    if not isinstance(rec.get("tag", ""), str):
        return "'tag' must be a string"
    if not isinstance(rec.get("params", {}), dict):
        return "'params' must be an object"
    if is_diverged(rec):
        if not isinstance(rec["accuracy"], list) or not isinstance(rec["random_accuracy"], list):
            return "'accuracy' and 'random_accuracy' must be lists (diverged run)"
        if rec.get("selection") is not None:
            return selection_problem(rec["selection"])
        return None
    p = _matrix_problem(rec["accuracy"], n, n, "accuracy")
    if p:
        return p + f" (T = {n} from task_names)"
    ra = rec["random_accuracy"]
    if not isinstance(ra, list) or len(ra) != n or not all(_is_frac(v) for v in ra):
        return f"'random_accuracy' must hold {n} numbers in [0, 1]"
    if rec.get("valid_accuracy") is not None:
        p = _matrix_problem(rec["valid_accuracy"], n, n, "valid_accuracy")
        if p:
            return p + f" (T = {n} from task_names)"
    if rec.get("selection") is not None:
        p = selection_problem(rec["selection"])
        if p:
            return p
    if rec.get("hat") is not None:
        return _hat_problem(rec["hat"])
    return None


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
    :func:`record_problem`), is skipped with one :class:`RecordWarning` naming the file and
    the reason. Each returned record has ``tag``/``params``/``hat``/``valid_accuracy``/
    ``selection`` filled and a ``_source`` key holding its path.
    """
    folder = Path(folder)
    runs = folder / "runs" if (folder / "runs").is_dir() else folder
    out: list[dict[str, Any]] = []
    for path in sorted(runs.glob("*.json")):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            warnings.warn(f"skipping {path}: invalid JSON ({msg})", RecordWarning, stacklevel=2)
            continue
        problem = record_problem(rec)
        if problem:
            warnings.warn(
                f"skipping {path}: not a run record ({problem})", RecordWarning, stacklevel=2
            )
            continue
        out.append(normalise(rec, str(path)))
    return out
