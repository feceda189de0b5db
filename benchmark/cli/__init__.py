"""Command line: ``python -m benchmark run ...``, ``tune ...`` and ``list``.

Everything the user gives is validated before any training starts; a bad input prints one
line on stderr and exits with code 2, writing nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import tempfile
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from strategies import STRATEGIES, ConfigError

from . import grid as gridlib
from .errors import BenchmarkError
from .scenarios import SCENARIOS, describe_scenarios, get_scenario

EXIT_USAGE = 2
EXIT_FAILED = 1
#: Ctrl-C and SIGTERM (128 + the signal's number, as a shell reports a process it ended)
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
#: what ``tune`` selects for by default (the strategies ``make run`` compares)
TUNE_STRATEGIES = ("naive", "ewc", "lwf", "si", "hat", "joint")
#: tuning seeds: apart from the evaluation seeds 0-9, so no reported run took part in selection
TUNE_SEEDS = "100-102"
#: the largest seed: torch's generators take unsigned 64-bit seeds
MAX_SEED = 2**64 - 1
#: most seeds one command runs
MAX_SEEDS = 10_000
#: most torch threads ``--threads`` takes
MAX_THREADS = 1024


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        raise BenchmarkError(message)


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` or ``0-9`` (or a mix): distinct integers in [0, 2**64 - 1] (what torch's
    generators take), at most ``MAX_SEEDS`` of them."""
    seeds: list[int] = []
    too_many = False
    try:
        for part in str(text).split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                lo_i, hi_i = int(lo), int(hi)
                if hi_i < lo_i:
                    raise ValueError
                if hi_i > MAX_SEED or hi_i - lo_i + 1 + len(seeds) > MAX_SEEDS:
                    too_many = True  # refused below, without building the range
                    break
                seeds.extend(range(lo_i, hi_i + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise BenchmarkError(
            f"invalid seed list '{text}': give comma-separated non-negative integers or a "
            "range, e.g. --seeds 0,1,2 or --seeds 0-9"
        ) from None
    if too_many or len(seeds) > MAX_SEEDS:
        raise BenchmarkError(
            f"invalid seed list '{text}': at most {MAX_SEEDS} seeds, each at most {MAX_SEED} "
            "(2**64 - 1, the largest seed torch takes)"
        )
    if any(s > MAX_SEED for s in seeds):
        raise BenchmarkError(
            f"invalid seed list '{text}': seed {max(seeds)} is above {MAX_SEED} (2**64 - 1, "
            "the largest seed torch takes)"
        )
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise BenchmarkError(
            f"invalid seed list '{text}': seeds must be distinct non-negative integers"
        )
    return seeds


def parse_set(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``section.key=value`` pairs → {section: {key: value}} (values typed later); a key
    given twice is refused."""
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for item in items:
        key, sep, value = str(item).partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not section or not name or value == "":
            raise BenchmarkError(
                f"malformed --set '{item}': use section.key=value, e.g. --set hat.smax=400 "
                "or --set train.lr=0.05"
            )
        section, name = section.strip().lower(), name.strip()
        if name in out[section]:
            raise BenchmarkError(
                f"--set gives '{section}.{name}' twice ({section}.{name}="
                f"{out[section][name]} and {item}); give it once"
            )
        out[section][name] = value.strip()
    return dict(out)


def parse_names(text: str, registry: dict, kind: str) -> list[str]:
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise BenchmarkError(f"no {kind} given")
    plural = kind[:-1] + "ies" if kind.endswith("y") else kind + "s"
    for n in names:
        if n not in registry:
            raise BenchmarkError(
                f"unknown {kind} '{n}'; valid {plural}: {', '.join(sorted(registry))}"
            )
    return list(dict.fromkeys(names))


def check_writable(out: Path) -> None:
    """The output folder (or its nearest existing parent) must be writable; creates nothing."""
    probe = Path(out).resolve()
    while not probe.exists():
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise OSError
        fd, tmp = tempfile.mkstemp(prefix=".hatbench-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError:
        raise BenchmarkError(
            f"output folder {out} is not writable ({probe} is not a writable folder); "
            "choose another with --out"
        ) from None
    runs = Path(out) / "runs"
    if runs.exists() and not runs.is_dir():
        raise BenchmarkError(
            f"{runs} is a file, where the run records' folder goes; move it or choose "
            "another --out"
        )
    if runs.exists() and not os.access(runs, os.W_OK | os.X_OK):
        raise BenchmarkError(f"output folder {runs} is not writable; choose another with --out")


def load_preset(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise BenchmarkError(f"cannot read --config {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise BenchmarkError(f"cannot read --config {path}: not a UTF-8 text file") from None
    except yaml.YAMLError as err:
        raise BenchmarkError(f"--config {path} is not valid YAML: {err}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise BenchmarkError(f"--config {path} must be a YAML mapping of run options")
    allowed = {"scenario", "strategies", "seeds", "epochs", "set", "grid", "jobs", "out",
               "data_root", "device", "description", "selection"}
    extra = set(data) - allowed
    if extra:
        raise BenchmarkError(
            f"--config {path}: unknown key '{sorted(extra)[0]}'; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    for key in ("scenario", "out", "data_root", "device"):
        if key in data and not isinstance(data[key], str):
            raise BenchmarkError(f"--config {path}: '{key}' must be a string, got {data[key]!r}")
    for key in ("scenario", "strategies", "seeds", "out", "data_root", "device"):
        if key in data and (data[key] is None or not str(data[key]).strip() or data[key] == []):
            raise BenchmarkError(
                f"--config {path}: '{key}' is empty; give a value, or drop the key for its "
                "default")
    if "jobs" in data and (isinstance(data["jobs"], bool) or not isinstance(data["jobs"], int)
                           or data["jobs"] < 1):
        raise BenchmarkError(f"--config {path}: 'jobs' must be an integer >= 1, "
                             f"got {data['jobs']!r}")
    if "grid" in data:
        data["grid"] = gridlib.grid_from_mapping(data["grid"], f"--config {path}")
    if "selection" in data:
        _check_selection(data["selection"], path)
        data["_path"] = str(path)
    return data


def _check_selection(sel: Any, path: Path) -> None:
    """A preset's ``selection`` as ``tune`` writes it: per strategy a block the report can
    read (space, points, chosen) whose keys are that strategy's own ``<strategy>.<key>``."""
    from reports.records import selection_problem

    blocks = sel.get("strategies") if isinstance(sel, dict) else None
    problem = None if isinstance(blocks, dict) else "'strategies' must map names to blocks"
    for name, block in (blocks or {}).items() if problem is None else ():
        problem = selection_problem(block)
        if problem is None and any(str(k).split(".", 1)[0] != name or "." not in str(k)
                                   for k in block["chosen"]):
            problem = f"the keys of '{name}' must read {name}.<parameter>"
        if problem is not None:
            problem = f"strategy '{name}': {problem}"
            break
    if problem is not None:
        raise BenchmarkError(
            f"--config {path}: 'selection' is not as python -m benchmark tune writes it "
            f"({problem}); regenerate the preset with tune"
        )


def _given(value: str) -> str:
    """An option's value, refused when empty: ``--scenario ""`` is a mistake, not a request
    for the default (leave the option out for that)."""
    if not str(value).strip():
        raise argparse.ArgumentTypeError(
            "empty value; give one, or leave the option out for its default")
    return str(value)


def _given_path(value: str) -> Path:
    return Path(_given(value))


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m benchmark", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="run strategies × seeds on a scenario")
    r.add_argument("--scenario", type=_given, help="scenario name (see `list`), or several "
                   "comma-separated (one pool of runs); default split-digits")
    r.add_argument("--strategies", type=_given,
                   help="comma-separated strategy names; default naive,hat")
    r.add_argument("--seeds", type=_given, help="e.g. 0,1,2 or 0-9; default 0")
    _add_common(r)
    r.add_argument("--config", type=_given_path, action="append",
                   help="YAML preset (keys as the options); give it once per scenario to run "
                   "several presets as one pool of runs (make run does)")
    r.add_argument("--wandb", choices=["online", "offline", "disabled"],
                   help="Weights & Biases mode (default: online when logged in, else offline)")
    r.add_argument("--out", type=_given_path, help="results folder (default results)")
    t = sub.add_parser("tune", help="select every strategy's hyperparameters on validation "
                       "data and write them as a preset")
    t.add_argument("--scenario", required=True, type=_given, help="scenario name (see `list`)")
    t.add_argument("--strategies", default=",".join(TUNE_STRATEGIES), type=_given,
                   help="comma-separated strategy names (default %(default)s; those without "
                   "a search space are not run, only kept in the preset)")
    t.add_argument("--seeds", default=TUNE_SEEDS, type=_given,
                   help="tuning seeds (default %(default)s, apart from the evaluation seeds)")
    _add_common(t)
    t.add_argument("--wandb", choices=["online", "offline", "disabled"], default="disabled",
                   help="Weights & Biases mode for the tuning runs (default disabled)")
    t.add_argument("--out", type=_given_path, default=Path("results/tune"),
                   help="folder of the tuning runs' records (default results/tune)")
    t.add_argument("--preset", type=_given_path,
                   help="where to write the selection (default configs/tuned/<scenario>.yaml)")
    t.add_argument("--run-seeds", default="0,1,2", type=_given,
                   help="the seeds the written preset runs (default 0,1,2)")
    sub.add_parser("list", help="list scenarios and strategies with their defaults")
    return p


def _add_common(r: argparse.ArgumentParser) -> None:
    """Options ``run`` and ``tune`` share."""
    r.add_argument("--epochs", type=_given,
                   help="maximum epochs per experience (train.epochs; not with --set "
                   "train.epochs)")
    r.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="train.optimizer=adamw, train.lr=0.01, hat.smax=400, ewc.lambda=5000 …")
    r.add_argument("--grid", nargs="+", action="extend", default=[], metavar="KEY=V1,V2",
                   help="run every combination: hat.smax=25,50,100 hat.c=0.1,0.75 (a "
                   "strategy's keys vary that strategy only; each point gets its own record)")
    r.add_argument("--jobs", type=_given, default=None,
                   help="runs in parallel worker processes on this machine (default 1)")
    r.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run as Ray tasks: a local Ray cluster, or the cluster at ADDRESS "
                   "(e.g. auto); needs pip install -e '.[ray]'")
    r.add_argument("--data-root", type=_given_path, help="dataset folder (default data)")
    r.add_argument("--download", action="store_true",
                   help="let torchvision download missing datasets (needs internet)")
    r.add_argument("--device", type=_given, help="cpu or cuda (default cpu)")
    r.add_argument("--wandb-project", default="hat-bench", type=_given,
                   help="W&B project (default hat-bench)")
    r.add_argument("--wandb-entity", default=None, help="W&B entity (team or user)")
    r.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (default 1: fastest for the small networks on "
                   "few cores and for parallel jobs; 0 keeps torch's default)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--restart", action="store_true",
                   help="discard the checkpoints of this command's unfinished runs and train "
                   "them from the first task (default: resume each from its last checkpoint)")
    r.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each run's checkpoints under OUT/checkpoints after its record "
                   "is written (default: removed)")


