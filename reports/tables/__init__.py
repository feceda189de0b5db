"""Compute every number of the report from run records, as plain data (no files, no figures).

One module per table: :mod:`.records` (which records count: :class:`ScenarioRecords`),
:mod:`.forgetting` (ρ, Table 1, HAT's reduction), :mod:`.summary` (summary and cost),
:mod:`.hat` (grid, capacity, compression, monitoring), :mod:`.hyperparameters`
(hyperparameter table, sensitivity), :mod:`.missing` (runs to add), :mod:`.class_il` (the
class-incremental protocol's table and curve); :mod:`.model` holds the data types.

:func:`compute_report` groups records by scenario and returns one :class:`ScenarioReport` per
scenario; :mod:`reports.render` and :mod:`reports.figures` turn them into files. Tests compare
the numbers here (and in the CSV files) against hand computations.

Which records count where:

* No table mixes protocols (:func:`reports.schema.protocol_of`): every table and figure below
  reads the task-incremental records only; the class-incremental records feed
  :class:`ClassIL` alone (``ScenarioReport.class_il``; None when the scenario has none), whose
  ρ takes the joint record trained in the class protocol as reference. A record of another
  protocol is left out (noted).
* Table 1 (ρ), the ρ figure, the summary table and the accuracy heatmaps use untagged records
  (``tag == ""``); tagged records are grid points and only feed the robustness heatmap.
* A_J is the untagged ``joint`` record of the same scenario and seed; A_R is the evaluated
  record's own ``random_accuracy``. A seed without a joint record gets no ρ.
* ``joint`` and ``single`` are references, not methods (:data:`REFERENCES`): neither has a
  row in Table 1, the ρ figure or the cost figure, nor counts as a baseline. ``single`` (row
  t: task t trained alone from the seed's initialisation) is only the reference of forward
  transfer: it has no row in the summary table either.
* The summary table adds, per strategy and seed: FWT (:func:`reports.metrics.
  forward_transfer`, against the ``single`` record of the seed), intransigence
  (:func:`reports.metrics.intransigence`, against the ``joint`` record), the task-agnostic
  final accuracy (``agnostic_accuracy``; n/a when the record's is null: no task-agnostic
  prediction), the mean training seconds per task (``seconds``), the peak memory (max over
  tasks of ``peak_memory_mb``), the state held (max over tasks of ``state_mb``: exact tensor
  MB) and the rehearsal samples held (max over tasks of ``memory_samples``; n/a when null).
  Records written before these fields show "–" (no value), never an error; a seed without
  its reference shows "–" in that column.
* Records of one scenario must agree on T; a record with another T is left out (noted).
* Records of one run (same scenario, strategy, seed and tag), see :data:`DUPLICATE_RULE`:
  identical copies count once; records whose results differ are never chosen by file name:
  the newest ``created`` is used, and when several share the newest timestamp (or have none)
  the run is left out. Each such conflict is a :class:`Duplicate` of the report.
* A diverged run (``"diverged": true``, or NaN/Infinity accuracies:
  :func:`reports.schema.is_diverged`) gives no number: it is listed per strategy in
  ``ScenarioReport.diverged`` (untagged runs; tables show "diverged") and left out of every
  mean, figure and grid, with a note.
* The commands of :class:`Missing` reproduce the existing records' settings
  (:mod:`reports.commands`): results folder, epochs, tuned preset and every ``--set``.
* Records of a task trained alone (``params.scenario.task`` set: the compression experiment)
  only feed the compression-per-task data (:class:`Capacity` in ``compression``); HAT
  records with per-epoch ``hat_used``/``hat_reuse`` history feed the monitoring data
  (:class:`Monitoring`, untagged records only).
* The hyperparameter table (:class:`HyperRow`) describes the untagged records. The
  sensitivity data (:class:`Sensitivity`) of a strategy comes from the ``selection`` block of
  any of its records in the scenario (the newest ``created`` when they disagree), else from
  its tagged grid records that carry ``valid_accuracy`` (what ``benchmark tune`` writes).
"""

from __future__ import annotations

from collections import defaultdict

