"""Compute every number of the report from run records, as plain data (no files, no figures).

:func:`compute_report` groups records by scenario and returns one :class:`ScenarioReport` per
scenario; :mod:`reports.render` and :mod:`reports.figures` turn them into files. Tests compare
the numbers here (and in the CSV files) against hand computations.

Which records count where:

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
  :func:`reports.records.is_diverged`) gives no number: it is listed per strategy in
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

import itertools
import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import commands, metrics
from .records import param_text

__all__ = [
    "BASELINE_EXCLUDE",
    "COST_METRICS",
    "NO_DATA",
    "NOT_APPLICABLE",
    "REFERENCES",
    "SUMMARY_METRICS",
    "DUPLICATE_RULE",
    "Capacity",
    "Duplicate",
    "Grid",
    "HyperRow",
    "Missing",
    "Monitoring",
    "ScenarioReport",
    "Sensitivity",
    "Stat",
    "compute_report",
    "compute_scenario",
    "param_text",
    "selection_source",
]

HAT = "hat"
JOINT = "joint"
SINGLE = "single"
#: reference runs, not methods: no row in Table 1, the ρ figure or the cost figure
REFERENCES = (JOINT, SINGLE)
#: strategies that are not baselines when choosing the best baseline
BASELINE_EXCLUDE = (HAT, JOINT, SINGLE)
#: the summary table's metrics, per strategy (mean over seeds), in column order
SUMMARY_METRICS = ("final_acc", "bwt", "forgetting", "fwt", "intransigence", "agnostic_acc",
                   "seconds_per_task", "peak_memory_mb", "state_mb", "memory_samples")
#: the cost figure's axes: accuracy against these
COST_METRICS = ("seconds_per_task", "peak_memory_mb", "state_mb")
#: a summary cell of a strategy that has no such value (e.g. no task-agnostic prediction)
NOT_APPLICABLE = "n/a"
#: a summary cell without data: the records predate the field, or the reference is missing
NO_DATA = "–"
RUN_CMD = commands.RUN
#: how records of one run with different results are resolved (index.md quotes it)
DUPLICATE_RULE = (
    "records of one run (same scenario, strategy, seed and tag) with different results are "
    "never chosen by file name: the one with the newest `created` timestamp is used; when "
    "several share the newest timestamp (or have none), the run is left out of every table "
    "and figure. Remove the wrong file(s) to settle it"
)
#: the fields that make two records of one run the same result (else a conflict)
RESULT_FIELDS = ("task_names", "accuracy", "valid_accuracy", "random_accuracy", "params",
                 "hat", "selection", "diverged")
TUNE_CMD = "python -m benchmark tune --scenario {scenario}"
#: hyperparameter table: a value (or source) that the seeds of one strategy do not agree on
DIFFERS = "differs across seeds"
NOT_SELECTED = "defaults / set by hand (not selected)"
#: the source of a strategy without hyperparameters of its own (naive, joint, ...)
NOTHING_TO_SELECT = "no hyperparameters of its own (nothing to select)"


@dataclass
class Stat:
    """Mean over seeds with the half-width of its confidence interval (NaN when n < 2)."""

    mean: float
    half: float
    n: int
    values: list[float] = field(default_factory=list)

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    def columns(self) -> dict[str, Any]:
        """The CSV columns of a statistic."""
        return {"mean": self.mean, "ci_half": self.half, "ci_low": self.low,
                "ci_high": self.high, "n_seeds": self.n}


@dataclass
class Missing:
    """Something the report could not render, and the command that produces it."""

    what: str
    command: str | None = None

    def line(self) -> str:
        return self.what + (f" -> run: {self.command}" if self.command else "")


@dataclass
class Duplicate:
    """Records of one run whose results differ, and which of them the report uses."""

    strategy: str
    seed: int
    tag: str
    sources: list[str]
    used: str | None  # None: left out (no single newest record)

    def run(self) -> str:
        return f"{self.strategy} seed {self.seed}" + (f" [{self.tag}]" if self.tag else "")

    def line(self) -> str:
        head = (f"duplicate records of {self.run()} with different results: "
                f"{', '.join(self.sources)}; ")
        if self.used is None:
            return head + "left out (no single newest `created`)"
        return head + f"using {self.used} (the newest `created`)"


@dataclass
class Grid:
    """HAT smax × c robustness grid: ``mean[i][j]`` for ``smax[i]``, ``c[j]``."""

    metric: str  # "rho" (ρ^{≤T}) or "final_acc"
    smax: list[float]
    c: list[float]
    cells: dict[tuple[float, float], Stat]

    def matrix(self) -> np.ndarray:
        m = np.full((len(self.smax), len(self.c)), np.nan)
        for i, s in enumerate(self.smax):
            for j, c in enumerate(self.c):
                if (s, c) in self.cells:
                    m[i, j] = self.cells[(s, c)].mean
        return m


@dataclass
class Capacity:
    """HAT mask statistics averaged over seeds (untagged hat records that carry them)."""

    layers: list[str]
    tasks: list[str]
    used: np.ndarray  # layers × tasks, fraction of the layer's units the task uses
    overlap: np.ndarray | None  # layers × tasks, fraction of those already used earlier
    weights_kept: np.ndarray | None  # per task, fraction of weights kept
    n: int
    #: per task, fraction of all gated units kept (layers weighted by their size)
    units_kept: np.ndarray | None = None
    #: layers × tasks, fraction of the layer's weights kept: used[l] · used[l-1] (the weights
    #: joining two kept units; the first layer's inputs are all kept)
    layer_weights_kept: np.ndarray | None = None


@dataclass
class Monitoring:
    """HAT capacity over training (per-epoch ``hat_used``/``hat_reuse`` of the history),
    mean over the seeds that reached each epoch (epochs vary with early stopping)."""

    layers: list[str]
    tasks: list[str]
    used: list[np.ndarray]  # per task: epochs × layers, fraction of units the task uses
    reuse: list[np.ndarray]  # per task: epochs × layers, fraction of those used earlier
    seeds: list[np.ndarray]  # per task: number of seeds per epoch
    n: int  # records


@dataclass
class HyperRow:
    """One strategy's row of the hyperparameter table (its untagged records)."""

    strategy: str
    seeds: list[int]
    #: ``section.key`` -> canonical value text, :data:`DIFFERS`, or ``n/a`` (not recorded)
    params: dict[str, str]
    source: str  # selection_source(...), NOT_SELECTED or DIFFERS
    selected: bool  # every seed carries the same selection
    preset: str | None = None
    criterion_value: float = math.nan  # of the chosen point, NaN when not selected/unknown


