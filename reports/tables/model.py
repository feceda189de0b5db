"""The report's data: constants and the value types :func:`reports.tables.compute_report`
returns (one :class:`ScenarioReport` per scenario), plus the small helpers every table uses."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import metrics
from ..per_run import NO_DATA, NOT_APPLICABLE, TASK_INFERENCE_OWN, finite_float
from ..schema import param_text

__all__ = [
    "BASELINE_EXCLUDE",
    "CLASS_IL_LOSS",
    "CLASS_IL_METRICS",
    "COST_METRICS",
    "DIFFERS",
    "DUPLICATE_RULE",
    "HAT",
    "JOINT",
    "NOTHING_TO_SELECT",
    "NOT_APPLICABLE",
    "NOT_SELECTED",
    "NO_DATA",
    "REFERENCES",
    "RESULT_FIELDS",
    "SINGLE_TASK",
    "SUMMARY_METRICS",
    "TASK_INFERENCE_METRICS",
    "TASK_SCORES",
    "TUNE_CMD",
    "Capacity",
    "ClassIL",
    "Duplicate",
    "Edge",
    "Grid",
    "HyperRow",
    "Missing",
    "Monitoring",
    "ScenarioReport",
    "Sensitivity",
    "Stat",
    "TaskInference",
    "extra_seeds",
    "order",
    "seeds_arg",
    "on_edge",
    "stat",
]

HAT = "hat"
JOINT = "joint"
#: the single-task reference: row t holds task t trained alone
SINGLE_TASK = "single"
#: reference runs, not methods: no row in Table 1, the ρ figure or the cost figure
REFERENCES = (JOINT, SINGLE_TASK)
#: strategies that are not baselines when choosing the best baseline
BASELINE_EXCLUDE = (HAT, JOINT, SINGLE_TASK)
#: the summary table's metrics, per strategy (mean over seeds), in column order
SUMMARY_METRICS = ("final_acc", "bwt", "forgetting", "fwt", "intransigence", "agnostic_acc",
                   "seconds_per_task", "peak_memory_mb", "state_mb", "memory_samples")
#: the Class-IL table's metrics, per strategy (mean over seeds), in column order: last
#: Class-IL accuracy, average incremental accuracy, Class-IL forgetting, ρ≤T against the joint
#: record of the class protocol, the Task-IL final accuracy of the same runs, and (task
#: inference only: hat, packnet, pnn, pathnet) the task-prediction accuracy after the last task
CLASS_IL_METRICS = ("last", "average_incremental", "forgetting", "rho", "task_il_last",
                    "task_prediction")
#: the task-inference table's metrics, per strategy and task score (mean over seeds), in
#: column order (:data:`reports.per_run.TASK_INFERENCE_OWN`)
TASK_INFERENCE_METRICS = TASK_INFERENCE_OWN
#: the task scores of task inference in the task-inference table's order (a record's other
#: scores follow, sorted by name)
TASK_SCORES = ("max_softmax", "max_logit", "energy", "neg_entropy")
#: the bars of the Class-IL loss figure, in order: Task-IL accuracy (the task label given),
#: task-prediction accuracy (the task inferred right) and Class-IL accuracy (neither given)
CLASS_IL_LOSS = ("task_il_last", "task_prediction", "last")
#: the cost figure's axes: accuracy against these
COST_METRICS = ("seconds_per_task", "peak_memory_mb", "state_mb")
#: how records of one run with different results are resolved (index.md quotes it)
DUPLICATE_RULE = (
    "records of one run (same scenario, strategy, seed and tag) with different results are "
    "never chosen by file name: the one with the newest `created` timestamp is used; when "
    "several share the newest timestamp (or have none), the run is left out of every table "
    "and figure. Remove the wrong file(s) to settle it"
)
#: the fields that make two records of one run the same result (else a conflict)
RESULT_FIELDS = ("task_names", "accuracy", "valid_accuracy", "random_accuracy", "params",
                 "hat", "selection", "diverged", "agnostic_accuracy",
                 "valid_agnostic_accuracy", "agnostic_random_accuracy")
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


@dataclass(frozen=True)
class Edge:
    """A selected value at an end of a searched numeric dimension: the optimum may lie
    outside the space."""

    key: str  # ``section.key``
    value: float
    low: float  # the dimension's smallest searched value
    high: float  # its largest

    @property
    def side(self) -> str:
        return "smallest" if self.value == self.low else "largest"

    def text(self) -> str:
        """``lwf.alpha=0.1, the smallest of 0.1..10``."""
        return (f"{self.key}={param_text(self.value)}, the {self.side} of "
                f"{param_text(self.low)}..{param_text(self.high)}")


#: a searched dimension is flagged only with at least this many values: with two, every
#: choice is an end and the flag would say nothing
EDGE_MIN_VALUES = 3


def _number(v: Any) -> float | None:
    """``v`` (a number or its canonical text) as a finite float; None otherwise."""
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return None
    return finite_float(v)


def on_edge(space: Mapping[str, Sequence[Any]], chosen: Mapping[str, Any]) -> list[Edge]:
    """The keys of ``space`` whose ``chosen`` value is the smallest or the largest of a numeric
    dimension of at least :data:`EDGE_MIN_VALUES` values (values as numbers or their canonical
    text), in ``space``'s order."""
    out = []
    for key, values in space.items():
        nums = [_number(v) for v in values]
        pick = _number(chosen.get(key))
        if pick is None or None in nums or len(set(nums)) < EDGE_MIN_VALUES:
            continue
        low, high = min(nums), max(nums)
        if pick in (low, high):
            out.append(Edge(key, pick, low, high))
    return out


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
    #: the selected values at an end of their searched dimension (:func:`on_edge`)
    edges: list[Edge] = field(default_factory=list)


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

    def edges(self) -> list[Edge]:
        """The chosen point's values at an end of a searched numeric dimension."""
        if self.chosen is None:
            return []
        return on_edge(dict(zip(self.keys, self.axes, strict=True)),
                       dict(zip(self.keys, self.chosen, strict=True)))

    def label(self, point: Sequence[Any]) -> str:
        """``key=value`` pairs, keys sorted, as a grid tag spells them."""
        return ",".join(f"{k}={t}" for k, t in sorted(zip(self.keys, self.point_key(point),
                                                          strict=True)))


