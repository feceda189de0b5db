"""``run``: everything the user gives validated before any training starts, as a ``RunPlan``
(resolving the inputs, validating them, checking the output folder)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from strategies import STRATEGIES

from .. import grid as gridlib
from ..data.scenarios import SCENARIOS, get_scenario
from ..errors import BenchmarkError
from ..experiment import (
    Experiment,
    check_valid_fraction,
    known_task_names,
    resolve_for,
    run_params,
    run_settings,
    split_inference,
)
from ..records import RecordError, is_complete, read_record, record_path
from .args import MAX_THREADS, check_scenario, parse_names, parse_seeds, parse_set
from .presets import _attach_selection, _merge_layers, _warn_selection_settings, load_preset

#: runs that hold out more of each task than this share for validation have their scenario
#: built before any run starts, to check that every task keeps a training sample per class
#: (at most half always does, unless a task has under two samples per class)
SPLIT_CHECK_ABOVE = 0.5


@dataclass
class RunPlan:
    """A validated ``run`` command."""

    experiments: list
    out: Path
    data_root: Path
    device: str
    jobs: int = 1
    #: None: no Ray; "": a local Ray cluster; otherwise the cluster's address
    ray: str | None = None
    grid: dict[str, list[str]] = field(default_factory=dict)
    #: each experiment's resolved config (``benchmark.experiment.resolve_for``), in order
    configs: list = field(default_factory=list, repr=False)


def check_writable(out: Path) -> None:
    """Every folder under ``out`` that runs write to can be a folder and be written
    (:func:`benchmark.run.preflight.check_out`); creates nothing."""
    from ..run.preflight import check_out

    check_out(out)


def _check_tasks(scenario: str, grid: dict) -> None:
    """``scenario.task`` values must name tasks of the scenario (when names are known without
    reading data: embedded scenarios and the mixture; others are checked at run start)."""
    if "scenario.protocol" in grid:
        raise BenchmarkError(
            "scenario.protocol cannot be a --grid key: grid points are tagged records, which "
            "the report's tables leave out; run each protocol with --set scenario.protocol=... "
            "(both can share --out)")
    wanted = [w for w in grid.get("scenario.task", []) if w != "none"]
    if not wanted:
        return
    names = known_task_names(scenario)
    if names is None:
        return
    for w in wanted:
        if w not in names:
            raise BenchmarkError(
                f"scenario.task={w!r} is not a task of {scenario}; its tasks: {', '.join(names)}"
            )


def _parse_jobs(value) -> int:
    try:
        jobs = int(str(value))
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise BenchmarkError(f"invalid --jobs '{value}': give a number of worker processes >= 1")
    return jobs


def _parse_max_runs(value) -> int | None:
    """``--max-runs``: None when not given (``gridlib.MAX_GRID_RUNS`` applies)."""
    if value is None:
        return None
    try:
        n = int(str(value))
    except ValueError:
        n = 0
    if n < 1:
        raise BenchmarkError(f"invalid --max-runs '{value}': must be an integer >= 1 (the most "
                             "runs a grid may start)")
    return n


def _count_line(experiments: Sequence[Experiment]) -> str:
    """The one line a grid's command states before it starts: its runs, per strategy."""
    per: dict[str, int] = {}
    for exp in experiments:
        per[exp.strategy] = per.get(exp.strategy, 0) + 1
    seeds = len({exp.seed for exp in experiments})
    return (f"grid: {len(experiments)} runs ({', '.join(f'{s} {n}' for s, n in per.items())}; "
            f"{seeds} seed{'s' * (seeds != 1)})")