@dataclass
class Sensitivity:
    """A strategy's validation criterion over its hyperparameter search space."""

    strategy: str
    keys: list[str]  # ``section.key``, in plotting order
    axes: list[list[Any]]  # per key its values (numbers as float), sorted when numeric
    #: point (canonical text per key, in ``keys`` order) -> criterion (NaN: unknown)
    values: dict[tuple[str, ...], float]
    chosen: tuple[str, ...] | None  # the selected point (``selection``) or the best (grid)
    source: str  # "selection" or "grid"
    where: str  # the preset of the selection, or "tagged grid records"
    n_seeds: dict[tuple[str, ...], int | None]  # per point, seeds behind its criterion

    def point_key(self, point: Sequence[Any]) -> tuple[str, ...]:
        return tuple(param_text(v) for v in point)

    def value(self, point: Sequence[Any]) -> float:
        """Criterion at ``point`` (values in ``keys`` order); NaN when absent."""
        return self.values.get(self.point_key(point), math.nan)

    def points(self) -> list[tuple[Any, ...]]:
        """The points that have an entry, in axis order (first key slowest)."""
        return [p for p in itertools.product(*self.axes) if self.point_key(p) in self.values]

    def label(self, point: Sequence[Any]) -> str:
        """``key=value`` pairs, keys sorted, as a grid tag spells them."""
        return ",".join(f"{k}={t}" for k, t in sorted(zip(self.keys, self.point_key(point),
                                                          strict=True)))


@dataclass
class ScenarioReport:
    scenario: str
    n_tasks: int
    strategies: list[str]  # untagged strategies: hat, baselines (sorted), joint
    seeds: dict[str, list[int]]
    confidence: float
    rho: dict[str, list[Stat]]  # strategy (not joint) -> Stat per t = 1..T (index t-1)
    table_ts: list[int]  # 1-based t shown in Table 1
    best: dict[int, list[str]]  # table t -> strategies in bold (|ρ| smallest)
    reduction: list[dict[str, Any]]  # per table t: best_baseline, rho_baseline, rho_hat, pct
    #: strategy (not single) -> each of :data:`SUMMARY_METRICS` (a Stat with n = 0: no value)
    summary: dict[str, dict[str, Stat]]
    acc_mean: dict[str, np.ndarray]
    grid: Grid | None
    capacity: Capacity | None
    missing: list[Missing]
    notes: list[str]
    #: each task trained alone (compression experiment): tasks are task names
    compression: Capacity | None = None
    monitoring: Monitoring | None = None
    hyperparameters: list[HyperRow] = field(default_factory=list)
    sensitivity: list[Sensitivity] = field(default_factory=list)
    #: untagged strategy -> seeds of its diverged runs (no numbers; left out of the means)
    diverged: dict[str, list[int]] = field(default_factory=dict)
    duplicates: list[Duplicate] = field(default_factory=list)
    #: strategy -> metric -> what a summary cell without value shows (:data:`NOT_APPLICABLE`
    #: or :data:`NO_DATA`), for the metrics of :attr:`summary` that have no value
    summary_blank: dict[str, dict[str, str]] = field(default_factory=dict)
    #: lines under the summary table: missing references and the commands that produce them
    summary_notes: list[str] = field(default_factory=list)

    def only_diverged(self, rho: bool = False, summary: bool = False) -> list[str]:
        """Strategies whose every untagged run diverged (not in :attr:`strategies`); with
        ``rho``, those that would have a row in Table 1 (not a reference, and Table 1
        exists); with ``summary``, those that would have a row in the summary (not single)."""
        out = [s for s in _order(set(self.diverged)) if s not in self.strategies]
        if rho:
            out = [s for s in out if s not in REFERENCES] if self.rho else []
        if summary:
            out = [s for s in out if s != SINGLE]
        return out

    def has_memory_samples(self) -> bool:
        """Whether a strategy of the summary holds rehearsal samples (its column is shown)."""
        return any(m["memory_samples"].n > 0 for m in self.summary.values())

    def summary_cell_blank(self, strategy: str, metric: str) -> str:
        """What the summary shows for a metric without value: n/a or –."""
        return self.summary_blank.get(strategy, {}).get(metric, NO_DATA)

    def cost_strategies(self) -> list[str]:
        """Methods (not references) of the cost figure: a final accuracy and a training time."""
        return [s for s, m in self.summary.items()
                if s not in REFERENCES and m["final_acc"].n > 0
                and m["seconds_per_task"].n > 0]

    def cost_rows(self) -> list[dict[str, Any]]:
        """The cost figure's data: per method, mean and CI half-width of the final accuracy,
        the training seconds per task, the peak memory and the state held (MB), and the seeds
        behind each."""
        rows = []
        for s in self.cost_strategies():
            row: dict[str, Any] = {"strategy": s}
            for m in ("final_acc", *COST_METRICS):
                st = self.summary[s][m]
                row.update({m: st.mean, f"{m}_ci_half": st.half, f"{m}_n_seeds": st.n})
            rows.append(row)
        return rows

    def rho_rows(self, all_t: bool = False) -> list[dict[str, Any]]:
        """Rows ``strategy, t, mean, ci_half, ci_low, ci_high, n_seeds, n_diverged`` of
        Table 1 (or of every t with ``all_t``); a strategy whose every run diverged has NaN
        rows."""
        rows = []
        ts = range(1, self.n_tasks + 1) if all_t else self.table_ts
        nan = Stat(math.nan, math.nan, 0)
        for s, stats in [*self.rho.items(), *((s, None) for s in self.only_diverged(rho=True))]:
            for t in ts:
                st = nan if stats is None else stats[t - 1]
                rows.append({"strategy": s, "t": t, **st.columns(),
                             "n_diverged": len(self.diverged.get(s, []))})
        return rows

    def summary_rows(self) -> list[dict[str, Any]]:
        rows = []
        nan = Stat(math.nan, math.nan, 0)
        for s in [*self.summary, *self.only_diverged(summary=True)]:
            for m in SUMMARY_METRICS:
                st = self.summary[s][m] if s in self.summary else nan
                rows.append({"strategy": s, "metric": m, **st.columns(),
                             "n_diverged": len(self.diverged.get(s, []))})
        return rows


