"""Command line: ``python -m benchmark run ...`` and ``python -m benchmark list``.

Everything the user gives is validated before any training starts; a bad input prints one
line on stderr and exits with code 2, writing nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from strategies import STRATEGIES, ConfigError

from .errors import BenchmarkError
from .scenarios import SCENARIOS, describe_scenarios, get_scenario

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        raise BenchmarkError(message)


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` or ``0-9`` (or a mix): distinct non-negative integers."""
    seeds: list[int] = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                lo_i, hi_i = int(lo), int(hi)
                if hi_i < lo_i:
                    raise ValueError
                seeds.extend(range(lo_i, hi_i + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise BenchmarkError(
            f"invalid seed list '{text}': give comma-separated non-negative integers or a "
            "range, e.g. --seeds 0,1,2 or --seeds 0-9"
        ) from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise BenchmarkError(
            f"invalid seed list '{text}': seeds must be distinct non-negative integers"
        )
    return seeds


def parse_set(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``section.key=value`` pairs → {section: {key: value}} (values typed later)."""
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for item in items:
        key, sep, value = str(item).partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not section or not name or value == "":
            raise BenchmarkError(
                f"malformed --set '{item}': use section.key=value, e.g. --set hat.smax=400 "
                "or --set train.lr=0.05"
            )
        out[section.strip().lower()][name.strip()] = value.strip()
    return dict(out)


def parse_names(text: str, registry: dict, kind: str) -> list[str]:
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise BenchmarkError(f"no {kind} given")
    for n in names:
        if n not in registry:
            raise BenchmarkError(
                f"unknown {kind} '{n}'; valid {kind}s: {', '.join(sorted(registry))}"
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
    allowed = {"scenario", "strategies", "seeds", "epochs", "set", "out", "data_root", "device",
               "description"}
    extra = set(data) - allowed
    if extra:
        raise BenchmarkError(
            f"--config {path}: unknown key '{sorted(extra)[0]}'; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    for key in ("scenario", "out", "data_root", "device"):
        if key in data and not isinstance(data[key], str):
            raise BenchmarkError(f"--config {path}: '{key}' must be a string, got {data[key]!r}")
    return data


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m benchmark", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="run strategies × seeds on a scenario")
    r.add_argument("--scenario", help="scenario name (see `list`); default split-digits")
    r.add_argument("--strategies", help="comma-separated strategy names; default naive,hat")
    r.add_argument("--seeds", help="e.g. 0,1,2 or 0-9; default 0")
    r.add_argument("--epochs", type=str, help="maximum epochs per experience (train.epochs)")
    r.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="train.optimizer=adamw, train.lr=0.01, hat.smax=400, ewc.lambda=5000 …")
    r.add_argument("--config", type=Path, help="YAML preset (keys as the options)")
    r.add_argument("--out", type=Path, help="results folder (default results)")
    r.add_argument("--data-root", type=Path, help="dataset folder (default data)")
    r.add_argument("--download", action="store_true",
                   help="let torchvision download missing datasets (needs internet)")
    r.add_argument("--device", help="cpu or cuda (default cpu)")
    r.add_argument("--wandb", choices=["online", "offline", "disabled"],
                   help="Weights & Biases mode (default: online when logged in, else offline)")
    r.add_argument("--wandb-project", default="hat-bench", help="W&B project (default hat-bench)")
    r.add_argument("--wandb-entity", default=None, help="W&B entity (team or user)")
    r.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (default 1: fastest for the small networks on "
                   "few cores and for parallel jobs; 0 keeps torch's default)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub.add_parser("list", help="list scenarios and strategies with their defaults")
    return p


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
    from strategies import TrainConfig
    from strategies.config import to_public_dict

    print("\nTraining (train.*): " + ", ".join(f"{k}={v}" for k, v in
                                                to_public_dict(TrainConfig()).items()))
    return 0


def prepare_run(args: argparse.Namespace):
    """Validate everything; return (experiments, out, data_root, device)."""
    import torch

    from .runner import Experiment, resolve

    preset = load_preset(args.config) if args.config else {}
    scenario = args.scenario or preset.get("scenario") or "split-digits"
    if scenario not in SCENARIOS:
        raise BenchmarkError(
            f"unknown scenario '{scenario}'; valid scenarios: {', '.join(sorted(SCENARIOS))}"
        )
    strategies_txt = args.strategies or preset.get("strategies") or "naive,hat"
    if isinstance(strategies_txt, list):
        strategies_txt = ",".join(map(str, strategies_txt))
    strategies = parse_names(strategies_txt, STRATEGIES, "strategy")
    seeds_txt = args.seeds if args.seeds is not None else preset.get("seeds", "0")
    if isinstance(seeds_txt, list):
        seeds_txt = ",".join(map(str, seeds_txt))
    seeds = parse_seeds(seeds_txt)
    preset_set = preset.get("set") or {}
    if not isinstance(preset_set, dict):
        raise BenchmarkError("--config: 'set' must be a mapping of section.key: value")
    overrides = parse_set([f"{k}={v}" for k, v in preset_set.items()] + list(args.set))
    epochs = args.epochs if args.epochs is not None else preset.get("epochs")
    if epochs is not None:
        overrides.setdefault("train", {})["epochs"] = epochs
    device = args.device or preset.get("device") or "cpu"
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise BenchmarkError(f"invalid --device '{device}': use cpu or cuda")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise BenchmarkError("--device cuda given but no CUDA GPU is available; use --device cpu")
    out = Path(args.out or preset.get("out") or "results")
    data_root = Path(args.data_root or preset.get("data_root") or "data")
    spec = get_scenario(scenario)
    experiments = [Experiment(scenario, s, seed, overrides) for seed in seeds for s in strategies]
    # validate every override for every strategy (ConfigError → exit 2)
    for s in strategies:
        resolve(Experiment(scenario, s, seeds[0], overrides), spec.valid_fraction, spec.embedded,
                spec.network)
    # --set sections of strategies not run are user input too: validate them as well
    for section in sorted(set(overrides) & set(STRATEGIES) - set(strategies)):
        STRATEGIES[section].config(overrides[section])
    unused = set(overrides) - {"train", "model"} - set(strategies)
    if unused - set(STRATEGIES):
        bad = sorted(unused - set(STRATEGIES))[0]
        raise BenchmarkError(
            f"unknown --set section '{bad}'; use train.*, model.* or a strategy name "
            f"({', '.join(sorted(STRATEGIES))})"
        )
    if args.threads < 0:
        raise BenchmarkError(f"invalid --threads {args.threads}: give 0 (torch default) or more")
    check_writable(out)
    spec.check_available(data_root, download=args.download)
    return experiments, out, data_root, device


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "list":
            return cmd_list()
        experiments, out, data_root, device = prepare_run(args)
    except (BenchmarkError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    from .runner import run_all
    from .tracking import tracker_factory

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    factory = tracker_factory(args.wandb, project=args.wandb_project, entity=args.wandb_entity,
                              out=out)
    try:
        run_all(experiments, out, data_root=data_root, device=device,
                progress=not args.no_progress, tracker_factory=factory)
    except KeyboardInterrupt:
        print("interrupted: finished runs have records; rerun the command to resume",
              file=sys.stderr)
        return 130
    return 0