def _unused_note(args: argparse.Namespace, strategies: Sequence[str]) -> str | None:
    """One line naming the command line's ``--set``/``--grid`` keys of strategies that this
    command does not run (they are validated, then ignored)."""
    given = [f"--set {sec}.{k}" for sec, kv in parse_set(list(args.set)).items() for k in kv]
    given += [f"--grid {k}" for k in gridlib.parse_grid(args.grid)]
    unused = [g for g in given if g.split(" ", 1)[1].split(".", 1)[0] in STRATEGIES
              and g.split(" ", 1)[1].split(".", 1)[0] not in strategies]
    if not unused:
        return None
    return (f"warning: {', '.join(unused)} ignored: not a parameter of the strategies run "
            f"({', '.join(strategies)})")


def _check_ray(address: str) -> None:
    """Refuse, within seconds, a Ray cluster address that nothing answers at (``ray.init``
    would otherwise try for a minute and fail with a traceback). ``""``/``local``: a local
    cluster is started, nothing to check; ``auto``: the cluster Ray would find (RAY_ADDRESS
    or the last ``ray start`` on this machine) must exist and answer."""
    if address in ("", "local"):
        return
    given = address
    if address == "auto":
        env = os.environ.get("RAY_ADDRESS", "").strip()
        if env and env != "auto":
            address = env
        else:
            try:
                from ray._private.services import canonicalize_bootstrap_address_or_die
            except ImportError:  # another Ray version: leave it to ray.init
                return
            try:
                address = canonicalize_bootstrap_address_or_die("auto")
            except ConnectionError:
                raise BenchmarkError(
                    "--ray auto: no running Ray cluster found on this machine; start one with "
                    "ray start --head, give its address (--ray ray://HOST:10001), or use --ray "
                    "alone for a local cluster") from None
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if parts.scheme == "ray" and port is None and host:
        port = 10001  # Ray client's default port
    if parts.scheme not in ("", "ray") or not host or port is None:
        raise BenchmarkError(
            f"invalid --ray address '{given}': give auto, ray://HOST[:PORT] (a Ray client "
            "server) or HOST:PORT (a cluster's head), or --ray alone for a local cluster")
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise BenchmarkError(
            f"--ray {given}: nothing answers at {host}:{port} ({reason}); start the cluster "
            "(ray start --head) or check the address") from None


def plan_run(args: argparse.Namespace, preset: dict | None = None) -> RunPlan:
    """Validate everything; return the plan (experiments, folders, device, parallelism).
    ``preset``: an in-memory preset instead of ``args.config`` (``tune`` passes its spaces).
    Warnings are printed (one line each) only once everything has been validated."""
    notes: list[str] = []
    plan = _plan(args, preset, notes)
    if plan.grid:
        # (each preset's or scenario's grid was bounded before it was built; here all of them)
        gridlib.check_total(len(plan.experiments), _parse_max_runs(getattr(args, "max_runs",
                                                                               None)))
        # the count of a run's grid (tune: its search space, whose checks go on after this)
        varied = any(k != "scenario.task" or len(v) > 1 for k, v in plan.grid.items())
        if preset is None and varied and any(exp.tag for exp in plan.experiments):
            notes.insert(0, _count_line(plan.experiments))  # (not a --set scenario.task)
    for line in dict.fromkeys(notes):
        print(line, file=sys.stderr)
    return plan


@dataclass
class RunInputs:
    """A ``run`` command's inputs: the command line over its preset, parsed."""

    preset: dict
    scenario: str
    strategies: list[str]
    overrides: dict
    grid: dict[str, list[str]]
    device: str
    out: Path
    data_root: Path
    experiments: list


def _plan(args: argparse.Namespace, preset: dict | None, notes: list[str]) -> RunPlan:
    """``plan_run``, with its warnings added to ``notes``."""
    for_tune = preset is not None
    preset, many = _load_or_fan_out(args, preset, notes)
    if many is not None:
        return many
    inputs = _resolve_inputs(args, preset)
    configs, jobs = _validate(inputs, args)
    threads = _check_out_folder(inputs, configs, args)
    _warn_selection_settings(preset, inputs.overrides, notes)
    if not for_tune:  # (tune keeps --set values of strategies it does not run in its preset)
        notes.append(_unused_note(args, inputs.strategies))
    notes.append(thread_mix_warning(inputs.experiments, inputs.out, threads, inputs.device))
    notes[:] = [n for n in notes if n]
    # datasets are checked (and fetched with --download) here, once, before any worker starts
    get_scenario(inputs.scenario).check_available(inputs.data_root, download=args.download)
    _check_splits(inputs, configs)
    return RunPlan(inputs.experiments, inputs.out, inputs.data_root, inputs.device, jobs,
                   args.ray, inputs.grid, configs)