def _stat(values: list[float], confidence: float) -> Stat:
    mean, half = metrics.mean_ci(values, confidence)
    vals = [float(v) for v in values if not math.isnan(v)]
    return Stat(mean, half, len(vals), vals)


def _order(strategies: set[str]) -> list[str]:
    """HAT first, the other methods sorted by name, then the references (joint, single)."""
    mid = sorted(s for s in strategies if s != HAT and s not in REFERENCES)
    return ([HAT] if HAT in strategies else []) + mid + [s for s in REFERENCES if s in strategies]


def _seeds_arg(seeds: list[int]) -> str:
    return ",".join(str(s) for s in sorted(seeds))


def _extra_seeds(have: list[int], total: int = 3) -> list[int]:
    out, k = [], 0
    while len(have) + len(out) < total:
        if k not in have:
            out.append(k)
        k += 1
    return out


def _num(x: object) -> float | None:
    if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x):
        return float(x)
    return None


def _result(r: dict) -> str:
    return json.dumps({k: r.get(k) for k in RESULT_FIELDS}, sort_keys=True, default=str)


def _dedupe(
    records: list[dict], notes: list[str], duplicates: list[Duplicate] | None = None
) -> list[dict]:
    """One record per run (strategy, seed, tag) by :data:`DUPLICATE_RULE`; each conflict is
    appended to ``duplicates`` (or, without it, to ``notes``)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["strategy"], r["seed"], r.get("tag", ""))].append(r)
    out = []
    for (strategy, seed, tag), recs in groups.items():
        if len(recs) == 1:
            out.append(recs[0])
            continue
        sources = [str(r.get("_source", "?")) for r in recs]
        if len({_result(r) for r in recs}) == 1:
            out.append(recs[0])
            notes.append(f"{len(recs)} identical records of {strategy} seed {seed}"
                         + (f" [{tag}]" if tag else "") + f" ({', '.join(sources)}): counted once")
            continue
        newest = max(str(r.get("created", "")) for r in recs)
        latest = [r for r in recs if str(r.get("created", "")) == newest]
        used = latest[0] if newest and len({_result(r) for r in latest}) == 1 else None
        if used is not None:
            out.append(used)
        dup = Duplicate(strategy, seed, tag, sources,
                        None if used is None else str(used.get("_source", "?")))
        if duplicates is not None:
            duplicates.append(dup)
        else:
            notes.append(dup.line())
    return out


def compute_scenario(
    scenario: str, records: list[dict], confidence: float = 0.95
) -> ScenarioReport:
    """All numbers of one scenario's report from its (validated) run records."""
    notes: list[str] = []
    missing: list[Missing] = []
    duplicates: list[Duplicate] = []
    all_records = records
    alone = [r for r in records if trained_alone(r)]
    records = [r for r in records if not trained_alone(r)]
    compression = _compression(alone, notes, duplicates)
    if not records:
        return ScenarioReport(
            scenario=scenario, n_tasks=1, strategies=[], seeds={}, confidence=confidence,
            rho={}, table_ts=[], best={}, reduction=[], summary={}, acc_mean={}, grid=None,
            capacity=None, missing=missing, notes=notes, compression=compression,
            sensitivity=_sensitivity(all_records, [], notes), duplicates=duplicates,
        )
    t_count = Counter(len(r["task_names"]) for r in records)
    n_tasks = t_count.most_common(1)[0][0]
    for r in records:
        if len(r["task_names"]) != n_tasks:
            notes.append(
                f"{r.get('_source', '?')}: T = {len(r['task_names'])}, the scenario's records "
                f"have T = {n_tasks}; left out"
            )
    records = _dedupe([r for r in records if len(r["task_names"]) == n_tasks], notes,
                      duplicates)
    settings_records = records  # every run's params, diverged or not: the commands' settings
    diverged: dict[str, list[int]] = defaultdict(list)
    for r in records:
        if not r.get("diverged"):
            continue
        if r.get("tag"):
            notes.append(f"{r['strategy']} seed {r['seed']} [{r['tag']}] diverged (non-finite "
                         "loss): left out of the grid")
        else:
            diverged[r["strategy"]].append(r["seed"])
    diverged = {s: sorted(diverged[s]) for s in _order(set(diverged))}
    for s, sds in diverged.items():
        notes.append(f"{s}: seed(s) {_seeds_arg(sds)} diverged (non-finite loss): shown as "
                     "diverged, left out of every mean and figure")
    records = [r for r in records if not r.get("diverged")]
    acc = {id(r): np.asarray(r["accuracy"], dtype=float) for r in records}

    untagged = [r for r in records if not r.get("tag")]
    by_strategy: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in untagged:
        by_strategy[r["strategy"]][r["seed"]] = r
    strategies = _order(set(by_strategy))
    seeds = {s: sorted(by_strategy[s]) for s in strategies}
    joint = by_strategy.get(JOINT, {})
    all_seeds = sorted({sd for s in strategies for sd in seeds[s]}
                       | {sd for sds in diverged.values() for sd in sds}) or sorted(
        {r["seed"] for r in records}
    )

    own_settings: dict[str, list[dict]] = defaultdict(list)
    for r in settings_records:
        if not r.get("tag"):
            own_settings[r["strategy"]].append(r)
    shared_settings = [r for r in settings_records if not r.get("tag")] or settings_records
    out_folder = commands.results_folder(settings_records)

    def command(strategies_: Sequence[str], seeds_: Sequence[int]) -> str:
        cmd, unclear = commands.run_command(scenario, strategies_, _seeds_arg(list(seeds_)),
                                            own_settings, shared_settings, out_folder)
        if unclear:
            notes.append(f"the command for {', '.join(strategies_)} (seeds "
                         f"{_seeds_arg(list(seeds_))}) cannot reproduce "
                         f"{', '.join(unclear)}: the records disagree; add it by hand")
        return cmd

    def rho_curve(r: dict) -> np.ndarray | None:
        j = joint.get(r["seed"])
        if j is None:
            return None
        return metrics.mean_forgetting_ratio(acc[id(r)], acc[id(j)], r["random_accuracy"])

    # --- ρ per strategy (Table 1, figure) --------------------------------------------------
    rho: dict[str, list[Stat]] = {}
    for s in strategies:
        if s in REFERENCES:
            continue
        curves = [c for c in (rho_curve(r) for r in by_strategy[s].values()) if c is not None]
        if curves:
            arr = np.vstack(curves)
            rho[s] = [_stat(list(arr[:, t]), confidence) for t in range(n_tasks)]
    others = [s for s in strategies if s not in REFERENCES]
    other_seeds = {sd for s in others for sd in seeds[s]}
    joint_div = set(diverged.get(JOINT, []))
    if others and joint_div & other_seeds:
        notes.append(f"joint diverged for seed(s) {_seeds_arg(sorted(joint_div & other_seeds))}:"
                     " those seeds have no rho")
    if others and not joint and not joint_div:
        missing.append(
            Missing(
                "no joint records: the forgetting ratio (Table 1, rho figure, HAT reduction) "
                "needs A_J from joint training",
                command([JOINT], all_seeds),
            )
        )
    elif others:
        lacking = sorted(other_seeds - set(joint) - joint_div)
        if lacking:
            missing.append(
                Missing(
                    f"no joint record for seed(s) {_seeds_arg(lacking)}: those seeds have no rho",
                    command([JOINT], lacking),
                )
            )

    table_ts = sorted({min(2, n_tasks), n_tasks})
    best: dict[int, list[str]] = {}
    reduction: list[dict[str, Any]] = []
    for t in table_ts:
        means = {s: st[t - 1].mean for s, st in rho.items()}
        b = metrics.best_baseline(means, exclude=REFERENCES)
        best[t] = [] if b is None else [s for s in means if abs(means[s]) == abs(means[b])]
        if rho:
            base = metrics.best_baseline(means, exclude=BASELINE_EXCLUDE)
            rho_hat = means.get(HAT, math.nan)
            rho_base = means[base] if base is not None else math.nan
            relative = metrics.reduction_is_relative(rho_base)
            reduction.append(
                {
                    "t": t,
                    "best_baseline": base,
                    "rho_baseline": rho_base,
                    "rho_hat": rho_hat,
                    # a percentage of a baseline ρ of about 0 explodes: then the difference
                    "reduction_pct": (metrics.forgetting_reduction(rho_hat, rho_base)
                                      if relative else math.nan),
                    "reduction_abs": metrics.forgetting_reduction_abs(rho_hat, rho_base),
                    "measure": "percent" if relative else (
                        "difference" if not math.isnan(rho_base) else ""),
                }
            )
    if HAT not in by_strategy and HAT not in diverged:
        missing.append(
            Missing(
                "no hat records: HAT's reduction of forgetting cannot be computed",
                command([HAT], all_seeds),
            )
        )
    if not [s for s in (*strategies, *diverged) if s not in BASELINE_EXCLUDE]:
        missing.append(
            Missing(
                "no baseline records (a strategy other than hat, joint and single): HAT's "
                "reduction of forgetting cannot be computed",
                command(["<baseline, e.g. ewc>"], all_seeds),
            )
        )

    # --- CI needs >= 2 seeds ------------------------------------------------------------------
    single: dict[str, list[str]] = defaultdict(list)
    for s in strategies:
        if len(seeds[s]) == 1:
            single[_seeds_arg(_extra_seeds(seeds[s] + diverged.get(s, [])))].append(s)
    for extra, ss in single.items():
        missing.append(
            Missing(
                f"{', '.join(ss)}: a single seed; a {confidence:.0%} confidence interval "
                "needs >= 2 seeds",
                command(ss, [int(x) for x in extra.split(",")]),
            )
        )

    # --- summary: accuracy, BWT, forgetting, transfer, cost --------------------------------------
    summary: dict[str, dict[str, Stat]] = {}
    summary_blank: dict[str, dict[str, str]] = {}
    acc_mean: dict[str, np.ndarray] = {}
    singles = by_strategy.get(SINGLE, {})
    for s in strategies:
        mats = [acc[id(r)] for r in by_strategy[s].values()]
        acc_mean[s] = np.mean(np.stack(mats), axis=0)
        if s == SINGLE:
            continue
        values: dict[str, list[float]] = defaultdict(list)
        blanks: dict[str, set[str]] = defaultdict(set)
        for r in by_strategy[s].values():
            refs = {SINGLE: singles.get(r["seed"]), JOINT: joint.get(r["seed"])}
            for m, (v, why) in _run_metrics(r, acc, refs, notes).items():
                values[m].append(v)
                if why:
                    blanks[m].add(why)
        summary[s] = {m: _stat(values[m], confidence) for m in SUMMARY_METRICS}
        summary_blank[s] = {m: NOT_APPLICABLE if blanks[m] == {NOT_APPLICABLE} else NO_DATA
                            for m in SUMMARY_METRICS if summary[s][m].n == 0}
    summary_notes = _reference_notes(summary, seeds, singles, diverged.get(SINGLE, []),
                                     command)

    # --- hyperparameters: table, sensitivity ------------------------------------------------
    hyper = _hyperparameters(by_strategy, strategies, notes)
    if strategies and not any(r.get("selection") for r in all_records):
        missing.append(
            Missing(
                "no record carries a hyperparameter selection (every strategy ran with paper "
                "defaults or values set by hand); `make tune` selects them on validation data "
                "for every scenario",
                TUNE_CMD.format(scenario=scenario),
            )
        )

    return ScenarioReport(
        scenario=scenario,
        n_tasks=n_tasks,
        strategies=strategies,
        seeds=seeds,
        confidence=confidence,
        rho=rho,
        table_ts=table_ts,
        best=best,
        reduction=reduction,
        summary=summary,
        acc_mean=acc_mean,
        grid=_grid(scenario, records, joint, acc, confidence, missing, command),
        capacity=_capacity(list(by_strategy.get(HAT, {}).values()), n_tasks, notes),
        missing=missing,
        notes=notes,
        compression=compression,
        monitoring=_monitoring(list(by_strategy.get(HAT, {}).values()), n_tasks),
        hyperparameters=hyper,
        sensitivity=_sensitivity(all_records, records, notes),
        diverged=diverged,
        duplicates=duplicates,
        summary_blank=summary_blank,
        summary_notes=summary_notes,
    )