def cmd_list() -> int:
    print("Scenarios:")
    for row in describe_scenarios():
        emb = "embedded" if row["embedded"] else "download"
        print(f"  {row['name']:<16} {row['n_tasks']:>2} tasks  {row['network']:<8} {emb:<9} "
              f"{row['description']}")
    print("\nStrategies:")
    for spec in STRATEGIES.values():
        print(f"  {spec.name:<8} {spec.description}")
        defaults = spec.defaults()
        if defaults:
            print("           " + ", ".join(f"{spec.name}.{k}={v}" for k, v in defaults.items()))
        print(f"           train.clipgrad={spec.clipgrad:g} (the reference's)")
        if spec.space:
            print("           tune space: " + "; ".join(
                f"{spec.name}.{k} in {{{', '.join(f'{v:g}' for v in vals)}}}"
                for k, vals in spec.space.items()))
    from strategies import TrainConfig
    from strategies.config import to_public_dict

    print("\nTraining (train.*): " + ", ".join(f"{k}={v}" for k, v in
                                                to_public_dict(TrainConfig()).items()))
    return 0


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


def _merge_layers(preset: dict, args: argparse.Namespace):
    """Overrides and grid from the preset, then the command line: a command-line entry for a
    key (``--set``, ``--epochs`` or ``--grid``) replaces the preset's entry for that key."""
    preset_set = preset.get("set") or {}
    if not isinstance(preset_set, dict):
        raise BenchmarkError("--config: 'set' must be a mapping of section.key: value")
    p_over = parse_set([f"{k}={v}" for k, v in preset_set.items()])
    if preset.get("epochs") is not None:
        if "epochs" in p_over.get("train", {}):
            raise BenchmarkError(
                f"--config gives both 'epochs: {preset['epochs']}' and 'set: train.epochs: "
                f"{p_over['train']['epochs']}'; give one")
        p_over.setdefault("train", {})["epochs"] = preset["epochs"]
    p_grid = dict(preset.get("grid") or {})
    c_over = parse_set(list(args.set))
    if args.epochs is not None:
        if "epochs" in c_over.get("train", {}):
            raise BenchmarkError(
                f"--epochs {args.epochs} and --set train.epochs={c_over['train']['epochs']} both "
                "set the maximum epochs per task; give one")
        c_over.setdefault("train", {})["epochs"] = args.epochs
    c_grid = gridlib.parse_grid(args.grid)

    def keys(over):
        return {f"{sec}.{k}" for sec, values in over.items() for k in values}

    for where, over, grid in (("--config", p_over, p_grid), ("the command line", c_over, c_grid)):
        both = sorted(keys(over) & set(grid))
        if both:
            raise BenchmarkError(
                f"{where} gives '{both[0]}' both as a fixed value (set/--set/epochs) and as "
                "a grid; give one"
            )
    c_keys = keys(c_over) | set(c_grid)
    overrides: dict[str, dict] = {}
    for sec, values in p_over.items():
        for k, v in values.items():
            if f"{sec}.{k}" not in c_keys:
                overrides.setdefault(sec, {})[k] = v
    for sec, values in c_over.items():
        overrides.setdefault(sec, {}).update(values)
    grid_raw = {k: v for k, v in p_grid.items() if k not in c_keys}
    grid_raw.update(c_grid)
    # a fixed task to train alone is a one-point grid: its record is tagged, so it never takes
    # the file name of the whole sequence's record
    if "task" in overrides.get("scenario", {}):
        grid_raw["scenario.task"] = [overrides["scenario"].pop("task")]
        if not overrides["scenario"]:
            del overrides["scenario"]
    return overrides, grid_raw