def _load_or_fan_out(args: argparse.Namespace, preset: dict | None,
                     notes: list[str]) -> tuple[dict, RunPlan | None]:
    """The preset (``preset``, or ``--config``'s, or none), or the plan of several presets or
    scenarios run as one (``--config`` given more than once, ``--scenario a,b``, a preset
    naming several scenarios)."""
    if preset is not None:
        return preset, None
    configs = args.config if isinstance(args.config, list) else [args.config]
    configs = [c for c in configs if c is not None]
    if len(configs) > 1:
        if args.scenario:
            raise BenchmarkError(
                f"--scenario {args.scenario} with {len(configs)} --config presets: each preset "
                "names its scenario; drop --scenario")
        return {}, _plan_many(args, [{"config": [c]} for c in configs],
                              [f"--config {c}" for c in configs], notes)
    if not configs and args.scenario and "," in args.scenario:
        names = [n.strip() for n in args.scenario.split(",")]
        return {}, _plan_many(args, [{"scenario": n} for n in names],
                              [f"--scenario {n}" for n in names], notes)
    preset = load_preset(configs[0]) if configs else {}
    listed = preset.get("scenario", "")
    if args.scenario is None and "," in listed:
        # a preset naming several scenarios ("a,b"): one plan per scenario, one pool
        names = [n.strip() for n in listed.split(",")]
        return preset, _plan_many(
            args, [{"scenario": n} for n in names],
            [f"--config {configs[0]} (scenario {n})" for n in names], notes)
    return preset, None


def _given_or_preset(args: argparse.Namespace, preset: dict, key: str, default: Any) -> Any:
    """The command line's value of ``key``, else the preset's, else ``default``; a list (a
    preset's) as comma-separated text."""
    value = getattr(args, key)
    value = value if value is not None else preset.get(key, default)
    return ",".join(map(str, value)) if isinstance(value, list) else value


def _resolve_inputs(args: argparse.Namespace, preset: dict) -> RunInputs:
    """The command line over the preset, each value parsed (one-line errors)."""
    import torch  # (lazy: start-up time of the command line)

    # an empty value (--scenario "" or a preset's scenario: "") is an error, not the default
    scenario = _given_or_preset(args, preset, "scenario", "split-digits")
    check_scenario(scenario, SCENARIOS)
    strategies = parse_names(_given_or_preset(args, preset, "strategies", "naive,hat"),
                             STRATEGIES, "strategy")
    seeds = parse_seeds(_given_or_preset(args, preset, "seeds", "0"))
    overrides, grid_raw = _merge_layers(preset, args)
    grid = gridlib.validate_grid(grid_raw)
    if grid:  # refused before its points are built
        gridlib.check_size(strategies, len(seeds), grid,
                           _parse_max_runs(getattr(args, "max_runs", None)))
    device = args.device if args.device is not None else preset.get("device", "cpu")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise BenchmarkError(f"invalid --device '{device}': use cpu or cuda")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise BenchmarkError("--device cuda given but no CUDA GPU is available; use --device cpu")
    out = Path(args.out if args.out is not None else preset.get("out", "results"))
    data_root = Path(args.data_root if args.data_root is not None
                     else preset.get("data_root", "data"))
    experiments = gridlib.expand(scenario, strategies, seeds, overrides, grid)
    experiments = _attach_selection(experiments, preset)
    return RunInputs(preset, scenario, strategies, overrides, grid, device, out, data_root,
                     experiments)


