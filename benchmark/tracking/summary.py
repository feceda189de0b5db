"""The W&B summary and tables of one finished run, computed from its own record alone.

Pure (no W&B, no disk): the same record always gives the same values, whatever other runs
have finished. Values that need other runs' records (the forgetting ratio ρ, intransigence,
forward transfer) are the report's (``python -m reports``), which reads every record at once.

A class-incremental record (``params.scenario.protocol == "class"``) carries the per-run
columns of the report's Class-IL table under ``class_il/*`` (``class_il/task_prediction``
for a strategy predicting by task inference) and ``task_il/last`` instead of
the task protocol's accuracy keys, so that no W&B column mixes the two protocols.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from reports.per_run import class_il_metrics, own_metrics
from reports.schema import WANDB_RECORD_KEY, protocol_of

from ..tuning import record_criterion

__all__ = ["CLASS_IL_KEYS", "RECORD_KEY", "Tables", "hat_summary", "num", "run_summary",
           "run_tables"]

#: summary key holding the run record as JSON (without its per-epoch ``history``)
RECORD_KEY = WANDB_RECORD_KEY
#: a summary string longer than this makes wandb print warnings: such records stay artifacts
_MAX_SUMMARY_RECORD = 90_000

#: W&B summary key of each per-run reduction (``reports.per_run.own_metrics``)
_OWN_KEYS = {
    "final_acc": "final_average_accuracy",
    "bwt": "bwt",
    "forgetting": "forgetting",
    "seconds_per_task": "seconds_per_task",
    "peak_memory_mb": "peak_memory_mb",
    "state_mb": "state_mb",
    "memory_samples": "memory_samples",
    "agnostic_acc": "agnostic_final_accuracy",
}
#: W&B summary key of each per-run Class-IL value of a class-incremental record
#: (``reports.per_run.class_il_metrics``: the columns of the report's ``class_il`` table that
#: one record gives alone; its ρ needs the joint record)
CLASS_IL_KEYS = {
    "last": "class_il/last",
    "average_incremental": "class_il/average_incremental",
    "forgetting": "class_il/forgetting",
    "task_il_last": "task_il/last",
    "task_prediction": "class_il/task_prediction",
}
#: keys of :data:`CLASS_IL_KEYS` only a task-inference record has (hat, packnet, pnn,
#: pathnet: its ``task_prediction_accuracy``): absent from other runs' summaries
_TASK_INFERENCE_ONLY = ("task_prediction",)
#: reductions that are counts (logged as integers)
_COUNTS = ("memory_samples",)

#: table name → (columns, rows)
Tables = dict[str, tuple[list[str], list[list[Any]]]]


def num(value: Any) -> float | int | None:
    """A plain JSON number (None for NaN/inf or non-numbers)."""
    if isinstance(value, bool):
        return int(value)
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()  # numpy / torch scalars
        except (TypeError, ValueError):
            return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None


def run_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """Summary values of a finished run, computed from its record alone.

    The per-run reductions of the report (``reports.per_run.own_metrics``: accuracy, BWT,
    forgetting, ``seconds_per_task``, the most ``peak_memory_mb``, ``state_mb`` and
    ``memory_samples``, ``agnostic_final_accuracy``), each when the record has it; ``tag``,
    ``train_seconds``, ``epochs_total``; where the hyperparameters came from
    (``selected_on_validation``, ``selection_preset``); the tuning criterion
    ``valid_criterion``; for HAT the ``hat/*`` values of :func:`hat_summary`; and the record
    itself as JSON (without ``history``) under :data:`RECORD_KEY` when it is short.

    A class-incremental record has the :data:`CLASS_IL_KEYS` values instead of the accuracy,
    BWT, forgetting and task-agnostic keys (``class_il/task_prediction``, the mean of the last
    row of ``task_prediction_accuracy``, only when it has that field: task inference), and
    its ``valid_criterion`` is the class protocol's (the mean of the last row of
    ``valid_agnostic_accuracy``).
    """
    own = own_metrics(record)
    cls = protocol_of(record) == "class"
    if cls:
        class_il = class_il_metrics(record)
        summary: dict[str, Any] = {
            key: num(class_il[k][0]) for k, key in CLASS_IL_KEYS.items()
            if k not in _TASK_INFERENCE_ONLY or num(class_il[k][0]) is not None}
    else:
        summary = {_OWN_KEYS[k]: num(own[k][0]) for k in ("final_acc", "bwt", "forgetting")}
    summary.update({
        "tag": record.get("tag", ""),
        "train_seconds": num(float(sum(record.get("seconds", [])))),
        "epochs_total": int(sum(record.get("epochs", []))),
        # where the hyperparameters came from (docs/tuning.md)
        "selected_on_validation": record.get("selection") is not None,
    })
    if record.get("selection") is not None:
        summary["selection_preset"] = str(record["selection"].get("preset", ""))
    criterion = record_criterion(record)
    if criterion is not None:
        summary["valid_criterion"] = num(criterion)
    for key in ("seconds_per_task", "peak_memory_mb", "state_mb", "memory_samples",
                *(() if cls else ("agnostic_acc",))):
        value = num(own[key][0])
        if value is not None:
            summary[_OWN_KEYS[key]] = int(value) if key in _COUNTS else value
    if record.get("hat"):
        summary.update(hat_summary(record["hat"]))
    public = {k: v for k, v in record.items() if k != "history"}
    try:
        text = json.dumps(public, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN somewhere: the artifact still has the record
        text = None
    if text is not None and len(text) <= _MAX_SUMMARY_RECORD:
        summary[RECORD_KEY] = text
    return summary


def run_tables(record: Mapping[str, Any]) -> Tables:
    """The accuracy matrix, for a class-incremental record its Class-IL matrix
    (``class_il_matrix``: ``agnostic_accuracy``, empty cells for tasks not trained yet) and,
    for HAT, the mask usage and compression per task."""
    names = [str(n) for n in record["task_names"]]
    acc = record["accuracy"]
    tables = {
        "accuracy_matrix": (["after_task", *names],
                            [[names[t], *(float(a) for a in acc[t])] for t in range(len(acc))]),
    }
    rows = record.get("agnostic_accuracy")
    if protocol_of(record) == "class" and isinstance(rows, list):
        tables["class_il_matrix"] = (["after_task", *names], [
            [names[t], *(num(v) for v in row), *[None] * (len(names) - len(row))]
            for t, row in enumerate(rows)])
    if record.get("hat"):
        tables.update(_hat_tables(record["hat"], names))
    return tables


def _hat_tables(hat: Mapping[str, Any], names: list[str]) -> Tables:
    layers, tasks = list(hat["layers"]), list(hat["tasks"])
    units = list(hat.get("units") or [None] * len(layers))

    def task_name(k):
        return names[k] if isinstance(k, int) and 0 <= k < len(names) else str(k)

    usage = []
    for li, layer in enumerate(layers):
        for ki, k in enumerate(tasks):
            usage.append([str(layer), units[li], k, task_name(k),
                          *(_cell(hat, key, li, ki) for key in ("used", "overlap", "cumulative"))])
    compression = [[k, task_name(k), _at(hat.get("weights_kept"), ki),
                    _at(hat.get("units_kept"), ki)] for ki, k in enumerate(tasks)]
    return {
        "hat_mask_usage": (["layer", "units", "task", "task_name", "used", "overlap",
                            "cumulative"], usage),
        "hat_compression": (["task", "task_name", "weights_kept", "units_kept"], compression),
    }


def _at(values, i):
    return num(values[i]) if values is not None and i < len(values) else None


def _cell(hat, key, li, ki):
    rows = hat.get(key)
    return _at(rows[li], ki) if rows is not None and li < len(rows) else None


def hat_summary(hat: Mapping[str, Any]) -> dict[str, Any]:
    """Per layer: units used by all tasks together, mean units per task, mean reuse of earlier
    tasks' units; overall: weights and units the last task keeps."""
    out: dict[str, Any] = {}
    for li, layer in enumerate(hat["layers"]):
        used = [v for v in (hat.get("used") or [[]] * (li + 1))[li] if num(v) is not None]
        overlap = [v for v in (hat.get("overlap") or [[]] * (li + 1))[li][1:]
                   if num(v) is not None]
        cumulative = (hat.get("cumulative") or [[]] * (li + 1))[li]
        if cumulative:
            out[f"hat/cumulative/{layer}"] = num(cumulative[-1])
        if used:
            out[f"hat/used_mean/{layer}"] = num(sum(used) / len(used))
        if overlap:
            out[f"hat/overlap_mean/{layer}"] = num(sum(overlap) / len(overlap))
    for key in ("weights_kept", "units_kept"):
        values = hat.get(key)
        if values:
            out[f"hat/{key}"] = num(values[-1])
    return out