def _check_tasks(scenario: str, grid: dict) -> None:
    """``scenario.task`` values must name tasks of the scenario (when names are known without
    reading data: embedded scenarios and the mixture; others are checked at run start)."""
    from .runner import known_task_names

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


def _attach_selection(experiments: list, preset: dict) -> list:
    """Experiments whose strategy's values are those a tuned preset chose carry the preset's
    selection block (copied into their records); a value changed on the command line (or a
    grid over it) means the run's hyperparameters were not selected: no block."""
    from dataclasses import replace

    blocks = (preset.get("selection") or {}).get("strategies") or {}
    out = []
    for exp in experiments:
        block = blocks.get(exp.strategy)
        if block is not None and any(f"{k}=" in exp.tag for k in block["chosen"]):
            block = None  # a grid over a selected key: these values were not selected
        if block is not None:
            given = exp.overrides.get(exp.strategy, {})
            keys = {key: key.split(".", 1)[1] for key in block["chosen"]}
            if all(name in given and gridlib.canonical_value(exp.strategy, name, given[name])
                   == gridlib.canonical_value(exp.strategy, name, block["chosen"][key])
                   for key, name in keys.items()):
                exp = replace(exp, selection={"preset": preset["_path"], **block})
        out.append(exp)
    return out


def _warn_selection_settings(preset: dict, overrides: dict, notes: list[str]) -> None:
    """One line when the run trains differently from how its preset's values were selected."""
    from strategies import TrainConfig

    blocks = ((preset.get("selection") or {}).get("strategies") or {}).values()
    block = next(iter(blocks), None)  # one tuning: every block has its epochs
    if block is None:
        return
    tuned_epochs = block.get("epochs") or TrainConfig().epochs
    epochs = overrides.get("train", {}).get("epochs", TrainConfig().epochs)
    if str(epochs) != str(tuned_epochs):
        notes.append(f"warning: {preset['_path']} was selected with at most {tuned_epochs} "
                     f"epochs per task; this run uses {epochs}")


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
    import socket
    from urllib.parse import urlsplit

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
    for line in dict.fromkeys(notes):
        print(line, file=sys.stderr)
    return plan


