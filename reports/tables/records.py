"""Which records of a scenario count (:class:`ScenarioRecords`): records of a task trained
alone set apart, records of another T left out, one record per run (:func:`dedupe`),
diverged runs set apart, untagged records grouped by strategy and seed; and the command that
produces missing runs with the records' settings."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .. import commands
from .model import (
    JOINT,
    RESULT_FIELDS,
    SINGLE_TASK,
    Duplicate,
    Missing,
    order,
    seeds_arg,
)

__all__ = ["ScenarioRecords", "dedupe", "scenario_records", "trained_alone"]


@dataclass
class ScenarioRecords:
    """The records of one scenario as the tables use them, and the lists the tables add to.

    ``records``: every counted run (deduplicated, T agreed, not diverged; tagged grid points
    included); ``by_strategy``: its untagged records, strategy -> seed -> record;
    ``diverged``: untagged strategy -> seeds of its diverged runs."""

    scenario: str
    n_tasks: int
    all_records: list[dict]
    records: list[dict]
    by_strategy: dict[str, dict[int, dict]]
    diverged: dict[str, list[int]]
    acc: dict[int, np.ndarray]  # id(record) -> accuracy matrix
    notes: list[str]
    missing: list[Missing]
    duplicates: list[Duplicate]
    #: every run's records, diverged or not: the settings the commands reproduce
    settings_records: list[dict] = field(default_factory=list)

    @property
    def strategies(self) -> list[str]:
        """Untagged strategies: hat, the other methods sorted, then the references."""
        return order(set(self.by_strategy))

    @property
    def seeds(self) -> dict[str, list[int]]:
        return {s: sorted(self.by_strategy[s]) for s in self.strategies}

    @property
    def joint(self) -> dict[int, dict]:
        """The joint reference record per seed."""
        return self.by_strategy.get(JOINT, {})

    @property
    def singles(self) -> dict[int, dict]:
        """The single-task reference record per seed."""
        return self.by_strategy.get(SINGLE_TASK, {})

    @property
    def all_seeds(self) -> list[int]:
        """Seeds of the untagged runs (diverged included), else of every counted run."""
        seeds = self.seeds
        return sorted({sd for s in self.strategies for sd in seeds[s]}
                      | {sd for sds in self.diverged.values() for sd in sds}) or sorted(
            {r["seed"] for r in self.records}
        )

    def command(self, strategies: Sequence[str], seeds: Sequence[int]) -> str:
        """The command that runs ``strategies`` for ``seeds`` with the records' settings; a
        setting the records disagree on is noted."""
        own: dict[str, list[dict]] = defaultdict(list)
        for r in self.settings_records:
            if not r.get("tag"):
                own[r["strategy"]].append(r)
        shared = [r for r in self.settings_records if not r.get("tag")] or self.settings_records
        cmd, unclear = commands.run_command(self.scenario, strategies, seeds_arg(list(seeds)),
                                            own, shared,
                                            commands.results_folder(self.settings_records))
        if unclear:
            self.notes.append(f"the command for {', '.join(strategies)} (seeds "
                              f"{seeds_arg(list(seeds))}) cannot reproduce "
                              f"{', '.join(unclear)}: the records disagree; add it by hand")
        return cmd


def scenario_records(scenario: str, all_records: list[dict], records: list[dict],
                     notes: list[str], duplicates: list[Duplicate]) -> ScenarioRecords:
    """The counted records of a scenario from ``records`` (its records not trained alone,
    at least one; ``all_records``: every record of the scenario), noting what is left out."""
    t_count = Counter(len(r["task_names"]) for r in records)
    n_tasks = t_count.most_common(1)[0][0]
    for r in records:
        if len(r["task_names"]) != n_tasks:
            notes.append(
                f"{r.get('_source', '?')}: T = {len(r['task_names'])}, the scenario's records "
                f"have T = {n_tasks}; left out"
            )
    records = dedupe([r for r in records if len(r["task_names"]) == n_tasks], notes,
                     duplicates)
    settings_records = records  # every run's params, diverged or not: the commands' settings
    diverged = _diverged(records, notes)
    records = [r for r in records if not r.get("diverged")]
    by_strategy: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in records:
        if not r.get("tag"):
            by_strategy[r["strategy"]][r["seed"]] = r
    return ScenarioRecords(
        scenario=scenario, n_tasks=n_tasks, all_records=all_records, records=records,
        by_strategy=dict(by_strategy), diverged=diverged,
        acc={id(r): np.asarray(r["accuracy"], dtype=float) for r in records},
        notes=notes, missing=[], duplicates=duplicates, settings_records=settings_records,
    )


def _diverged(records: list[dict], notes: list[str]) -> dict[str, list[int]]:
    """Untagged strategy -> seeds of its diverged runs (in report order); each diverged run
    is noted (a grid point's alone)."""
    diverged: dict[str, list[int]] = defaultdict(list)
    for r in records:
        if not r.get("diverged"):
            continue
        if r.get("tag"):
            notes.append(f"{r['strategy']} seed {r['seed']} [{r['tag']}] diverged (non-finite "
                         "loss): left out of the grid")
        else:
            diverged[r["strategy"]].append(r["seed"])
    out = {s: sorted(diverged[s]) for s in order(set(diverged))}
    for s, sds in out.items():
        notes.append(f"{s}: seed(s) {seeds_arg(sds)} diverged (non-finite loss): shown as "
                     "diverged, left out of every mean and figure")
    return out


def trained_alone(rec: dict) -> bool:
    """A record of one task trained alone (``scenario.task``): the compression experiment."""
    sc = rec.get("params", {}).get("scenario") if isinstance(rec.get("params"), dict) else None
    return isinstance(sc, dict) and sc.get("task") is not None


def _result(r: dict) -> str:
    return json.dumps({k: r.get(k) for k in RESULT_FIELDS}, sort_keys=True, default=str)


def dedupe(
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