def _per_task(rec: dict, key: str, n_tasks: int) -> list[float] | None:
    """A record's per-task list ``key`` as floats (None entries as NaN); None when the field
    is absent or null or not a list of ``n_tasks`` numbers."""
    v = rec.get(key)
    if not isinstance(v, list) or len(v) != n_tasks:
        return None
    out = []
    for x in v:
        if x is None:
            out.append(math.nan)
        elif _num(x) is None:
            return None
        else:
            out.append(float(x))
    return out


def _run_metrics(
    rec: dict, acc: dict[int, np.ndarray], refs: dict[str, dict | None], notes: list[str]
) -> dict[str, tuple[float, str]]:
    """Each of :data:`SUMMARY_METRICS` of one run: (value, "") or (NaN, what its summary cell
    shows without value: :data:`NOT_APPLICABLE` when the record says the strategy has no such
    value, :data:`NO_DATA` when the field or the reference record is missing)."""
    a = acc[id(rec)]
    n = a.shape[0]
    nan = math.nan
    out: dict[str, tuple[float, str]] = {
        "final_acc": (metrics.final_average_accuracy(a), ""),
        "bwt": (metrics.bwt(a), ""),
        "forgetting": (metrics.forgetting(a), ""),
    }
    single, joint = refs[SINGLE], refs[JOINT]
    out["fwt"] = ((metrics.forward_transfer(a, acc[id(single)]), "") if single is not None
                  else (nan, NO_DATA))
    out["intransigence"] = ((metrics.intransigence(a, acc[id(joint)]), "") if joint is not None
                            else (nan, NO_DATA))
    src = rec.get("_source", "?")
    if "agnostic_accuracy" not in rec:
        out["agnostic_acc"] = (nan, NO_DATA)
    elif rec["agnostic_accuracy"] is None:
        out["agnostic_acc"] = (nan, NOT_APPLICABLE)
    else:
        agn = rec["agnostic_accuracy"]
        try:
            if not isinstance(agn, list) or len(agn) != n:
                raise ValueError(f"{n} rows expected")
            out["agnostic_acc"] = (metrics.agnostic_final_accuracy(agn), "")
        except ValueError as e:
            notes.append(f"{src}: malformed agnostic_accuracy ({e}); left out")
            out["agnostic_acc"] = (nan, NO_DATA)
    secs = _per_task(rec, "seconds", n)
    out["seconds_per_task"] = ((float(np.mean(secs)), "") if secs is not None
                               and all(math.isfinite(x) for x in secs) else (nan, NO_DATA))
    for key in ("peak_memory_mb", "state_mb"):
        finite = [x for x in _per_task(rec, key, n) or [] if math.isfinite(x)]
        out[key] = (max(finite), "") if finite else (nan, NO_DATA)
    if "memory_samples" in rec and rec["memory_samples"] is None:
        out["memory_samples"] = (nan, NOT_APPLICABLE)
    else:
        held = _per_task(rec, "memory_samples", n)
        held = [x for x in held or [] if math.isfinite(x)]
        out["memory_samples"] = (max(held), "") if held else (nan, NO_DATA)
    return out


