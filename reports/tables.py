"""Compute every number of the report from run records, as plain data (no files, no figures).

:func:`compute_report` groups records by scenario and returns one :class:`ScenarioReport` per
scenario; :mod:`reports.render` and :mod:`reports.figures` turn them into files. Tests compare
the numbers here (and in the CSV files) against hand computations.

Which records count where:

* Table 1 (ρ), the ρ figure, the summary table and the accuracy heatmaps use untagged records
  (``tag == ""``); tagged records are grid points and only feed the robustness heatmap.
* A_J is the untagged ``joint`` record of the same scenario and seed; A_R is the evaluated
  record's own ``random_accuracy``. A seed without a joint record gets no ρ.
* Records of one scenario must agree on T; a record with another T is left out (noted).
* Two records with the same scenario, strategy, seed and tag: the one created last is kept.
* Records of a task trained alone (``params.scenario.task`` set: the compression experiment)
  only feed the compression-per-task data (:class:`Capacity` in ``compression``); HAT
  records with per-epoch ``hat_used``/``hat_reuse`` history feed the monitoring data
  (:class:`Monitoring`, untagged records only).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import metrics

__all__ = [
    "BASELINE_EXCLUDE",
    "Capacity",
    "Grid",
    "Missing",
    "Monitoring",
    "ScenarioReport",
    "Stat",
    "compute_report",
    "compute_scenario",
]

HAT = "hat"
JOINT = "joint"
#: strategies that are not baselines when choosing the best baseline
BASELINE_EXCLUDE = (HAT, JOINT)
RUN_CMD = "python -m benchmark run --scenario {scenario} --strategies {strategies} --seeds {seeds}"


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
    summary: dict[str, dict[str, Stat]]  # strategy -> final_acc / bwt / forgetting
    acc_mean: dict[str, np.ndarray]
    grid: Grid | None
    capacity: Capacity | None
    missing: list[Missing]
    notes: list[str]
    #: each task trained alone (compression experiment): tasks are task names
    compression: Capacity | None = None
    monitoring: Monitoring | None = None

    def rho_rows(self, all_t: bool = False) -> list[dict[str, Any]]:
        """Rows ``strategy, t, mean, ci_half, ci_low, ci_high, n_seeds`` of Table 1 (or of
        every t with ``all_t``)."""
        rows = []
        for s, stats in self.rho.items():
            for t in range(1, self.n_tasks + 1) if all_t else self.table_ts:
                rows.append({"strategy": s, "t": t, **stats[t - 1].columns()})
        return rows

    def summary_rows(self) -> list[dict[str, Any]]:
        rows = []
        for s, by_metric in self.summary.items():
            for m, st in by_metric.items():
                rows.append({"strategy": s, "metric": m, **st.columns()})
        return rows


def _stat(values: list[float], confidence: float) -> Stat:
    mean, half = metrics.mean_ci(values, confidence)
    vals = [float(v) for v in values if not math.isnan(v)]
    return Stat(mean, half, len(vals), vals)


def _order(strategies: set[str]) -> list[str]:
    mid = sorted(s for s in strategies if s not in (HAT, JOINT))
    return ([HAT] if HAT in strategies else []) + mid + ([JOINT] if JOINT in strategies else [])


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


def _dedupe(records: list[dict], notes: list[str]) -> list[dict]:
    by_key: dict[tuple, dict] = {}
    for r in records:
        key = (r["strategy"], r["seed"], r.get("tag", ""))
        old = by_key.get(key)
        if old is None or str(r.get("created", "")) >= str(old.get("created", "")):
            if old is not None:
                notes.append(f"duplicate record {key}: using {r.get('_source', '?')}")
            by_key[key] = r
        else:
            notes.append(f"duplicate record {key}: using {old.get('_source', '?')}")
    return list(by_key.values())


def compute_scenario(
    scenario: str, records: list[dict], confidence: float = 0.95
) -> ScenarioReport:
    """All numbers of one scenario's report from its (validated) run records."""
    notes: list[str] = []
    missing: list[Missing] = []
    alone = [r for r in records if trained_alone(r)]
    records = [r for r in records if not trained_alone(r)]
    compression = _compression(alone, notes)
    if not records:
        return ScenarioReport(
            scenario=scenario, n_tasks=1, strategies=[], seeds={}, confidence=confidence,
            rho={}, table_ts=[], best={}, reduction=[], summary={}, acc_mean={}, grid=None,
            capacity=None, missing=missing, notes=notes, compression=compression,
        )
    t_count = Counter(len(r["task_names"]) for r in records)
    n_tasks = t_count.most_common(1)[0][0]
    for r in records:
        if len(r["task_names"]) != n_tasks:
            notes.append(
                f"{r.get('_source', '?')}: T = {len(r['task_names'])}, the scenario's records "
                f"have T = {n_tasks}; left out"
            )
    records = _dedupe([r for r in records if len(r["task_names"]) == n_tasks], notes)
    acc = {id(r): np.asarray(r["accuracy"], dtype=float) for r in records}

    untagged = [r for r in records if not r.get("tag")]
    by_strategy: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in untagged:
        by_strategy[r["strategy"]][r["seed"]] = r
    strategies = _order(set(by_strategy))
    seeds = {s: sorted(by_strategy[s]) for s in strategies}
    joint = by_strategy.get(JOINT, {})
    all_seeds = sorted({sd for s in strategies for sd in seeds[s]}) or sorted(
        {r["seed"] for r in records}
    )

    def rho_curve(r: dict) -> np.ndarray | None:
        j = joint.get(r["seed"])
        if j is None:
            return None
        return metrics.mean_forgetting_ratio(acc[id(r)], acc[id(j)], r["random_accuracy"])

    # --- ρ per strategy (Table 1, figure) --------------------------------------------------
    rho: dict[str, list[Stat]] = {}
    for s in strategies:
        if s == JOINT:
            continue
        curves = [c for c in (rho_curve(r) for r in by_strategy[s].values()) if c is not None]
        if curves:
            arr = np.vstack(curves)
            rho[s] = [_stat(list(arr[:, t]), confidence) for t in range(n_tasks)]
    others = [s for s in strategies if s != JOINT]
    if others and not joint:
        missing.append(
            Missing(
                "no joint records: the forgetting ratio (Table 1, rho figure, HAT reduction) "
                "needs A_J from joint training",
                RUN_CMD.format(scenario=scenario, strategies=JOINT, seeds=_seeds_arg(all_seeds)),
            )
        )
    elif others:
        lacking = sorted({sd for s in others for sd in seeds[s]} - set(joint))
        if lacking:
            missing.append(
                Missing(
                    f"no joint record for seed(s) {_seeds_arg(lacking)}: those seeds have no rho",
                    RUN_CMD.format(scenario=scenario, strategies=JOINT, seeds=_seeds_arg(lacking)),
                )
            )

    table_ts = sorted({min(2, n_tasks), n_tasks})
    best: dict[int, list[str]] = {}
    reduction: list[dict[str, Any]] = []
    for t in table_ts:
        means = {s: st[t - 1].mean for s, st in rho.items()}
        b = metrics.best_baseline(means, exclude=(JOINT,))
        best[t] = [] if b is None else [s for s in means if abs(means[s]) == abs(means[b])]
        if rho:
            base = metrics.best_baseline(means, exclude=BASELINE_EXCLUDE)
            rho_hat = means.get(HAT, math.nan)
            rho_base = means[base] if base is not None else math.nan
            reduction.append(
                {
                    "t": t,
                    "best_baseline": base,
                    "rho_baseline": rho_base,
                    "rho_hat": rho_hat,
                    "reduction_pct": metrics.forgetting_reduction(rho_hat, rho_base),
                }
            )
    if HAT not in by_strategy:
        missing.append(
            Missing(
                "no hat records: HAT's reduction of forgetting cannot be computed",
                RUN_CMD.format(scenario=scenario, strategies=HAT, seeds=_seeds_arg(all_seeds)),
            )
        )
    if not [s for s in strategies if s not in BASELINE_EXCLUDE]:
        missing.append(
            Missing(
                "no baseline records (a strategy other than hat and joint): HAT's "
                "reduction of forgetting cannot be computed",
                RUN_CMD.format(
                    scenario=scenario,
                    strategies="<baseline, e.g. ewc>",
                    seeds=_seeds_arg(all_seeds),
                ),
            )
        )

    # --- CI needs >= 2 seeds ------------------------------------------------------------------
    single: dict[str, list[str]] = defaultdict(list)
    for s in strategies:
        if len(seeds[s]) == 1:
            single[_seeds_arg(_extra_seeds(seeds[s]))].append(s)
    for extra, ss in single.items():
        missing.append(
            Missing(
                f"{', '.join(ss)}: a single seed; a {confidence:.0%} confidence interval "
                "needs >= 2 seeds",
                RUN_CMD.format(scenario=scenario, strategies=",".join(ss), seeds=extra),
            )
        )

    # --- final accuracy / BWT / forgetting ------------------------------------------------------
    summary: dict[str, dict[str, Stat]] = {}
    acc_mean: dict[str, np.ndarray] = {}
    for s in strategies:
        mats = [acc[id(r)] for r in by_strategy[s].values()]
        summary[s] = {
            "final_acc": _stat([metrics.final_average_accuracy(m) for m in mats], confidence),
            "bwt": _stat([metrics.bwt(m) for m in mats], confidence),
            "forgetting": _stat([metrics.forgetting(m) for m in mats], confidence),
        }
        acc_mean[s] = np.mean(np.stack(mats), axis=0)

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
        grid=_grid(scenario, records, joint, acc, confidence, missing),
        capacity=_capacity(list(by_strategy.get(HAT, {}).values()), n_tasks, notes),
        missing=missing,
        notes=notes,
        compression=compression,
        monitoring=_monitoring(list(by_strategy.get(HAT, {}).values()), n_tasks),
    )