@dataclass
class TaskInference:
    """Task inference in the class-incremental protocol (hat, packnet, pnn, pathnet): per
    strategy and task score, the numbers of :data:`TASK_INFERENCE_METRICS` over the seeds
    whose untagged class records hold ``task_inference``, and which score the records chose."""

    n_tasks: int
    strategies: list[str]  # with a record holding ``task_inference``, in the report's order
    seeds: dict[str, list[int]]  # strategy -> seeds whose record holds ``task_inference``
    #: strategy -> its scores (every score of its records), :data:`TASK_SCORES` order first
    scores: dict[str, list[str]]
    #: strategy -> score -> each of :data:`TASK_INFERENCE_METRICS` (n = 0: no value)
    stats: dict[str, dict[str, dict[str, Stat]]]
    #: strategy -> score -> the seeds whose record chose it (``task_inference.score``)
    chosen: dict[str, dict[str, list[int]]]
    #: lines under the table (e.g. seeds that disagree on the chosen score)
    notes: list[str] = field(default_factory=list)

    def chosen_by_all(self, strategy: str, score: str) -> bool:
        """Whether every seed of ``strategy`` chose ``score``."""
        return self.chosen[strategy].get(score, []) == self.seeds[strategy]

    def rows(self) -> list[dict[str, Any]]:
        """CSV rows ``strategy, score, metric, mean, ci_half, ci_low, ci_high, n_seeds,
        chosen, n_chosen`` (``chosen``: 1 when every seed's record chose the score, else 0;
        ``n_chosen``: how many did)."""
        return [{"strategy": s, "score": sc, "metric": m, **self.stats[s][sc][m].columns(),
                 "chosen": int(self.chosen_by_all(s, sc)),
                 "n_chosen": len(self.chosen[s].get(sc, []))}
                for s in self.strategies for sc in self.scores[s]
                for m in TASK_INFERENCE_METRICS]