def _plan(args: argparse.Namespace, preset: dict | None, notes: list[str]) -> RunPlan:
    """``plan_run``, with its warnings added to ``notes``."""
    import torch

    from .runner import INPUT_SHAPES, check_existing, resolve, thread_mix_warning

    for_tune = preset is not None

    configs = args.config if isinstance(args.config, list) else [args.config]
    configs = [c for c in configs if c is not None]
    if preset is None and len(configs) > 1:
        if args.scenario:
            raise BenchmarkError(
                f"--scenario {args.scenario} with {len(configs)} --config presets: each preset "
                "names its scenario; drop --scenario")
        return _plan_many(args, [{"config": [c]} for c in configs],
                          [f"--config {c}" for c in configs], notes)
    if preset is None and not configs and args.scenario and "," in args.scenario:
        names = [n.strip() for n in args.scenario.split(",")]
        return _plan_many(args, [{"scenario": n} for n in names],
                          [f"--scenario {n}" for n in names], notes)
    if preset is None:
        preset = load_preset(configs[0]) if configs else {}
        listed = preset.get("scenario", "")
        if args.scenario is None and "," in listed:
            # a preset naming several scenarios ("a,b"): one plan per scenario, one pool
            names = [n.strip() for n in listed.split(",")]
            return _plan_many(args, [{"scenario": n} for n in names],
                              [f"--config {configs[0]} (scenario {n})" for n in names], notes)
    # an empty value (--scenario "" or a preset's scenario: "") is an error, not the default
    scenario = args.scenario if args.scenario is not None else preset.get("scenario",
                                                                         "split-digits")
    if scenario not in SCENARIOS:
        raise BenchmarkError(
            f"unknown scenario '{scenario}'; valid scenarios: {', '.join(sorted(SCENARIOS))}"
        )
    strategies_txt = (args.strategies if args.strategies is not None
                      else preset.get("strategies", "naive,hat"))
    if isinstance(strategies_txt, list):
        strategies_txt = ",".join(map(str, strategies_txt))
    strategies = parse_names(strategies_txt, STRATEGIES, "strategy")
    seeds_txt = args.seeds if args.seeds is not None else preset.get("seeds", "0")
    if isinstance(seeds_txt, list):
        seeds_txt = ",".join(map(str, seeds_txt))
    seeds = parse_seeds(seeds_txt)
    overrides, grid_raw = _merge_layers(preset, args)
    grid = gridlib.validate_grid(grid_raw)
    device = args.device if args.device is not None else preset.get("device", "cpu")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise BenchmarkError(f"invalid --device '{device}': use cpu or cuda")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise BenchmarkError("--device cuda given but no CUDA GPU is available; use --device cpu")
    out = Path(args.out if args.out is not None else preset.get("out", "results"))
    data_root = Path(args.data_root if args.data_root is not None
                     else preset.get("data_root", "data"))
    spec = get_scenario(scenario)
    experiments = gridlib.expand(scenario, strategies, seeds, overrides, grid)
    experiments = _attach_selection(experiments, preset)
    # validate every override and grid point for every strategy, and its network against the
    # scenario's input shape (ConfigError → exit 2); the other seeds' configs are the same
    for exp in experiments:
        if exp.seed == seeds[0]:
            resolve(exp, spec.valid_fraction, spec.embedded, spec.network,
                    INPUT_SHAPES.get(scenario))
    _check_tasks(scenario, grid)
    # --set sections of strategies not run are user input too: validate them as well
    for section in sorted(set(overrides) & set(STRATEGIES) - set(strategies)):
        STRATEGIES[section].config(overrides[section])
    # (unknown sections: resolve above already raised ConfigError)
    if not 0 <= args.threads <= MAX_THREADS:
        raise BenchmarkError(f"invalid --threads {args.threads}: give 0 (torch default) to "
                             f"{MAX_THREADS}")
    jobs_value = args.jobs if args.jobs is not None else preset.get("jobs", 1)
    jobs = _parse_jobs(jobs_value)
    if args.ray is not None and importlib.util.find_spec("ray") is None:
        raise BenchmarkError("--ray needs Ray, which is not installed: install with "
                             "pip install -e '.[ray]'")
    if args.ray is not None:
        _check_ray(args.ray)
    check_writable(out)
    check_existing(experiments, out)
    if not getattr(args, "restart", False):  # (--restart discards them when the runs start)
        from .checkpoints import check_command

        check_command(experiments, out, device, args.threads or torch.get_num_threads())
    _warn_selection_settings(preset, overrides, notes)
    if not for_tune:  # (tune keeps --set values of strategies it does not run in its preset)
        notes.append(_unused_note(args, strategies))
    notes.append(thread_mix_warning(experiments, out, args.threads or torch.get_num_threads(),
                                    device))
    notes[:] = [n for n in notes if n]
    # datasets are checked (and fetched with --download) here, once, before any worker starts
    spec.check_available(data_root, download=args.download)
    return RunPlan(experiments, out, data_root, device, jobs, args.ray, grid)


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
            key = (exp.scenario, exp.strategy, exp.seed, exp.tag)
            if key in seen:
                raise BenchmarkError(
                    f"{seen[key]} and {name} both run {exp.strategy} seed {exp.seed} on "
                    f"{exp.scenario}: give each scenario once")
            seen[key] = name
    grid = {k: v for plan in plans for k, v in plan.grid.items()}
    return RunPlan([e for plan in plans for e in plan.experiments], first.out, first.data_root,
                   first.device, first.jobs, first.ray, grid)