def _reference_notes(
    summary: dict[str, dict[str, Stat]],
    seeds: dict[str, list[int]],
    singles: dict[int, dict],
    single_diverged: list[int],
    command: Callable[[Sequence[str], Sequence[int]], str],
) -> list[str]:
    """Lines under the summary table naming the seeds whose FWT lacks its ``single``
    reference, with the command that trains it."""
    wanted = sorted({sd for s in summary for sd in seeds[s]})
    lacking = [sd for sd in wanted if sd not in singles and sd not in single_diverged]
    notes = []
    if single_diverged:
        notes.append(f"single diverged for seed(s) {_seeds_arg(single_diverged)}: those seeds "
                     "have no FWT")
    if lacking:
        notes.append(f"FWT needs the `single` record of the same seed (each task trained alone "
                     f"from the seed's initialisation); none for seed(s) {_seeds_arg(lacking)}: "
                     f"run `{command([SINGLE], lacking)}`")
    return notes


def trained_alone(rec: dict) -> bool:
    """A record of one task trained alone (``scenario.task``): the compression experiment."""
    sc = rec.get("params", {}).get("scenario") if isinstance(rec.get("params"), dict) else None
    return isinstance(sc, dict) and sc.get("task") is not None


def _layer_weights(hat: dict) -> np.ndarray:
    """layers × tasks fraction of each layer's weights that join two kept units: as the
    record gives it (``layer_weights_kept``: residual networks, where a layer's input gate is
    not the previous layer's), else from ``used`` along the chain of layers (older records)."""
    given = hat.get("layer_weights_kept")
    if given is not None:
        return np.asarray(given, dtype=float)
    used = np.asarray(hat["used"], dtype=float)
    prev = np.vstack([np.ones((1, used.shape[1])), used[:-1]])
    return used * prev


