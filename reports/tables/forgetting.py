"""The forgetting ratio ρ (Table 1, the ρ figure) and HAT's reduction of forgetting over the
best baseline, from each run's accuracies against the joint reference of its seed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import metrics
from .model import BASELINE_EXCLUDE, HAT, JOINT, REFERENCES, Missing, Stat, seeds_arg, stat
from .records import ScenarioRecords

__all__ = ["Forgetting", "forgetting"]


@dataclass
class Forgetting:
    rho: dict[str, list[Stat]]  # strategy (not a reference) -> Stat per t = 1..T
    table_ts: list[int]  # 1-based t shown in Table 1
    best: dict[int, list[str]]  # table t -> strategies in bold (|ρ| smallest)
    reduction: list[dict[str, Any]]  # per table t: best_baseline, rho_baseline, rho_hat, pct


def forgetting(sr: ScenarioRecords, confidence: float) -> Forgetting:
    """ρ per strategy and t, with the missing joint records noted; Table 1's columns, its
    best entries and HAT's reduction per column."""
    rho = _rho(sr, confidence)
    _missing_joint(sr)
    table_ts = sorted({min(2, sr.n_tasks), sr.n_tasks})
    best: dict[int, list[str]] = {}
    reduction: list[dict[str, Any]] = []
    for t in table_ts:
        means = {s: st[t - 1].mean for s, st in rho.items()}
        b = metrics.best_baseline(means, exclude=REFERENCES)
        best[t] = [] if b is None else [s for s in means if abs(means[s]) == abs(means[b])]
        if rho:
            reduction.append(_reduction(t, means))
    return Forgetting(rho=rho, table_ts=table_ts, best=best, reduction=reduction)


def _rho(sr: ScenarioRecords, confidence: float) -> dict[str, list[Stat]]:
    """Mean ρ^{≤t} over the seeds that have a joint record, per method and t."""
    rho: dict[str, list[Stat]] = {}
    for s in sr.strategies:
        if s in REFERENCES:
            continue
        curves = [c for c in (rho_curve(sr, r) for r in sr.by_strategy[s].values())
                  if c is not None]
        if curves:
            arr = np.vstack(curves)
            rho[s] = [stat(list(arr[:, t]), confidence) for t in range(sr.n_tasks)]
    return rho


def rho_curve(sr: ScenarioRecords, r: dict) -> np.ndarray | None:
    """ρ^{≤t} of record ``r`` for t = 1..T; None without the joint record of its seed."""
    j = sr.joint.get(r["seed"])
    if j is None:
        return None
    return metrics.mean_forgetting_ratio(sr.acc[id(r)], sr.acc[id(j)], r["random_accuracy"])


def _missing_joint(sr: ScenarioRecords) -> None:
    """Note the seeds of methods whose joint record diverged or is missing (with the command
    that runs it)."""
    seeds = sr.seeds
    others = [s for s in sr.strategies if s not in REFERENCES]
    other_seeds = {sd for s in others for sd in seeds[s]}
    joint_div = set(sr.diverged.get(JOINT, []))
    if others and joint_div & other_seeds:
        sr.notes.append(f"joint diverged for seed(s) "
                        f"{seeds_arg(sorted(joint_div & other_seeds))}: those seeds have no rho")
    if others and not sr.joint and not joint_div:
        sr.missing.append(
            Missing(
                "no joint records: the forgetting ratio (Table 1, rho figure, HAT reduction) "
                "needs A_J from joint training",
                sr.command([JOINT], sr.all_seeds),
            )
        )
    elif others:
        lacking = sorted(other_seeds - set(sr.joint) - joint_div)
        if lacking:
            sr.missing.append(
                Missing(
                    f"no joint record for seed(s) {seeds_arg(lacking)}: those seeds have no rho",
                    sr.command([JOINT], lacking),
                )
            )


def _reduction(t: int, means: dict[str, float]) -> dict[str, Any]:
    """HAT's reduction of ρ^{≤t} over the best baseline: a percentage, or the difference when
    the baseline's ρ is about 0 (a percentage of it explodes)."""
    base = metrics.best_baseline(means, exclude=BASELINE_EXCLUDE)
    rho_hat = means.get(HAT, math.nan)
    rho_base = means[base] if base is not None else math.nan
    relative = metrics.reduction_is_relative(rho_base)
    return {
        "t": t,
        "best_baseline": base,
        "rho_baseline": rho_base,
        "rho_hat": rho_hat,
        "reduction_pct": (metrics.forgetting_reduction(rho_hat, rho_base)
                          if relative else math.nan),
        "reduction_abs": metrics.forgetting_reduction_abs(rho_hat, rho_base),
        "measure": "percent" if relative else ("difference" if not math.isnan(rho_base) else ""),
    }