def prepare_run(args: argparse.Namespace):
    """Validate everything; return (experiments, out, data_root, device)."""
    plan = plan_run(args)
    return plan.experiments, plan.out, plan.data_root, plan.device


def plan_tune(args: argparse.Namespace) -> RunPlan:
    """``tune``: the run plan over every tunable strategy's search space (``--grid`` replaces
    a key's values, ``--set`` fixes a key), validated like ``run``."""
    from .tune import default_space, tunable

    strategies = parse_names(args.strategies, STRATEGIES, "strategy")
    to_tune = tunable(strategies)
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
    from .runner import resolve

    sspec = get_scenario(args.scenario)
    train = resolve(plan.experiments[0], sspec.valid_fraction, sspec.embedded,
                    sspec.network).train
    if train.recipe != "paper" or not train.valid_fraction:
        raise BenchmarkError(
            "tune selects on validation data: it needs the paper's recipe with a validation "
            "split (drop train.recipe=fixed / train.valid_fraction=0)"
        )
    preset_path = args.preset or Path("configs/tuned") / f"{args.scenario}.yaml"
    check_writable(preset_path.parent)
    if preset_path.exists() and preset_path.is_dir():
        raise BenchmarkError(f"--preset {preset_path} is a folder; give a .yaml file path")
    args.preset = preset_path
    return plan