def _validate(inputs: RunInputs, args: argparse.Namespace) -> tuple[list, int]:
    """Every run's config resolved (each override and grid point for every strategy, and
    its network against the scenario's input shape: ConfigError → exit 2), and the
    remaining options checked; (the configs, the number of jobs)."""
    spec = get_scenario(inputs.scenario)
    configs = [resolve_for(exp, input_shape=spec.input_shape) for exp in inputs.experiments]
    _check_tasks(inputs.scenario, inputs.grid)
    # --set sections of strategies not run are user input too: validate them as well
    for section in sorted(set(inputs.overrides) & set(STRATEGIES) - set(inputs.strategies)):
        STRATEGIES[section].config(split_inference(inputs.overrides[section])[0])
    # (unknown sections: resolve above already raised ConfigError)
    if not 0 <= args.threads <= MAX_THREADS:
        raise BenchmarkError(f"invalid --threads {args.threads}: give 0 (torch default) to "
                             f"{MAX_THREADS}")
    jobs = _parse_jobs(args.jobs if args.jobs is not None else inputs.preset.get("jobs", 1))
    if args.ray is not None and importlib.util.find_spec("ray") is None:
        raise BenchmarkError("--ray needs Ray, which is not installed: install with "
                             "pip install -e '.[ray]'")
    if args.ray is not None:
        _check_ray(args.ray)
    return configs, jobs


def _check_splits(inputs: RunInputs, configs: Sequence) -> None:
    """A run that holds out more than ``SPLIT_CHECK_ABOVE`` of each task for validation must
    leave every task a training sample per class (``check_valid_fraction``): checked here on
    the built scenario (read once, before any run starts). Every run checks its own split
    again when it starts (any fraction; a task with under two samples per class)."""
    wanted = {(cfg.train.valid_fraction, cfg.scenario.task): cfg for cfg in configs
              if cfg.train.recipe == "paper" and cfg.train.valid_fraction}
    if not wanted or max(f for f, _ in wanted) <= SPLIT_CHECK_ABOVE:
        return
    scenario = get_scenario(inputs.scenario).build(inputs.experiments[0].seed, inputs.data_root)
    for cfg in wanted.values():
        check_valid_fraction(cfg, scenario)


def _check_out_folder(inputs: RunInputs, configs: list, args: argparse.Namespace) -> int:
    """The output folder is writable, and its records and checkpoints of these runs are of
    the same settings (``run_settings``); returns the torch threads the runs use."""
    import torch  # (lazy: start-up time of the command line)

    from ..checkpoints import check_command  # (lazy: torch.save's pickling machinery)

    check_writable(inputs.out)
    threads = args.threads or torch.get_num_threads()
    settings = [run_settings(exp, inputs.device, threads, cfg)
                for exp, cfg in zip(inputs.experiments, configs, strict=True)]
    check_existing(inputs.experiments, inputs.out, settings)
    if not getattr(args, "restart", False):  # (--restart discards them when the runs start)
        check_command(inputs.experiments, inputs.out, inputs.device, threads, settings)
    return threads


