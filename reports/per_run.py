"""Per-run reductions: the values one run record gives on its own (final accuracy, BWT,
forgetting, task-agnostic final accuracy, mean seconds per task, the most memory and rehearsal
samples) and, given its reference records' matrices, FWT and intransigence; for a
class-incremental record, its Class-IL values (:func:`class_il_metrics`).

Used by the report's summary and cost tables and by the W&B tracker's per-run summary, so both
reduce a record alike. Each value is ``(number, "")`` or ``(NaN, why)`` with ``why``
:data:`NOT_APPLICABLE` (the record says the strategy has no such value) or :data:`NO_DATA`
(the field, or the reference record, is missing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import metrics

__all__ = [
    "CLASS_IL_OWN",
    "NOT_APPLICABLE",
    "TASK_INFERENCE_OWN",
    "NO_DATA",
    "OWN_METRICS",
    "Value",
    "class_il_metrics",
    "finite_float",
    "own_metrics",
    "per_task",
    "run_metrics",
    "task_inference_metrics",
]

#: a summary cell of a metric the strategy does not have (e.g. no rehearsal memory)
NOT_APPLICABLE = "n/a"
#: a summary cell without data (older records, a reference record missing)
NO_DATA = "–"

#: (value, "") or (NaN, :data:`NOT_APPLICABLE` / :data:`NO_DATA`)
Value = tuple[float, str]

#: the metrics one record gives alone, in the order :func:`own_metrics` returns them
OWN_METRICS = ("final_acc", "bwt", "forgetting", "agnostic_acc", "seconds_per_task",
               "peak_memory_mb", "state_mb", "memory_samples")
#: the Class-IL values one class-incremental record gives alone (:func:`class_il_metrics`):
#: last, average incremental accuracy and forgetting of its ``agnostic_accuracy``, and the
#: Task-IL final accuracy of its ``accuracy``, and (task inference: hat, packnet, pnn,
#: pathnet) the task-prediction accuracy after the last task of its ``task_prediction_accuracy``
CLASS_IL_OWN = ("last", "average_incremental", "forgetting", "task_il_last", "task_prediction")
#: what one task score of a record's ``task_inference`` gives (:func:`task_inference_metrics`):
#: the last Class-IL accuracy and task-prediction accuracy under that score, its mean AUROC
#: over tasks after the last task and its validation criterion (the mean of the last row of
#: its ``valid_agnostic_accuracy``)
TASK_INFERENCE_OWN = ("last", "task_prediction", "auroc", "valid_criterion")


def finite_float(x: object) -> float | None:
    """``x`` as a float when it is a finite number (not a boolean); else None."""
    if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x):
        return float(x)
    return None


def per_task(rec: Mapping[str, Any], key: str, n_tasks: int) -> list[float] | None:
    """A record's per-task list ``key`` as floats (None entries as NaN); None when the field
    is absent or null or not a list of ``n_tasks`` numbers."""
    v = rec.get(key)
    if not isinstance(v, list) or len(v) != n_tasks:
        return None
    out = []
    for x in v:
        if x is None:
            out.append(math.nan)
        elif finite_float(x) is None:
            return None
        else:
            out.append(float(x))
    return out


def _agnostic(rec: Mapping[str, Any], n: int, notes: list[str] | None) -> Value:
    if "agnostic_accuracy" not in rec:
        return math.nan, NO_DATA
    agn = rec["agnostic_accuracy"]
    if agn is None:
        return math.nan, NOT_APPLICABLE
    try:
        if not isinstance(agn, list) or len(agn) != n:
            raise ValueError(f"{n} rows expected")
        return metrics.agnostic_final_accuracy(agn), ""
    except ValueError as e:
        if notes is not None:
            notes.append(f"{rec.get('_source', '?')}: malformed agnostic_accuracy ({e}); left out")
        return math.nan, NO_DATA


def _seconds(rec: Mapping[str, Any], n: int) -> Value:
    secs = per_task(rec, "seconds", n)
    if secs is not None and all(math.isfinite(x) for x in secs):
        return float(np.mean(secs)), ""
    return math.nan, NO_DATA


def _largest(rec: Mapping[str, Any], key: str, n: int) -> Value:
    finite = [x for x in per_task(rec, key, n) or [] if math.isfinite(x)]
    return (max(finite), "") if finite else (math.nan, NO_DATA)


def _memory_samples(rec: Mapping[str, Any], n: int) -> Value:
    if "memory_samples" in rec and rec["memory_samples"] is None:
        return math.nan, NOT_APPLICABLE
    return _largest(rec, "memory_samples", n)


def own_metrics(rec: Mapping[str, Any], acc: np.ndarray | None = None,
                notes: list[str] | None = None) -> dict[str, Value]:
    """The values of :data:`OWN_METRICS` from ``rec`` alone (``acc``: its accuracy matrix as
    an array, computed when not given). A malformed ``agnostic_accuracy`` adds a line to
    ``notes`` (when given) and counts as missing."""
    a = np.asarray(rec["accuracy"], dtype=float) if acc is None else acc
    n = a.shape[0]
    return {
        "final_acc": (metrics.final_average_accuracy(a), ""),
        "bwt": (metrics.bwt(a), ""),
        "forgetting": (metrics.forgetting(a), ""),
        "agnostic_acc": _agnostic(rec, n, notes),
        "seconds_per_task": _seconds(rec, n),
        "peak_memory_mb": _largest(rec, "peak_memory_mb", n),
        "state_mb": _largest(rec, "state_mb", n),
        "memory_samples": _memory_samples(rec, n),
    }


def run_metrics(rec: Mapping[str, Any], acc: np.ndarray, single: np.ndarray | None,
                joint: np.ndarray | None, notes: list[str] | None = None) -> dict[str, Value]:
    """:func:`own_metrics` plus ``fwt`` (needs the seed's single-task reference matrix
    ``single``) and ``intransigence`` (needs the joint reference ``joint``)."""
    out = own_metrics(rec, acc, notes)
    out["fwt"] = ((metrics.forward_transfer(acc, single), "") if single is not None
                  else (math.nan, NO_DATA))
    out["intransigence"] = ((metrics.intransigence(acc, joint), "") if joint is not None
                            else (math.nan, NO_DATA))
    return out


def class_il_metrics(rec: Mapping[str, Any], notes: list[str] | None = None
                     ) -> dict[str, Value]:
    """The values of :data:`CLASS_IL_OWN` of a class-incremental record: from its Class-IL
    matrix ``agnostic_accuracy`` (T rows, row t of t+1 entries) the last accuracy, the
    average incremental accuracy and the Class-IL forgetting (:mod:`reports.metrics`); from
    its ``accuracy`` (Task-IL, the same run's logits restricted to each task's classes) the
    final average accuracy; from its ``task_prediction_accuracy`` (task inference only) the
    task-prediction accuracy after the last task (the mean of its last row). An
    ``agnostic_accuracy`` absent, null or malformed gives NaN (:data:`NO_DATA`) for the first
    three, a ``task_prediction_accuracy`` absent or malformed for the last; a malformed one
    adds a line to ``notes``."""
    a = np.asarray(rec["accuracy"], dtype=float)
    n = a.shape[0]
    out: dict[str, Value] = dict.fromkeys(CLASS_IL_OWN[:3], (math.nan, NO_DATA))
    rows = rec.get("agnostic_accuracy")
    if rows is not None:
        try:
            if not isinstance(rows, list) or len(rows) != n:
                raise ValueError(f"{n} rows expected")
            out["last"] = (metrics.last_accuracy(rows, name="agnostic_accuracy"), "")
            out["average_incremental"] = (metrics.average_incremental_accuracy(rows), "")
            out["forgetting"] = (metrics.class_il_forgetting(rows), "")
        except ValueError as e:
            if notes is not None:
                notes.append(f"{rec.get('_source', '?')}: malformed agnostic_accuracy ({e}); "
                             "left out")
            out = dict.fromkeys(CLASS_IL_OWN[:3], (math.nan, NO_DATA))
    out["task_il_last"] = (metrics.final_average_accuracy(a), "")
    out["task_prediction"] = _last_row(rec, "task_prediction_accuracy", n, notes)
    return out


def _last(rows: object, n: int, name: str) -> float:
    """The mean of the last row of triangular ``rows`` of ``n`` rows (ValueError otherwise)."""
    if not isinstance(rows, list) or len(rows) != n:
        raise ValueError(f"{n} rows expected")
    return metrics.last_accuracy(rows, name=name)


def _last_row(rec: Mapping[str, Any], key: str, n: int, notes: list[str] | None) -> Value:
    """The mean of the last row of the record's triangular ``key`` (:data:`NO_DATA` when
    absent or null; a malformed one adds a line to ``notes``)."""
    rows = rec.get(key)
    if rows is None:
        return math.nan, NO_DATA
    try:
        return _last(rows, n, key), ""
    except ValueError as e:
        if notes is not None:
            notes.append(f"{rec.get('_source', '?')}: malformed {key} ({e}); left out")
        return math.nan, NO_DATA


def task_inference_metrics(rec: Mapping[str, Any], notes: list[str] | None = None
                           ) -> tuple[str | None, dict[str, dict[str, float]]]:
    """A class-incremental task-inference record's ``task_inference`` read by every task
    score it holds: ``(chosen, {score: {metric: value}})``, ``chosen`` being the record's
    headline score (``task_inference.score``; None when absent) and the metrics those of
    :data:`TASK_INFERENCE_OWN`: the last Class-IL accuracy (mean of the last row of the
    score's ``agnostic_accuracy``), the last task-prediction accuracy (of its
    ``task_prediction_accuracy``), the mean AUROC over tasks (:func:`reports.metrics.
    mean_auroc` of its ``auroc``) and the validation criterion (mean of the last row of its
    ``valid_agnostic_accuracy``). A value absent, null or malformed is NaN; a malformed one
    adds a line to ``notes``. ``(None, {})`` for a record without ``task_inference``."""
    ti = rec.get("task_inference")
    if not isinstance(ti, Mapping):
        return None, {}
    n = len(rec["accuracy"])
    chosen = ti.get("score") if isinstance(ti.get("score"), str) else None
    scores = ti.get("scores") if isinstance(ti.get("scores"), Mapping) else {}
    out: dict[str, dict[str, float]] = {}
    for score, block in scores.items():
        block = block if isinstance(block, Mapping) else {}
        values = dict.fromkeys(TASK_INFERENCE_OWN, math.nan)
        for m, key in (("last", "agnostic_accuracy"),
                       ("task_prediction", "task_prediction_accuracy"),
                       ("valid_criterion", "valid_agnostic_accuracy"), ("auroc", "auroc")):
            if block.get(key) is None:
                continue
            try:
                values[m] = (metrics.mean_auroc(block[key]) if m == "auroc"
                             else _last(block[key], n, key))
            except ValueError as e:
                if notes is not None:
                    notes.append(f"{rec.get('_source', '?')}: malformed task_inference score "
                                 f"{score!r} {key} ({e}); left out")
        out[str(score)] = values
    return chosen, out
