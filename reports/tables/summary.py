"""The summary table (accuracy, BWT, forgetting, transfer, cost per strategy: mean over
seeds of :func:`reports.per_run.run_metrics`) and the mean accuracy matrices."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..per_run import NO_DATA, NOT_APPLICABLE, run_metrics
from .model import SINGLE_TASK, SUMMARY_METRICS, Stat, seeds_arg, stat
from .records import ScenarioRecords

__all__ = ["Summary", "summary"]


@dataclass
class Summary:
    #: strategy (not single) -> each of :data:`SUMMARY_METRICS` (a Stat with n = 0: no value)
    stats: dict[str, dict[str, Stat]]
    #: strategy -> metric -> what its cell without value shows (n/a or –)
    blank: dict[str, dict[str, str]]
    #: lines under the table: missing references and the commands that produce them
    notes: list[str]
    acc_mean: dict[str, np.ndarray] = field(default_factory=dict)


def summary(sr: ScenarioRecords, confidence: float) -> Summary:
    """Per untagged strategy: its mean accuracy matrix and (references aside) the mean over
    seeds of each of :data:`SUMMARY_METRICS`, with what a cell without value shows."""
    stats: dict[str, dict[str, Stat]] = {}
    blank: dict[str, dict[str, str]] = {}
    acc_mean: dict[str, np.ndarray] = {}
    singles, joint = sr.singles, sr.joint
    for s in sr.strategies:
        mats = [sr.acc[id(r)] for r in sr.by_strategy[s].values()]
        acc_mean[s] = np.mean(np.stack(mats), axis=0)
        if s == SINGLE_TASK:
            continue
        values: dict[str, list[float]] = defaultdict(list)
        blanks: dict[str, set[str]] = defaultdict(set)
        for r in sr.by_strategy[s].values():
            single, j = singles.get(r["seed"]), joint.get(r["seed"])
            run = run_metrics(r, sr.acc[id(r)], None if single is None else sr.acc[id(single)],
                              None if j is None else sr.acc[id(j)], sr.notes)
            for m, (v, why) in run.items():
                values[m].append(v)
                if why:
                    blanks[m].add(why)
        stats[s] = {m: stat(values[m], confidence) for m in SUMMARY_METRICS}
        blank[s] = {m: NOT_APPLICABLE if blanks[m] == {NOT_APPLICABLE} else NO_DATA
                    for m in SUMMARY_METRICS if stats[s][m].n == 0}
    notes = _reference_notes(stats, sr.seeds, singles, sr.diverged.get(SINGLE_TASK, []),
                             sr.command)
    return Summary(stats=stats, blank=blank, notes=notes, acc_mean=acc_mean)


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
        notes.append(f"single diverged for seed(s) {seeds_arg(single_diverged)}: those seeds "
                     "have no FWT")
    if lacking:
        notes.append(f"FWT needs the `single` record of the same seed (each task trained alone "
                     f"from the seed's initialisation); none for seed(s) {seeds_arg(lacking)}: "
                     f"run `{command([SINGLE_TASK], lacking)}`")
    return notes
