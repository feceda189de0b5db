"""Read run records back from Weights & Biases (``python -m reports --from-wandb ENTITY/PROJECT``).

``wandb`` is imported only when this is used. For each run of the project the record is taken
from the first of these that holds one:

1. a logged artifact of type ``run-record`` (or ``run_record``): every ``*.json`` file in it;
2. the run's summary, or else its config, key ``run_record`` (an object or a JSON string);
3. the run's config merged with its summary, when together they carry the record's fields
   (``scenario``, ``strategy``, ``seed``, ``task_names``, ``accuracy``, ``random_accuracy``).

Records go through the same validation as files (:func:`reports.schema.record_problem`); a run
without a usable record is skipped with one warning naming it. Being offline or not logged in
raises :class:`reports.load.ReportError` with a one-line message.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .load import RecordWarning, ReportError, normalise
from .schema import WANDB_ARTIFACT_TYPES_READ, WANDB_RECORD_KEY, record_problem
from .text import first_line

__all__ = ["ARTIFACT_TYPES", "RECORD_KEY", "load_wandb_records"]

ARTIFACT_TYPES = WANDB_ARTIFACT_TYPES_READ
RECORD_KEY = WANDB_RECORD_KEY
TIMEOUT_S = 15


def _as_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(getattr(obj, "_json_dict", None), Mapping):
        return dict(obj._json_dict)
    try:
        return {k: obj[k] for k in obj.keys()}
    except Exception:  # noqa: BLE001 - any odd summary type: treat as empty
        return {}


def _decode(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return _as_dict(value) if value is not None and not isinstance(value, list) else value


def _from_artifacts(run: Any) -> list[Any]:
    try:
        arts = [a for a in run.logged_artifacts() if getattr(a, "type", None) in ARTIFACT_TYPES]
    except Exception:  # noqa: BLE001 - a run without artifact access still has summary/config
        return []
    found = []
    for art in arts:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(art.download(root=tmp))
            for path in sorted(root.rglob("*.json")):
                try:
                    found.append(json.loads(path.read_text(encoding="utf-8")))
                except (OSError, ValueError):
                    found.append(None)
    return found


def _records_of_run(run: Any) -> list[Any]:
    found = _from_artifacts(run)
    if found:
        return found
    summary, config = _as_dict(getattr(run, "summary", None)), _as_dict(getattr(run, "config", {}))
    for source in (summary, config):
        if RECORD_KEY in source:
            return [_decode(source[RECORD_KEY])]
    merged = {**config, **summary}
    return [merged] if "accuracy" in merged and "scenario" in merged else []


def _run_name(run: Any) -> str:
    path = getattr(run, "path", None)
    if isinstance(path, list | tuple):
        return "wandb:" + "/".join(str(p) for p in path)
    return f"wandb:{getattr(run, 'id', '?')}"


def load_wandb_records(project: str, api: Any = None) -> list[dict[str, Any]]:
    """Run records of every run in ``project`` (``ENTITY/PROJECT``).

    ``api`` is a ``wandb.Api``-like object (for tests); by default ``wandb.Api()``.
    """
    if project.count("/") != 1 or not all(project.split("/")):
        raise ReportError(f"--from-wandb expects ENTITY/PROJECT, got '{project}'")
    if api is None:
        try:
            import wandb
        except ImportError:
            raise ReportError("--from-wandb needs the wandb package: pip install wandb") from None
        try:
            api = wandb.Api(timeout=TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - wandb raises many types; all mean "cannot"
            raise ReportError(_offline_message(project, e)) from None
    try:
        runs = list(api.runs(project))
    except Exception as e:  # noqa: BLE001
        raise ReportError(_offline_message(project, e)) from None
    out: list[dict[str, Any]] = []
    for run in runs:
        name = _run_name(run)
        try:
            found = _records_of_run(run)
        except Exception as e:  # noqa: BLE001 - one broken run must not stop the report
            found = []
            warnings.warn(
                f"skipping {name}: cannot read it ({first_line(e)})", RecordWarning, stacklevel=2
            )
            continue
        if not found:
            warnings.warn(
                f"skipping {name}: no run record in its artifacts, summary or config",
                RecordWarning,
                stacklevel=2,
            )
        for i, rec in enumerate(found):
            src = name if len(found) == 1 else f"{name}#{i}"
            problem = record_problem(rec, strict=False) if rec is not None else "invalid JSON"
            if problem:
                warnings.warn(
                    f"skipping {src}: not a run record ({problem})", RecordWarning, stacklevel=2
                )
            else:
                out.append(normalise(rec, src))
    return out


def _offline_message(project: str, e: BaseException) -> str:
    return (
        f"cannot read W&B project '{project}': {first_line(e)} "
        "(check the network and `wandb login`, or report from local records with --results)"
    )