from ..schema import PROTOCOLS, protocol_of
from .class_il import class_il
from .forgetting import forgetting
from .hat import capacity, compression, grid, monitoring
from .hyperparameters import hyperparameters, sensitivity
from .missing import missing_runs, missing_selection
from .model import (
    CLASS_IL_METRICS,
    COST_METRICS,
    DUPLICATE_RULE,
    HAT,
    SUMMARY_METRICS,
    Capacity,
    ClassIL,
    Duplicate,
    Grid,
    Missing,
    Monitoring,
    ScenarioReport,
    Sensitivity,
    Stat,
)
from .records import scenario_records, trained_alone
from .summary import summary

__all__ = [  # what render, figures and build use; the other names live in their modules
    "CLASS_IL_METRICS",
    "COST_METRICS",
    "DUPLICATE_RULE",
    "SUMMARY_METRICS",
    "Capacity",
    "ClassIL",
    "Duplicate",
    "Grid",
    "Missing",
    "Monitoring",
    "ScenarioReport",
    "Sensitivity",
    "Stat",
    "compute_report",
    "compute_scenario",
]


def compute_scenario(
    scenario: str, records: list[dict], confidence: float = 0.95
) -> ScenarioReport:
    """All numbers of one scenario's report from its (validated) run records: the task
    protocol's records feed every table but the class protocol's (:func:`.class_il.class_il`)."""
    notes: list[str] = []
    duplicates: list[Duplicate] = []
    classes = [r for r in records if protocol_of(r) == "class" and not trained_alone(r)]
    notes += [f"{r.get('_source', '?')}: protocol {protocol_of(r)!r} is none of "
              f"{', '.join(PROTOCOLS)}; left out" for r in records
              if protocol_of(r) not in PROTOCOLS]
    notes += [f"{r.get('_source', '?')}: a task trained alone in the class-incremental "
              "protocol; left out" for r in records
              if protocol_of(r) == "class" and trained_alone(r)]
    records = [r for r in records if protocol_of(r) == "task"]
    alone = [r for r in records if trained_alone(r)]
    counted = [r for r in records if not trained_alone(r)]
    compressed = compression(alone, notes, duplicates)
    if not counted:
        missing: list[Missing] = []
        return ScenarioReport(
            scenario=scenario, n_tasks=1, strategies=[], seeds={}, confidence=confidence,
            rho={}, table_ts=[], best={}, reduction=[], summary={}, acc_mean={}, grid=None,
            capacity=None, missing=missing, notes=notes, compression=compressed,
            sensitivity=sensitivity(records, [], notes), duplicates=duplicates,
            class_il=class_il(scenario, classes, confidence, notes, missing, duplicates),
        )
    sr = scenario_records(scenario, records, counted, notes, duplicates)
    rho = forgetting(sr, confidence)
    missing_runs(sr, confidence)
    summ = summary(sr, confidence)
    hyper = hyperparameters(sr.by_strategy, sr.strategies, notes)
    missing_selection(sr)
    hat_records = list(sr.by_strategy.get(HAT, {}).values())
    cil = class_il(scenario, classes, confidence, notes, sr.missing, duplicates)
    return ScenarioReport(
        scenario=scenario,
        n_tasks=sr.n_tasks,
        strategies=sr.strategies,
        seeds=sr.seeds,
        confidence=confidence,
        rho=rho.rho,
        table_ts=rho.table_ts,
        best=rho.best,
        reduction=rho.reduction,
        summary=summ.stats,
        acc_mean=summ.acc_mean,
        grid=grid(sr, confidence),
        capacity=capacity(hat_records, sr.n_tasks, notes),
        missing=sr.missing,
        notes=notes,
        compression=compressed,
        monitoring=monitoring(hat_records, sr.n_tasks),
        hyperparameters=hyper,
        sensitivity=sensitivity(records, sr.records, notes),
        diverged=sr.diverged,
        duplicates=duplicates,
        summary_blank=summ.blank,
        summary_notes=summ.notes,
        summary_left_out=summ.left_out,
        class_il=cil,
    )


def compute_report(records: list[dict], confidence: float = 0.95) -> dict[str, ScenarioReport]:
    """One :class:`ScenarioReport` per scenario (sorted by name) from validated run records."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[r["scenario"]].append(r)
    return {s: compute_scenario(s, groups[s], confidence) for s in sorted(groups)}