@dataclass
class ClassIL:
    """The class-incremental protocol's numbers of a scenario (its class records only)."""

    n_tasks: int
    strategies: list[str]  # untagged strategies with a run that did not diverge, joint last
    seeds: dict[str, list[int]]
    #: strategy -> each of :data:`CLASS_IL_METRICS` (a Stat with n = 0: no value)
    stats: dict[str, dict[str, Stat]]
    #: strategy -> Class-IL accuracy after training task t (mean of row t), t = 1..T
    curve: dict[str, list[Stat]]
    #: untagged strategy -> seeds of its diverged class runs
    diverged: dict[str, list[int]] = field(default_factory=dict)
    #: lines under the table: missing references and the commands that produce them
    notes: list[str] = field(default_factory=list)
    #: the task-inference table (None: no untagged class record has ``task_inference``)
    task_inference: TaskInference | None = None

    def has_task_prediction(self) -> bool:
        """Whether a strategy has a task-prediction accuracy (its column is shown)."""
        return any(m["task_prediction"].n > 0 for m in self.stats.values())

    def loss_strategies(self) -> list[str]:
        """The strategies of the Class-IL loss figure: those of the task-inference table with
        a task-prediction accuracy, in the table's order."""
        if self.task_inference is None:
            return []
        return [s for s in self.task_inference.strategies
                if s in self.stats and self.stats[s]["task_prediction"].n > 0]

    def loss_rows(self) -> list[dict[str, Any]]:
        """The Class-IL loss figure's data: ``strategy, quantity, mean, ci_half, ci_low,
        ci_high, n_seeds`` for each of :data:`CLASS_IL_LOSS` (fractions) and each of
        :meth:`loss_strategies`."""
        return [{"strategy": s, "quantity": q, **self.stats[s][q].columns()}
                for s in self.loss_strategies() for q in CLASS_IL_LOSS]

    def only_diverged(self) -> list[str]:
        """Strategies whose every untagged class run diverged."""
        return [s for s in order(set(self.diverged)) if s not in self.strategies]

    def rows(self) -> list[dict[str, Any]]:
        """CSV rows ``strategy, metric, mean, ci_half, ci_low, ci_high, n_seeds,
        n_diverged``; a strategy whose every run diverged has NaN rows."""
        nan = Stat(math.nan, math.nan, 0)
        return [{"strategy": s, "metric": m,
                 **(self.stats[s][m] if s in self.stats else nan).columns(),
                 "n_diverged": len(self.diverged.get(s, []))}
                for s in [*self.stats, *self.only_diverged()] for m in CLASS_IL_METRICS]

    def curve_rows(self) -> list[dict[str, Any]]:
        """CSV rows ``strategy, t, mean, ci_half, ci_low, ci_high, n_seeds`` (t 1-based)."""
        return [{"strategy": s, "t": t + 1, **st.columns()}
                for s, stats in self.curve.items() for t, st in enumerate(stats)]


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
    #: summary metric without a value for any strategy (its column is left out) -> the line
    #: saying what fills it
    summary_left_out: dict[str, str] = field(default_factory=dict)
    #: the class-incremental protocol's table and curve (None: no class records); every other
    #: field comes from the task protocol's records only
    class_il: ClassIL | None = None

    def only_diverged(self, rho: bool = False, summary: bool = False) -> list[str]:
        """Strategies whose every untagged run diverged (not in :attr:`strategies`); with
        ``rho``, those that would have a row in Table 1 (not a reference, and Table 1
        exists); with ``summary``, those that would have a row in the summary (not single)."""
        out = [s for s in order(set(self.diverged)) if s not in self.strategies]
        if rho:
            out = [s for s in out if s not in REFERENCES] if self.rho else []
        if summary:
            out = [s for s in out if s != SINGLE_TASK]
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


def stat(values: list[float], confidence: float) -> Stat:
    mean, half = metrics.mean_ci(values, confidence)
    vals = [float(v) for v in values if not math.isnan(v)]
    return Stat(mean, half, len(vals), vals)


def order(strategies: set[str]) -> list[str]:
    """HAT first, the other methods sorted by name, then the references (joint, single)."""
    mid = sorted(s for s in strategies if s != HAT and s not in REFERENCES)
    return ([HAT] if HAT in strategies else []) + mid + [s for s in REFERENCES if s in strategies]


def seeds_arg(seeds: list[int]) -> str:
    return ",".join(str(s) for s in sorted(seeds))


def extra_seeds(have: list[int], total: int = 3) -> list[int]:
    out, k = [], 0
    while len(have) + len(out) < total:
        if k not in have:
            out.append(k)
        k += 1
    return out
