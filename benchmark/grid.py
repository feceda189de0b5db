"""Hyperparameter grids: ``--grid hat.smax=25,50,100 hat.c=0.1,0.75``.

A grid maps ``section.key`` (the sections of ``--set``: ``train``, ``model``, ``scenario``
or a strategy name) to a list of values. :func:`expand` turns strategies × seeds × grid into
experiments:

* ``train.*``, ``model.*`` and ``scenario.*`` keys apply to every strategy;
* a strategy's own keys (``hat.smax``) apply to that strategy only. A strategy with no grid
  key of its own (``naive`` or ``joint`` in a ``hat.*`` grid) runs once per seed, untagged:
  it has nothing to vary, and its untagged record is what the report compares every grid
  point with (``joint`` gives A_J of the forgetting ratio).
* every grid point gets a tag ``key=value,key=value`` (keys sorted, values in canonical text),
  e.g. ``hat.c=0.1,hat.smax=25``, so each point has its own record file.

Values are canonicalised with the type of the parameter they set (``25``, ``25.0`` and
``2.5e1`` for the float ``hat.smax`` all become ``25``), so a tag does not depend on how a
value was spelled, and two spellings of one value are refused as a duplicate.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any

from reports.schema import param_text
from strategies import STRATEGIES, TrainConfig
from strategies.common.config import from_overrides, public_key
from strategies.registry import INFERENCE

from .errors import BenchmarkError
from .experiment import INFERENCE_KEYS, Experiment, InferenceConfig, ScenarioConfig
from .networks import ModelConfig

#: grid/--set sections that apply to every strategy
SHARED_SECTIONS = ("train", "model", "scenario")
#: most runs a grid starts unless ``--max-runs`` allows more (a typo such as 299 values
#: where 2, 9, 9 were meant must not start tens of thousands of runs)
MAX_GRID_RUNS = 1000

Grid = dict[str, list[str]]  # "section.key" -> canonical values (given order)


def split_key(key: str) -> tuple[str, str]:
    section, dot, name = str(key).strip().partition(".")
    if not dot or not section or not name:
        raise BenchmarkError(
            f"malformed grid key '{key}': use section.key, e.g. hat.smax or train.lr"
        )
    return section.strip().lower(), name.strip()


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``section.key=v1,v2`` items → {"section.key": ["v1", "v2"]} (raw text values)."""
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = str(item).partition("=")
        if not sep or not values.strip():
            raise BenchmarkError(
                f"malformed --grid '{item}': use section.key=v1,v2,..., e.g. "
                "--grid hat.smax=25,50,100 hat.c=0.1,0.75"
            )
        section, name = split_key(key)
        full = f"{section}.{name}"
        if full in out:
            raise BenchmarkError(f"--grid gives '{full}' twice; give its values once")
        vals = [v.strip() for v in values.split(",")]
        if any(v == "" for v in vals):
            raise BenchmarkError(f"malformed --grid '{item}': empty value in the list")
        out[full] = vals
    return out


def grid_from_mapping(data: Any, where: str = "--config") -> dict[str, list[Any]]:
    """A preset's ``grid:`` mapping (key → list of values, or one value) → raw grid."""
    if not isinstance(data, Mapping):
        raise BenchmarkError(f"{where}: 'grid' must be a mapping of section.key: [values]")
    out: dict[str, list[Any]] = {}
    for key, values in data.items():
        section, name = split_key(key)
        full = f"{section}.{name}"
        if full in out:
            raise BenchmarkError(f"{where}: grid key '{full}' given twice")
        if isinstance(values, str):
            values = [v.strip() for v in values.split(",")]
        elif not isinstance(values, list):
            values = [values]
        if not values or any(v is None or v == "" or isinstance(v, dict | list) for v in values):
            raise BenchmarkError(
                f"{where}: grid '{full}' needs a non-empty list of plain values, e.g. "
                f"{full}: [1, 2]"
            )
        out[full] = list(values)
    return out


def _config_class(section: str, key: str = "") -> type:
    if key in INFERENCE_KEYS and section in STRATEGIES and (
            STRATEGIES[section].class_protocol == INFERENCE):
        return InferenceConfig  # (its key, in the strategy's section)
    if section == "train":
        return TrainConfig
    if section == "model":
        return ModelConfig
    if section == "scenario":
        return ScenarioConfig
    if section in STRATEGIES:
        return STRATEGIES[section].params
    raise BenchmarkError(
        f"unknown grid section '{section}'; use train.*, model.*, scenario.* or a strategy "
        f"name ({', '.join(sorted(STRATEGIES))})"
    )


def format_value(value: Any) -> str:
    """Canonical text of a typed parameter value (what tags and overrides hold): the report's
    ``param_text`` (so both read a tag alike), with ``none`` for None."""
    return "none" if value is None else param_text(value)


