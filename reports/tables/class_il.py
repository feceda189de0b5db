"""The class-incremental protocol's table and curve (:class:`ClassIL`), from a scenario's
class records only (``params.scenario.protocol == "class"``): per strategy, joint included as
the reference, the last Class-IL accuracy, the average incremental accuracy, the Class-IL
forgetting, ρ≤T against the joint record of the same seed trained in the class protocol, and
the Task-IL final accuracy of the same runs (and, for the strategies that predict by task
inference, the task-prediction accuracy); and the Class-IL accuracy after each task. The
records holding ``task_inference`` (hat, packnet, pnn, pathnet) also give
:class:`TaskInference`: every task score's numbers, and the score the records chose.

The records count as for the task protocol's tables (:func:`.records.scenario_records`: one
record per run, T agreed, diverged runs set apart, untagged records only); its notes and
missing runs are prefixed with the protocol so that they are not read as the task tables'.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from .. import metrics
from ..per_run import class_il_metrics, task_inference_metrics
from .model import (
    CLASS_IL_METRICS,
    JOINT,
    TASK_INFERENCE_METRICS,
    TASK_SCORES,
    ClassIL,
    Duplicate,
    Missing,
    Stat,
    TaskInference,
    seeds_arg,
    stat,
)
from .records import ScenarioRecords, scenario_records

__all__ = ["PREFIX", "class_il", "task_inference"]

#: how the notes and missing runs of the class protocol begin
PREFIX = "class-incremental protocol: "


def class_il(scenario: str, records: list[dict], confidence: float, notes: list[str],
             missing: list[Missing], duplicates: list[Duplicate]) -> ClassIL | None:
    """The Class-IL numbers of a scenario's untagged class records (None without any: tagged
    records are grid points of ``tune``); its notes and missing runs are added to ``notes``
    and ``missing``, conflicts to ``duplicates``."""
    records = [r for r in records if not r.get("tag")]
    if not records:
        return None
    own: list[str] = []
    sr = scenario_records(scenario, records, records, own, duplicates)
    stats: dict[str, dict[str, Stat]] = {}
    curve: dict[str, list[Stat]] = {}
    for s in sr.strategies:
        values: dict[str, list[float]] = defaultdict(list)
        rows: list[list[float]] = []
        for r in sr.by_strategy[s].values():
            run = class_il_metrics(r, sr.notes)
            for m, (v, _) in run.items():
                values[m].append(v)
            values["rho"].append(_rho(r, sr.joint.get(r["seed"]), sr.n_tasks))
            rows.append(_row_means(r, sr.n_tasks))
        stats[s] = {m: stat(values[m], confidence) for m in CLASS_IL_METRICS}
        arr = np.array(rows, dtype=float).reshape(len(rows), sr.n_tasks)
        curve[s] = [stat(list(arr[:, t]), confidence) for t in range(sr.n_tasks)]
    table_notes = _missing_joint(sr)
    inference = task_inference(sr, confidence)
    notes += [PREFIX + n for n in sr.notes]
    missing += [Missing(PREFIX + m.what, m.command) for m in sr.missing]
    return ClassIL(n_tasks=sr.n_tasks, strategies=sr.strategies, seeds=sr.seeds, stats=stats,
                   curve=curve, diverged=sr.diverged, notes=table_notes,
                   task_inference=inference)


def task_inference(sr: ScenarioRecords, confidence: float) -> TaskInference | None:
    """Per strategy and task score, mean ± CI over seeds of :data:`TASK_INFERENCE_METRICS`
    from the counted records (untagged, not diverged) holding ``task_inference``, and the
    seeds whose record chose each score (a note when they disagree); None without any such
    record. A malformed value is noted (``sr.notes``) and left out."""
    strategies: list[str] = []
    seeds: dict[str, list[int]] = {}
    scores: dict[str, list[str]] = {}
    stats: dict[str, dict[str, dict[str, Stat]]] = {}
    chosen: dict[str, dict[str, list[int]]] = {}
    notes: list[str] = []
    for s in sr.strategies:
        runs = {sd: task_inference_metrics(r, sr.notes) for sd, r in sr.by_strategy[s].items()
                if isinstance(r.get("task_inference"), dict)}
        if not runs:
            continue
        strategies.append(s)
        seeds[s] = sorted(runs)
        names = {sc for _, by_score in runs.values() for sc in by_score}
        scores[s] = ([sc for sc in TASK_SCORES if sc in names]
                     + sorted(names - set(TASK_SCORES)))
        stats[s] = {sc: {m: stat([by_score[sc][m] for _, by_score in runs.values()
                                  if sc in by_score], confidence)
                         for m in TASK_INFERENCE_METRICS} for sc in scores[s]}
        picked: dict[str, list[int]] = defaultdict(list)
        for sd in seeds[s]:
            if runs[sd][0] is not None:
                picked[runs[sd][0]].append(sd)
        chosen[s] = dict(picked)
        if len(chosen[s]) > 1:
            by = "; ".join(f"{sc}: seed(s) {seeds_arg(sds)}" for sc, sds in chosen[s].items())
            notes.append(f"{s}: the seeds' records chose different scores ({by}); the mark "
                         "names each score's seeds")
    if not strategies:
        return None
    return TaskInference(n_tasks=sr.n_tasks, strategies=strategies, seeds=seeds, scores=scores,
                         stats=stats, chosen=chosen, notes=notes)


def _row_means(r: dict, n: int) -> list[float]:
    """Class-IL accuracy after each task (the mean of each row of ``agnostic_accuracy``); NaN
    where the matrix is absent or malformed (:func:`class_il_metrics` notes it)."""
    rows = r.get("agnostic_accuracy")
    try:
        if isinstance(rows, list) and len(rows) == n:
            return [metrics.last_accuracy(rows[: t + 1]) for t in range(n)]
    except ValueError:
        pass
    return [math.nan] * n


def _rho(r: dict, joint: dict | None, n: int) -> float:
    """ρ≤T of ``r``'s Class-IL matrix against the joint record's, with the record's
    ``agnostic_random_accuracy`` as chance; NaN without the joint record or a field."""
    if joint is None:
        return math.nan
    fields = (r.get("agnostic_accuracy"), joint.get("agnostic_accuracy"),
              r.get("agnostic_random_accuracy"))
    if not all(isinstance(f, list) and len(f) == n for f in fields):
        return math.nan
    try:
        return float(metrics.triangular_mean_forgetting_ratio(*fields)[-1])
    except ValueError:
        return math.nan


def _missing_joint(sr: ScenarioRecords) -> list[str]:
    """Note the seeds without a joint class record (ρ needs it), with the command; returns
    the line under the table."""
    others = [s for s in sr.strategies if s != JOINT]
    wanted = sorted({sd for s in others for sd in sr.seeds[s]})
    joint_div = set(sr.diverged.get(JOINT, []))
    lacking = [sd for sd in wanted if sd not in sr.joint and sd not in joint_div]
    lines = []
    if joint_div & set(wanted):
        lines.append(f"joint diverged for seed(s) {seeds_arg(sorted(joint_div & set(wanted)))}:"
                     " those seeds have no ρ")
    if lacking:
        cmd = sr.command([JOINT], lacking)  # (scenario.protocol among the settings)
        what = (f"ρ on Class-IL needs the joint record of the same seed trained in the class "
                f"protocol; none for seed(s) {seeds_arg(lacking)}")
        sr.missing.append(Missing(what, cmd))
        lines.append(f"{what}: run `{cmd}`")
    return lines