def _compression(
    alone: list[dict], notes: list[str], duplicates: list[Duplicate] | None = None
) -> Capacity | None:
    """Per task trained alone (HAT records with mask statistics): fraction of units per layer
    and overall, and of weights per layer and overall, mean over seeds (diverged runs left
    out, noted)."""
    alone = _dedupe(alone, notes, duplicates)
    for r in alone:
        if r.get("diverged"):
            notes.append(f"{r['strategy']} seed {r['seed']} [{r.get('tag', '')}] diverged "
                         "(non-finite loss): left out of the compression data")
    hat = [r for r in alone if r["strategy"] == HAT and r.get("hat") and not r.get("diverged")
           and r["hat"].get("used") is not None and len(r["task_names"]) == 1]
    if not hat:
        return None
    layers = [str(x) for x in hat[0]["hat"]["layers"]]
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in hat:
        if [str(x) for x in r["hat"]["layers"]] != layers:
            notes.append(f"{r.get('_source', '?')}: HAT statistics of other layers; left out")
            continue
        by_task[str(r["task_names"][0])].append(r["hat"])
    tasks = sorted(by_task)
    used = np.array([[np.mean([h["used"][i][0] for h in by_task[t]]) for t in tasks]
                     for i in range(len(layers))])
    layer_w = np.array([
        np.mean([_layer_weights(h)[:, 0] for h in by_task[t]],
                axis=0)
        for t in tasks
    ]).T

    def per_task(key: str) -> np.ndarray | None:
        if any(h.get(key) is None for t in tasks for h in by_task[t]):
            return None
        return np.array([np.mean([h[key][0] for h in by_task[t]]) for t in tasks])

    return Capacity(
        layers=layers, tasks=tasks, used=used, overlap=None,
        weights_kept=per_task("weights_kept"), n=min(len(v) for v in by_task.values()),
        units_kept=per_task("units_kept"), layer_weights_kept=layer_w,
    )


def _monitoring(hat_records: list[dict], n_tasks: int) -> Monitoring | None:
    """Per task and epoch, mean ``hat_used``/``hat_reuse`` per layer over the untagged hat
    records whose history has them (records with another layer count are left out)."""
    recs = []
    for r in hat_records:
        hist = r.get("history")
        if not isinstance(hist, list) or len(hist) != n_tasks:
            continue
        if not all(isinstance(e, dict) and isinstance(e.get("hat_used"), list)
                   and isinstance(e.get("hat_reuse"), list) for task in hist for e in task):
            continue
        if not all(hist):
            continue
        recs.append(r)
    if not recs:
        return None
    n_layers = len(recs[0]["history"][0][0]["hat_used"])
    recs = [r for r in recs
            if all(len(e["hat_used"]) == n_layers for task in r["history"] for e in task)]
    hat0 = recs[0].get("hat") or {}
    layers = [str(x) for x in hat0.get("layers", [])]
    if len(layers) != n_layers:
        layers = [f"layer {i + 1}" for i in range(n_layers)]
    used, reuse, seeds = [], [], []
    for t in range(n_tasks):
        n_ep = max(len(r["history"][t]) for r in recs)
        u = np.full((len(recs), n_ep, n_layers), np.nan)
        v = np.full_like(u, np.nan)
        for k, r in enumerate(recs):
            for e, entry in enumerate(r["history"][t]):
                u[k, e] = entry["hat_used"]
                v[k, e] = entry["hat_reuse"]
        used.append(np.nanmean(u, axis=0))
        reuse.append(np.nanmean(v, axis=0))
        seeds.append(np.sum(~np.isnan(u[:, :, 0]), axis=0))
    names = [str(x) for x in recs[0]["task_names"]]
    return Monitoring(layers=layers, tasks=names, used=used, reuse=reuse, seeds=seeds,
                      n=len(recs))


