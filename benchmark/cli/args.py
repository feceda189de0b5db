"""The command line's arguments: the parser and the parsing of seeds, ``--set`` pairs and
names (one-line errors: ``BenchmarkError``). Imports neither torch nor the suite: names are
checked against the catalogue (``catalogue``)."""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from ..errors import BenchmarkError
from .catalogue import catalogue, scenario_names, strategy_names

#: the parser's description (the first line of the command line's docstring)
DESCRIPTION = "Command line: ``python -m benchmark run ...``, ``tune ...`` and ``list``."
#: what ``tune`` selects for by default (the strategies ``make run`` compares)
TUNE_STRATEGIES = tuple(row["name"] for row in catalogue()["strategies"]
                        if row["tune_by_default"])
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


def parse_names(text: str, registry: Collection[str], kind: str) -> list[str]:
    """Comma-separated names of ``registry`` (its keys), distinct (a name given twice is
    refused, as a seed given twice is)."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise BenchmarkError(f"no {kind} given")
    plural = kind[:-1] + "ies" if kind.endswith("y") else kind + "s"
    for n in names:
        if n not in registry:
            raise BenchmarkError(
                f"unknown {kind} '{n}'; valid {plural}: {', '.join(sorted(registry))}"
            )
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise BenchmarkError(
            f"invalid {kind} list '{text}': {plural} must be distinct ({twice} is given "
            "twice); give each once")
    return names


def check_scenario(name: str, valid: Collection[str]) -> None:
    """``name`` must be one of the ``valid`` scenario names."""
    if name not in valid:
        raise BenchmarkError(
            f"unknown scenario '{name}'; valid scenarios: {', '.join(sorted(valid))}")


def check_names(args: argparse.Namespace) -> None:
    """The scenario and strategy names and the seeds given on the command line, checked
    against the catalogue before the suite is imported (the run plan checks them again,
    with a preset's)."""
    if args.scenario:
        fan_out = args.command == "run" and "," in args.scenario
        for name in args.scenario.split(",") if fan_out else [args.scenario]:
            check_scenario(name.strip() if fan_out else name, scenario_names())
    if args.strategies:
        parse_names(args.strategies, strategy_names(), "strategy")
    for seeds in (args.seeds, getattr(args, "run_seeds", None)):
        if seeds is not None:
            parse_seeds(seeds)


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
    p = _Parser(prog="python -m benchmark", description=DESCRIPTION)
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
    r.add_argument("--max-runs", type=_given, default=None, metavar="N",
                   help=f"most runs a grid may start (default {catalogue()['max_grid_runs']}): "
                   "a grid of more is refused unless N allows them")
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