def finish_tune(plan: RunPlan, args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Select on the tuning runs' validation matrices; write and print the preset."""
    import shlex

    from .records import read_record, record_path
    from .tune import Selection, criterion_table, preset, select, write_preset

    valid: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for exp in plan.experiments:
        rec = read_record(record_path(plan.out, exp.scenario, exp.strategy, exp.seed, exp.tag))
        valid[exp.strategy][exp.tag].append(rec.get("valid_accuracy"))
    seeds = list(dict.fromkeys(e.seed for e in plan.experiments))
    strategies = parse_names(args.strategies, STRATEGIES, "strategy")
    base = plan.experiments[0].overrides
    # the tuning's fixed settings: shared sections (with --epochs) and every listed
    # strategy's --set values (a --set key is never in the searched space)
    given = parse_set(args.set)
    fixed = {sec: dict(kv) for sec, kv in base.items() if sec in gridlib.SHARED_SECTIONS}
    fixed.update({s: dict(given[s]) for s in strategies if s in given})
    selections: list[Selection] = []
    for s, by_tag in valid.items():
        space = {k: v for k, v in plan.grid.items() if k.split(".", 1)[0] == s}
        if not space:
            continue
        sel = select(s, space, by_tag)
        selections.append(sel)
        print(criterion_table(sel))
    epochs = base.get("train", {}).get("epochs")
    data = preset(plan.experiments[0].scenario, strategies, selections, seeds=seeds,
                  epochs=int(float(epochs)) if epochs is not None else None, fixed=fixed,
                  command="python -m benchmark " + shlex.join(argv),
                  run_seeds=parse_seeds(args.run_seeds))
    write_preset(args.preset, data)
    chosen = ", ".join(f"{k}={v}" for sel in selections for k, v in sel.chosen.items())
    print(f"wrote {args.preset}: {chosen}")
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM: the command stops as on Ctrl-C (workers terminated, no partial record)."""


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the clean-up runs to its end
    raise Terminated


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (in the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stopped(err: KeyboardInterrupt) -> int:
    """The one line and exit code of a command stopped by Ctrl-C or SIGTERM."""
    term = isinstance(err, Terminated)
    print(f"{'terminated' if term else 'interrupted'}: finished runs have records; rerun the "
          "command to resume", file=sys.stderr)
    return EXIT_TERMINATED if term else EXIT_INTERRUPTED


def execute(plan: RunPlan, args: argparse.Namespace) -> int:
    """Run the plan's experiments (sequential, worker pool or Ray); the exit code. A run that
    fails is reported in one line, the others run (exit 1 at the end); Ctrl-C or SIGTERM
    stops all (one line, exit 130 or 143)."""
    from .parallel import RunsFailed, WorkerSettings, run_pool, run_ray
    from .runner import run_all
    from .tracking import decide_mode, one_line_warnings, tracker_factory

    one_line_warnings()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    progress = not args.no_progress
    keep = bool(getattr(args, "keep_checkpoints", False))
    if getattr(args, "restart", False):
        from .checkpoints import discard

        discard(plan.experiments, plan.out)
    try:
        if plan.ray is None and plan.jobs == 1:
            factory = tracker_factory(args.wandb, project=args.wandb_project,
                                      entity=args.wandb_entity, out=plan.out)
            run_all(plan.experiments, plan.out, data_root=plan.data_root, device=plan.device,
                    progress=progress, tracker_factory=factory, keep_checkpoints=keep)
        else:
            # decided once here: a failing W&B costs one wait and one warning, not one a worker
            mode = decide_mode(args.wandb, project=args.wandb_project,
                               entity=args.wandb_entity, out=plan.out.resolve())
            settings = WorkerSettings(
                out=plan.out.resolve(), data_root=plan.data_root.resolve(), device=plan.device,
                threads=args.threads, wandb=None if mode == "disabled" else mode,
                wandb_project=args.wandb_project, wandb_entity=args.wandb_entity,
                keep_checkpoints=keep,
            )
            if plan.ray is not None:
                run_ray(plan.experiments, settings, address=plan.ray or None,
                        num_cpus=plan.jobs if plan.jobs > 1 else None, progress=progress)
            else:
                run_pool(plan.experiments, settings, jobs=plan.jobs, progress=progress)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (Terminated)
        return _stopped(err)
    except RunsFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except BenchmarkError as err:  # e.g. Ray missing at run time
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; Ctrl-C or SIGTERM stops it with one line (exit 130 or 143)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with _sigterm_as_interrupt():
        try:
            return _command(argv)
        except KeyboardInterrupt as err:
            return _stopped(err)


def _command(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "list":
            return cmd_list()
        plan = plan_tune(args) if args.command == "tune" else plan_run(args)
    except (BenchmarkError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    code = execute(plan, args)
    if code or args.command != "tune":
        return code
    from .records import RecordError

    try:
        return finish_tune(plan, args, argv)
    except (BenchmarkError, ConfigError, RecordError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