def _grid(
    scenario: str,
    records: list[dict],
    joint: dict[int, dict],
    acc: dict[int, np.ndarray],
    confidence: float,
    missing: list[Missing],
    command: Callable[[Sequence[str], Sequence[int]], str] | None = None,
) -> Grid | None:
    """The smax × c grid of HAT records (tagged or not), when at least two points exist."""
    points: dict[tuple[float, float], dict[int, dict]] = defaultdict(dict)
    for r in records:
        if r["strategy"] != HAT:
            continue
        hp = r.get("params", {}).get(HAT)
        if not isinstance(hp, dict):
            continue
        smax, c = _num(hp.get("smax")), _num(hp.get("c"))
        if smax is None or c is None:
            continue
        points[(smax, c)].setdefault(r["seed"], r)  # first record per point and seed
    if len(points) < 2:
        return None
    grid_seeds = sorted({sd for p in points.values() for sd in p})
    lacking = [sd for sd in grid_seeds if sd not in joint]
    metric = "final_acc" if lacking else "rho"
    if lacking:
        missing.append(
            Missing(
                "robustness grid shows final accuracy, not rho: no joint record for seed(s) "
                + _seeds_arg(lacking),
                command([JOINT], lacking) if command is not None else
                RUN_CMD.format(scenario=scenario, strategies=JOINT, seeds=_seeds_arg(lacking)),
            )
        )
    cells = {}
    for key, by_seed in points.items():
        vals = []
        for sd, r in by_seed.items():
            if metric == "rho":
                curve = metrics.mean_forgetting_ratio(
                    acc[id(r)], acc[id(joint[sd])], r["random_accuracy"]
                )
                vals.append(float(curve[-1]))
            else:
                vals.append(metrics.final_average_accuracy(acc[id(r)]))
        cells[key] = _stat(vals, confidence)
    return Grid(
        metric=metric,
        smax=sorted({k[0] for k in points}),
        c=sorted({k[1] for k in points}),
        cells=cells,
    )


def _capacity(hat_records: list[dict], n_tasks: int, notes: list[str]) -> Capacity | None:
    """Mean HAT mask statistics over the untagged hat records that carry them; records whose
    layers or task count differ from the first such record are left out (noted)."""
    stats = [r for r in hat_records if r.get("hat") and r["hat"].get("used") is not None]
    if not stats:
        return None
    ref = stats[0]["hat"]
    layers = [str(x) for x in ref["layers"]]
    tasks = [str(x) for x in ref["tasks"]]
    keep = []
    for r in stats:
        h = r["hat"]
        if [str(x) for x in h["layers"]] != layers or len(h["tasks"]) != len(tasks):
            notes.append(f"{r.get('_source', '?')}: HAT statistics of other layers/tasks; left out")
        else:
            keep.append(h)
    used = np.mean([np.asarray(h["used"], dtype=float) for h in keep], axis=0)
    ov = [h["overlap"] for h in keep if h.get("overlap") is not None]
    wk = [h["weights_kept"] for h in keep if h.get("weights_kept") is not None]
    return Capacity(
        layers=layers,
        tasks=tasks,
        used=used,
        overlap=np.mean(np.asarray(ov, dtype=float), axis=0) if len(ov) == len(keep) else None,
        weights_kept=np.mean(np.asarray(wk, dtype=float), axis=0) if len(wk) == len(keep) else None,
        n=len(keep),
    )


def _chosen_value(sel: dict) -> float:
    """Criterion value of the selection's chosen point (NaN when no point matches)."""
    want = {k: param_text(v) for k, v in sel["chosen"].items()}
    for pt in sel["points"]:
        if {k: param_text(v) for k, v in pt["params"].items()} == want:
            v = _num(pt.get("value"))
            return math.nan if v is None else v
    return math.nan


def selection_source(sel: dict) -> str:
    """``selected on validation (<preset>, seeds 0,1, ≤20 epochs, criterion value 0.953)``,
    leaving out what the selection block does not say."""
    parts = []
    if isinstance(sel.get("preset"), str) and sel["preset"]:
        parts.append(sel["preset"])
    seeds = sel.get("seeds")
    if isinstance(seeds, list) and seeds:
        parts.append(f"seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}")
    if isinstance(sel.get("epochs"), int) and not isinstance(sel["epochs"], bool):
        parts.append(f"≤{sel['epochs']} epochs")
    value = _chosen_value(sel)
    if not math.isnan(value):
        parts.append(f"criterion value {value:.3f}")
    return "selected on validation" + (f" ({', '.join(parts)})" if parts else "")


def _agreed(texts: Iterable[str]) -> str:
    """The one text all seeds agree on, else :data:`DIFFERS`."""
    distinct = set(texts)
    return distinct.pop() if len(distinct) == 1 else DIFFERS


def _param(rec: dict, section: str, key: str) -> str:
    sec = rec.get("params", {}).get(section)
    return param_text(sec[key]) if isinstance(sec, dict) and key in sec else "n/a"


def _hyperparameters(
    by_strategy: dict[str, dict[int, dict]], strategies: list[str], notes: list[str]
) -> list[HyperRow]:
    """Per untagged strategy: its own section of ``params``, ``train.clipgrad`` and the
    ``train`` settings that differ across strategies, with where they come from."""

    def values(recs: list[dict], section: str, key: str) -> str:
        return _agreed(_param(r, section, key) for r in recs)

    recs_of = {s: list(by_strategy[s].values()) for s in strategies}
    train_keys = sorted(
        {k for recs in recs_of.values() for r in recs
         if isinstance(r["params"].get("train"), dict) for k in r["params"]["train"]}
        - {"clipgrad"}
    )
    train = {s: {k: values(recs_of[s], "train", k) for k in train_keys} for s in strategies}
    differing = [k for k in train_keys
                 if len({train[s][k] for s in strategies}) > 1
                 or any(train[s][k] == DIFFERS for s in strategies)]
    rows = []
    for s in strategies:
        recs = recs_of[s]
        own = sorted({k for r in recs if isinstance(r["params"].get(s), dict)
                      for k in r["params"][s]})
        params = {f"{s}.{k}": values(recs, s, k) for k in own}
        params["train.clipgrad"] = values(recs, "train", "clipgrad")
        params.update({f"train.{k}": train[s][k] for k in differing})
        sels = [r.get("selection") for r in recs]
        source = _agreed(selection_source(x) if x else NOT_SELECTED for x in sels)
        if not own and not any(sels):
            source = NOTHING_TO_SELECT
        selected = all(sels) and source != DIFFERS
        row = HyperRow(strategy=s, seeds=sorted(by_strategy[s]), params=params, source=source,
                       selected=bool(selected))
        if selected:
            sel = sels[0]
            row.preset = sel.get("preset") if isinstance(sel.get("preset"), str) else None
            row.criterion_value = _chosen_value(sel)
            for key, v in sel["chosen"].items():
                section, _, name = key.partition(".")
                have = values(recs, section, name)
                if have not in (DIFFERS, "n/a", param_text(v)):
                    notes.append(f"{s}: ran with {key}={have}, but its selection chose "
                                 f"{param_text(v)}")
        rows.append(row)
    return rows


