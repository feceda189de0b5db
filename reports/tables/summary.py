"""The summary table (accuracy, BWT, forgetting, transfer, cost per strategy: mean over
seeds of :func:`reports.per_run.run_metrics`) and the mean accuracy matrices."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..per_run import NO_DATA, NOT_APPLICABLE, run_metrics
from .model import JOINT, SINGLE_TASK, SUMMARY_METRICS, Stat, seeds_arg, stat
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
    #: metric without a value for any strategy (its column is left out) -> what fills it
    left_out: dict[str, str] = field(default_factory=dict)


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
    left_out = _left_out(stats, blank, sr)
    notes = _reference_notes(stats, sr.seeds, singles, sr.diverged.get(SINGLE_TASK, []),
                             sr.command, whole_column="fwt" in left_out)
    return Summary(stats=stats, blank=blank, notes=notes, acc_mean=acc_mean, left_out=left_out)


#: a summary metric whose column may be left out without a word: n/a for every strategy that
#: keeps no rehearsal memory
SILENT_COLUMNS = ("memory_samples",)
#: the reference run a summary metric needs
NEEDS_REFERENCE = {"fwt": SINGLE_TASK, "intransigence": JOINT}


def _left_out(stats: dict[str, dict[str, Stat]], blank: dict[str, dict[str, str]],
              sr: ScenarioRecords) -> dict[str, str]:
    """The summary metrics without a value for any strategy, each with what fills its column:
    the reference run it needs (and the command), else why the records have none."""
    if not stats:
        return {}
    seeds = sorted({sd for s in stats for sd in sr.seeds[s]})
    out = {}
    for m in SUMMARY_METRICS:
        if m in SILENT_COLUMNS or any(st[m].n for st in stats.values()):
            continue
        ref = NEEDS_REFERENCE.get(m)
        if ref is not None:
            out[m] = (f"it needs the `{ref}` reference of each seed; add `{ref}` to "
                      f"--strategies: `{sr.command([ref], seeds)}`")
        elif all(blank[s].get(m) == NOT_APPLICABLE for s in stats):
            out[m] = "none of these strategies has one (n/a)"
        else:
            out[m] = ("the records predate it (or have no value); re-run them with this "
                      f"version of the suite: `{sr.command(list(stats), seeds)}`")
    return out


def _reference_notes(
    summary: dict[str, dict[str, Stat]],
    seeds: dict[str, list[int]],
    singles: dict[int, dict],
    single_diverged: list[int],
    command: Callable[[Sequence[str], Sequence[int]], str],
    whole_column: bool = False,
) -> list[str]:
    """Lines under the summary table naming the seeds whose FWT lacks its ``single``
    reference, with the command that trains it (none when no seed has it, ``whole_column``:
    the left-out column's line says it)."""
    wanted = sorted({sd for s in summary for sd in seeds[s]})
    lacking = [sd for sd in wanted if sd not in singles and sd not in single_diverged]
    notes = []
    if single_diverged:
        notes.append(f"single diverged for seed(s) {seeds_arg(single_diverged)}: those seeds "
                     "have no FWT")
    if lacking and not whole_column:
        notes.append(f"FWT needs the `single` record of the same seed (each task trained alone "
                     f"from the seed's initialisation); none for seed(s) {seeds_arg(lacking)}: "
                     f"run `{command([SINGLE_TASK], lacking)}`")
    return notes