def _plan_many(args: argparse.Namespace, variants: list[dict], names: list[str],
               notes: list[str]) -> RunPlan:
    """Several presets (``--config`` given more than once) or scenarios (``--scenario a,b``)
    as one plan: their runs share one pool (one import of the suite, workers busy across
    scenarios). They must not share a run and must agree on where and how to run."""
    plans = [_plan(argparse.Namespace(**{**vars(args), **v}), None, notes) for v in variants]
    first = plans[0]
    for name, plan in zip(names[1:], plans[1:], strict=True):
        for key in ("out", "data_root", "device", "jobs", "ray"):
            if getattr(plan, key) != getattr(first, key):
                raise BenchmarkError(
                    f"{name} runs with {key}={getattr(plan, key)} but {names[0]} with "
                    f"{key}={getattr(first, key)}: give one {key} for all on the command line")
    seen: dict[tuple, str] = {}
    for name, plan in zip(names, plans, strict=True):
        for exp in plan.experiments:
            key = (exp.scenario, exp.strategy, exp.seed, exp.tag, exp.protocol)
            if key in seen:
                raise BenchmarkError(
                    f"{seen[key]} and {name} both run {exp.strategy} seed {exp.seed} on "
                    f"{exp.scenario}: give each scenario once")
            seen[key] = name
    grid = {k: v for plan in plans for k, v in plan.grid.items()}
    return RunPlan([e for plan in plans for e in plan.experiments], first.out, first.data_root,
                   first.device, first.jobs, first.ray, grid,
                   [c for plan in plans for c in plan.configs])


def prepare_run(args: argparse.Namespace):
    """Validate everything; return (experiments, out, data_root, device)."""
    plan = plan_run(args)
    return plan.experiments, plan.out, plan.data_root, plan.device


def check_existing(experiments: Sequence[Experiment], out: Path,
                   settings: Sequence[Mapping[str, Any]] | None = None) -> None:
    """Refuse (BenchmarkError, before anything runs) when a complete record at an
    experiment's path holds a run with other hyperparameters: resuming would silently keep
    it (e.g. a record of the paper's defaults where a tuned preset now runs). ``settings``:
    each experiment's ``run_settings`` (its ``params`` are compared; resolved here when None)."""
    for i, exp in enumerate(experiments):
        path = record_path(out, exp.scenario, exp.strategy, exp.seed, exp.tag, exp.protocol)
        if not path.exists():
            continue
        if not path.is_file():
            raise BenchmarkError(
                f"{path} is in the way of this run's record (not a file); remove it or use "
                "another --out"
            )
        try:
            rec = read_record(path)
        except RecordError:
            continue  # not a record: rerun, the file moved aside (records.set_aside)
        want = run_params(exp) if settings is None else settings[i]["params"]
        have = rec.get("params", {})
        for section in sorted(want):
            for key in sorted(want[section]):
                old = have.get(section, {}).get(key, "(missing)")
                if old != want[section][key]:
                    raise BenchmarkError(
                        f"{path} holds a run with {section}.{key}={old}, this command runs "
                        f"{section}.{key}={want[section][key]}; use another --out, or delete "
                        "that record to rerun it"
                    )


def thread_mix_warning(experiments: Sequence[Experiment], out: Path, threads: int,
                       device: str = "cpu") -> str | None:
    """One line when this command would add CPU runs with ``threads`` torch threads to a
    folder whose CPU records (of the same scenarios) say they used another count: results
    on CPU depend on the thread count, so the report would compare mixed settings. None
    when nothing is to run, or nothing differs (records without ``threads`` are not known)."""
    runs = Path(out) / "runs"
    if str(device) != "cpu" or not runs.is_dir():
        return None
    if all(is_complete(record_path(out, e.scenario, e.strategy, e.seed, e.tag, e.protocol))
           for e in experiments):
        return None  # nothing is written
    scenarios = {e.scenario for e in experiments}
    other: dict[int, list[str]] = {}
    for path in sorted(runs.glob("*.json")):
        try:
            rec = read_record(path)
        except RecordError:
            continue
        used = rec.get("threads")
        if (rec["scenario"] in scenarios and rec.get("device") == "cpu"
                and isinstance(used, int) and used != threads):
            other.setdefault(used, []).append(path.name)
    if not other:
        return None
    counts = ", ".join(f"{len(names)} with {n}" for n, names in sorted(other.items()))
    first = min(other)
    return (f"warning: {runs} holds records trained with other torch thread counts ({counts}, "
            f"e.g. {other[first][0]}); this command trains with {threads}, and CPU results "
            f"depend on it: give --threads {first} to match, or use another --out")