def _axis(values: Iterable[Any]) -> list[Any]:
    """Distinct values (by canonical text) in first-seen order; sorted floats when numeric."""
    seen: dict[str, Any] = {}
    for v in values:
        seen.setdefault(param_text(v), v)
    vals = list(seen.values())
    if all(_num(v) is not None for v in vals):
        return sorted(float(v) for v in vals)
    return vals


def _from_text(text: str) -> Any:
    """A grid tag's value: a float when it reads as a finite number, else the text."""
    try:
        v = float(text)
    except ValueError:
        return text
    return v if math.isfinite(v) else text


def _parse_tag(tag: str) -> dict[str, str] | None:
    """``hat.c=0.1,hat.smax=25`` -> {"hat.c": "0.1", "hat.smax": "25"}; None when the tag
    is not made of ``section.key=value`` pairs."""
    out = {}
    for part in tag.split(","):
        key, sep, value = part.partition("=")
        if not sep or "." not in key or not value:
            return None
        out[key] = value
    return out


def _from_selection(strategy: str, sel: dict) -> Sensitivity:
    keys = list(sel["space"])
    axes = [_axis(list(sel["space"][k]) + [pt["params"][k] for pt in sel["points"]])
            for k in keys]
    values: dict[tuple[str, ...], float] = {}
    for pt in sel["points"]:
        v = _num(pt.get("value"))
        values[tuple(param_text(pt["params"][k]) for k in keys)] = math.nan if v is None else v
    seeds = sel.get("seeds")
    n = len(seeds) if isinstance(seeds, list) else None
    preset = sel.get("preset")
    return Sensitivity(
        strategy=strategy, keys=keys, axes=axes, values=values,
        chosen=tuple(param_text(sel["chosen"][k]) for k in keys), source="selection",
        where=preset if isinstance(preset, str) and preset else "selection",
        n_seeds=dict.fromkeys(values, n),
    )


def _from_grid(strategy: str, records: list[dict]) -> Sensitivity | None:
    """Mean over seeds of the validation criterion per tagged grid point (≥ 2 points)."""
    by_keys: dict[tuple[str, ...], list[tuple[dict[str, str], dict]]] = defaultdict(list)
    for r in records:
        tag = _parse_tag(r.get("tag", "")) if r.get("tag") else None
        if tag is not None and r.get("valid_accuracy") is not None:
            by_keys[tuple(sorted(tag))].append((tag, r))
    if not by_keys:
        return None
    keys, entries = max(by_keys.items(), key=lambda kv: len(kv[1]))
    crit: dict[tuple[str, ...], list[float]] = defaultdict(list)
    for tag, r in entries:
        point = tuple(param_text(_from_text(tag[k])) for k in keys)
        crit[point].append(metrics.validation_criterion(r["valid_accuracy"]))
    if len(crit) < 2:
        return None
    values = {p: float(np.mean(v)) for p, v in crit.items()}
    axes = [_axis(_from_text(tag[k]) for tag, _ in entries) for k in keys]
    sens = Sensitivity(
        strategy=strategy, keys=list(keys), axes=axes, values=values, chosen=None,
        source="grid", where="tagged grid records",
        n_seeds={p: len(v) for p, v in crit.items()},
    )
    finite = [sens.point_key(p) for p in sens.points() if math.isfinite(sens.value(p))]
    if finite:
        sens.chosen = max(finite, key=lambda p: values[p])  # first of equal maxima
    return sens


def _sensitivity(
    all_records: list[dict], grid_records: list[dict], notes: list[str]
) -> list[Sensitivity]:
    """Per strategy, its selection's search space (the newest record's selection when records
    disagree), else its tagged grid records with ``valid_accuracy``."""
    selections: dict[str, list[dict]] = defaultdict(list)
    for r in all_records:
        if r.get("selection"):
            selections[r["strategy"]].append(r)
    grids: dict[str, list[dict]] = defaultdict(list)
    for r in grid_records:
        if r.get("tag") and r["strategy"] not in selections:
            grids[r["strategy"]].append(r)
    out = []
    for s in _order(set(selections) | set(grids)):
        if s in selections:
            recs = selections[s]
            newest = max(recs, key=lambda r: (str(r.get("created", "")), r.get("_source", "")))
            dumps = {json.dumps(r["selection"], sort_keys=True) for r in recs}
            if len(dumps) > 1:
                notes.append(f"{s}: records disagree on the hyperparameter selection; using "
                             f"the newest, {newest.get('_source', '?')}")
            out.append(_from_selection(s, newest["selection"]))
        else:
            sens = _from_grid(s, grids[s])
            if sens is not None:
                out.append(sens)
    return out


def compute_report(records: list[dict], confidence: float = 0.95) -> dict[str, ScenarioReport]:
    """One :class:`ScenarioReport` per scenario (sorted by name) from validated run records."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[r["scenario"]].append(r)
    return {s: compute_scenario(s, groups[s], confidence) for s in sorted(groups)}
