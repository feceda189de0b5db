"""The runs a scenario's report lacks (:class:`Missing`, each with the command that produces
it): HAT, a baseline, a second seed for a confidence interval, a hyperparameter selection.
The missing joint references are found with the forgetting ratio that needs them."""

from __future__ import annotations

from collections import defaultdict

from .model import BASELINE_EXCLUDE, HAT, TUNE_CMD, Missing, extra_seeds, seeds_arg
from .records import ScenarioRecords

__all__ = ["missing_runs", "missing_selection"]


def missing_runs(sr: ScenarioRecords, confidence: float) -> None:
    """Add to ``sr.missing`` the HAT and baseline runs the reduction of forgetting needs, and
    a second seed (up to 3) for every strategy with one."""
    strategies, seeds, diverged = sr.strategies, sr.seeds, sr.diverged
    if HAT not in sr.by_strategy and HAT not in diverged:
        sr.missing.append(
            Missing(
                "no hat records: HAT's reduction of forgetting cannot be computed",
                sr.command([HAT], sr.all_seeds),
            )
        )
    if not [s for s in (*strategies, *diverged) if s not in BASELINE_EXCLUDE]:
        sr.missing.append(
            Missing(
                "no baseline records (a strategy other than hat, joint and single): HAT's "
                "reduction of forgetting cannot be computed",
                sr.command(["<baseline, e.g. ewc>"], sr.all_seeds),
            )
        )
    one_seed: dict[str, list[str]] = defaultdict(list)  # seeds to add -> strategies
    for s in strategies:
        if len(seeds[s]) == 1:
            one_seed[seeds_arg(extra_seeds(seeds[s] + diverged.get(s, [])))].append(s)
    for extra, ss in one_seed.items():
        sr.missing.append(
            Missing(
                f"{', '.join(ss)}: a single seed; a {confidence:.0%} confidence interval "
                "needs >= 2 seeds",
                sr.command(ss, [int(x) for x in extra.split(",")]),
            )
        )


def missing_selection(sr: ScenarioRecords) -> None:
    """Add the tuning command when no record of the scenario carries a selection."""
    if sr.strategies and not any(r.get("selection") for r in sr.all_records):
        sr.missing.append(
            Missing(
                "no record carries a hyperparameter selection (every strategy ran with paper "
                "defaults or values set by hand); `make tune` selects them on validation data "
                "for every scenario",
                TUNE_CMD.format(scenario=sr.scenario),
            )
        )