def trained_alone(rec: dict) -> bool:
    """A record of one task trained alone (``scenario.task``): the compression experiment."""
    sc = rec.get("params", {}).get("scenario") if isinstance(rec.get("params"), dict) else None
    return isinstance(sc, dict) and sc.get("task") is not None


def _layer_weights(used: np.ndarray) -> np.ndarray:
    """layers × tasks fraction of each layer's weights that join two kept units."""
    prev = np.vstack([np.ones((1, used.shape[1])), used[:-1]])
    return used * prev


def _compression(alone: list[dict], notes: list[str]) -> Capacity | None:
    """Per task trained alone (HAT records with mask statistics): fraction of units per layer
    and overall, and of weights per layer and overall, mean over seeds."""
    hat = [r for r in alone if r["strategy"] == HAT and r.get("hat")
           and r["hat"].get("used") is not None and len(r["task_names"]) == 1]
    hat = _dedupe(hat, notes)
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
        np.mean([_layer_weights(np.asarray(h["used"], dtype=float))[:, 0] for h in by_task[t]],
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


def compute_report(records: list[dict], confidence: float = 0.95) -> dict[str, ScenarioReport]:
    """One :class:`ScenarioReport` per scenario (sorted by name) from validated run records."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[r["scenario"]].append(r)
    return {s: compute_scenario(s, groups[s], confidence) for s in sorted(groups)}
