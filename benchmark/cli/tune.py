"""``tune``: the run plan over every tunable strategy's search space, and the selection on
the tuning runs' validation matrices written as a preset (``benchmark.tuning``)."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from strategies import STRATEGIES

from .. import grid as gridlib
from ..errors import BenchmarkError
from ..records import read_record, record_path
from ..tuning import (
    Selection,
    criterion_table,
    default_space,
    edge_warnings,
    infers_tasks,
    preset,
    select,
    tunable,
    validation_matrix,
    with_task_scores,
    write_preset,
)
from .args import TUNE_STRATEGIES, parse_names, parse_seeds, parse_set
from .plan import RunPlan, check_writable, plan_run


def plan_tune(args: argparse.Namespace) -> RunPlan:
    """``tune``: the run plan over every tunable strategy's search space (``--grid`` replaces
    a key's values, ``--set`` fixes a key), validated like ``run``."""
    strategies = parse_names(args.strategies, STRATEGIES, "strategy")
    protocol = parse_set(args.set).get("scenario", {}).get("protocol", "task")
    if protocol == "class" and args.strategies == ",".join(TUNE_STRATEGIES):
        # the default list, in the class protocol: the strategies that run in it
        strategies = [s for s in strategies if STRATEGIES[s].class_protocol is not None]
        args.strategies = ",".join(strategies)
    to_tune = tunable(strategies, protocol)
    if not to_tune:
        raise BenchmarkError(
            f"none of {', '.join(strategies)} has hyperparameters to select; tunable "
            f"strategies: {', '.join(s for s in STRATEGIES if STRATEGIES[s].space)}"
        )
    shared = [k for k in gridlib.parse_grid(args.grid)
              if k.split(".", 1)[0] in gridlib.SHARED_SECTIONS]
    if shared:
        raise BenchmarkError(
            f"tune selects each strategy's own hyperparameters; '{shared[0]}' is shared by all "
            "strategies: fix it with --set instead of --grid"
        )
    if "task" in parse_set(args.set).get("scenario", {}):
        raise BenchmarkError("tune selects on the whole task sequence: drop scenario.task")
    space: dict[str, list] = {}
    for s in to_tune:
        space.update(default_space(s))
    parse_seeds(args.run_seeds)  # validated now, used when the preset is written
    tune_args = argparse.Namespace(**vars(args))
    tune_args.strategies = ",".join(to_tune)
    tune_args.config = None
    plan = plan_run(tune_args, preset={"grid": space})
    train = plan.configs[0].train
    if train.recipe != "paper" or not train.valid_fraction:
        raise BenchmarkError(
            "tune selects on validation data: it needs the paper's recipe with a validation "
            "split (drop train.recipe=fixed / train.valid_fraction=0)"
        )
    protocol = plan.configs[0].scenario.protocol
    preset_path = args.preset or Path("configs/tuned", *(() if protocol == "task" else
                                                         (protocol,)), f"{args.scenario}.yaml")
    check_writable(preset_path.parent)
    if preset_path.exists() and preset_path.is_dir():
        raise BenchmarkError(f"--preset {preset_path} is a folder; give a .yaml file path")
    args.preset = preset_path
    return plan


def finish_tune(plan: RunPlan, args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Select on the tuning runs' validation matrices; write and print the preset."""
    records: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for exp in plan.experiments:
        records[exp.strategy][exp.tag].append(read_record(record_path(
            plan.out, exp.scenario, exp.strategy, exp.seed, exp.tag, exp.protocol)))
    seeds = list(dict.fromkeys(e.seed for e in plan.experiments))
    strategies = parse_names(args.strategies, STRATEGIES, "strategy")
    base = plan.experiments[0].overrides
    # the tuning's fixed settings: shared sections (with --epochs) and every listed
    # strategy's --set values (a --set key is never in the searched space)
    given = parse_set(args.set)
    fixed = {sec: dict(kv) for sec, kv in base.items() if sec in gridlib.SHARED_SECTIONS}
    fixed.update({s: dict(given[s]) for s in strategies if s in given})
    protocol = plan.configs[0].scenario.protocol
    selections: list[Selection] = []
    for s, by_tag in records.items():
        space = {k: v for k, v in plan.grid.items() if k.split(".", 1)[0] == s}
        if infers_tasks(s, protocol):  # the task score joins the space, from the same runs
            space, valid = with_task_scores(s, space, by_tag)
        else:
            valid = {tag: [validation_matrix(r) for r in recs] for tag, recs in by_tag.items()}
        if not space:
            continue
        sel = select(s, space, valid, protocol)
        selections.append(sel)
        print(criterion_table(sel))
        for line in edge_warnings(sel):
            print(line, file=sys.stderr)
    epochs = base.get("train", {}).get("epochs")
    data = preset(plan.experiments[0].scenario, strategies, selections, seeds=seeds,
                  epochs=int(float(epochs)) if epochs is not None else None, fixed=fixed,
                  command="python -m benchmark " + shlex.join(argv),
                  run_seeds=parse_seeds(args.run_seeds),
                  protocol=protocol)
    write_preset(args.preset, data)
    chosen = ", ".join(f"{k}={v}" for sel in selections for k, v in sel.chosen.items())
    print(f"wrote {args.preset}: {chosen}")
    return 0