def canonical_value(section: str, key: str, value: Any) -> str:
    """Validate ``section.key=value`` with the parameter's type; return its canonical text.

    Raises ConfigError (unknown key, bad value) or BenchmarkError (unknown section)."""
    cls = _config_class(section, key)
    by_public = {public_key(f.name): f.name for f in fields(cls)}
    typed = from_overrides(cls, {key: value}, section)  # validates key, type and range
    return format_value(getattr(typed, by_public[key]))


def validate_grid(raw: Mapping[str, Sequence[Any]]) -> Grid:
    """Canonicalise every value of a raw grid; refuses duplicates and empty lists."""
    out: Grid = {}
    for full, values in raw.items():
        section, name = split_key(full)
        if not values:
            raise BenchmarkError(f"grid '{full}' has no values")
        canon = [canonical_value(section, name, v) for v in values]
        dup = [v for v, n in _counts(canon).items() if n > 1]
        if dup:
            raise BenchmarkError(
                f"grid '{full}' lists the value {dup[0]} more than once (after reading "
                "every value with the parameter's type)"
            )
        out[f"{section}.{name}"] = canon
    return out


def _counts(values: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts


def keys_for(strategy: str, grid: Mapping[str, Sequence[str]]) -> list[str]:
    """The grid keys that vary ``strategy``'s runs (sorted)."""
    return sorted(k for k in grid if k.split(".", 1)[0] in (*SHARED_SECTIONS, strategy))


def point_tag(point: Mapping[str, str]) -> str:
    """``{"hat.smax": "25", "hat.c": "0.1"}`` → ``"hat.c=0.1,hat.smax=25"``."""
    return ",".join(f"{k}={point[k]}" for k in sorted(point))


def points_for(strategy: str, grid: Mapping[str, Sequence[str]]) -> list[dict[str, str]]:
    """The grid points of ``strategy``: [{}] (one untagged run) when no key applies."""
    keys = keys_for(strategy, grid)
    return [dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(grid[k] for k in keys))]


def apply_point(overrides: Mapping[str, Mapping[str, Any]],
                point: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """``overrides`` with the point's values set (a new nested dict; the point wins)."""
    out = {section: dict(values) for section, values in overrides.items()}
    for full, value in point.items():
        section, name = full.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


def expand(scenario: str, strategies: Sequence[str], seeds: Sequence[int],
           overrides: Mapping[str, Mapping[str, Any]],
           grid: Mapping[str, Sequence[str]] | None = None) -> list:
    """strategies × seeds × grid points as experiments; seeds outermost (one scenario build
    per seed in a sequential run), then strategies, then grid points (keys sorted, values in
    the given order). Without a grid: exactly ``experiment.experiments_for``."""
    grid = grid or {}
    exps = []
    for seed in seeds:
        for s in strategies:
            for point in points_for(s, grid):
                exps.append(Experiment(scenario, s, seed, apply_point(overrides, point),
                                       point_tag(point)))
    return exps


def grid_size(strategies: Sequence[str], n_seeds: int,
              grid: Mapping[str, Sequence[str]]) -> int:
    """Number of experiments :func:`expand` produces."""
    return n_seeds * sum(_n_points(s, grid) for s in strategies)


def _n_points(strategy: str, grid: Mapping[str, Sequence[str]]) -> int:
    """``len(points_for(strategy, grid))``, without building the points."""
    return math.prod(len(grid[k]) for k in keys_for(strategy, grid))


def check_size(strategies: Sequence[str], n_seeds: int, grid: Mapping[str, Sequence[str]],
               max_runs: int | None = None) -> None:
    """:func:`check_total` of the runs of strategies × seeds × ``grid``, before any point is
    built."""
    n = grid_size(strategies, n_seeds, grid)
    per = ", ".join(f"{s} {_n_points(s, grid)}" for s in strategies)
    check_total(n, max_runs, f" ({per} per seed; {n_seeds} seed{'s' * (n_seeds != 1)})")


def check_total(n: int, max_runs: int | None = None, detail: str = "") -> None:
    """BenchmarkError when a grid of ``n`` runs is above ``max_runs`` (None:
    ``MAX_GRID_RUNS``), naming the count, the bound and ``--max-runs``."""
    bound = MAX_GRID_RUNS if max_runs is None else max_runs
    if n > bound:
        raise BenchmarkError(
            f"the grid gives {n} runs{detail}, more than {bound}"
            f"{' (the default bound)' if max_runs is None else ' (--max-runs)'}: give "
            f"--max-runs {n} to start them all, or fewer grid values")


__all__ = [
    "MAX_GRID_RUNS",
    "SHARED_SECTIONS",
    "apply_point",
    "canonical_value",
    "check_size",
    "check_total",
    "expand",
    "format_value",
    "grid_from_mapping",
    "grid_size",
    "keys_for",
    "parse_grid",
    "point_tag",
    "points_for",
    "validate_grid",
]
