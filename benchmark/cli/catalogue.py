"""What the command line knows before it imports the suite: the scenarios' and strategies'
names and the facts ``list`` prints, so that ``--help``, ``list`` and a mistyped name answer
without importing torch or Avalanche.

The facts are read from the live registries (``strategies.STRATEGIES``,
``benchmark.data.scenarios.SCENARIOS``) by :func:`describe_live`, and kept in
``benchmark/cli/_catalogue.py``, written by ``python scripts/write_catalogue.py`` (rerun it
after changing a strategy's or scenario's entry; a test fails while the file and the registries
differ). Once ``strategies`` is imported (e.g. a script that registered its own strategy, then
called ``benchmark.cli.main``), :func:`catalogue` reads the live registries instead.
"""

from __future__ import annotations

import os
import pprint
import sys
from pathlib import Path
from typing import Any

#: the written catalogue (beside this module)
GENERATED = Path(__file__).with_name("_catalogue.py")


def describe_live() -> dict[str, Any]:
    """The catalogue read from the live registries (imports the suite)."""
    from strategies import STRATEGIES, TrainConfig
    from strategies.common.config import to_public_dict

    from ..data.scenarios import describe_scenarios
    from ..grid import MAX_GRID_RUNS

    return {
        "scenarios": [
            {"name": row["name"], "n_tasks": row["n_tasks"], "network": row["network"],
             "embedded": bool(row["embedded"]), "description": row["description"]}
            for row in describe_scenarios()
        ],
        "strategies": [
            {"name": spec.name, "description": spec.description,
             "defaults": {k: str(v) for k, v in spec.defaults().items()},
             "clipgrad": f"{spec.clipgrad:g}",
             "space": {k: [f"{v:g}" for v in vals] for k, vals in spec.space.items()},
             "tune_by_default": bool(spec.tune_by_default)}
            for spec in STRATEGIES.values()
        ],
        "train": {k: str(v) for k, v in to_public_dict(TrainConfig()).items()},
        "max_grid_runs": MAX_GRID_RUNS,
    }


def catalogue() -> dict[str, Any]:
    """The live registries' catalogue once ``strategies`` is imported (or when the written
    one is missing), else the written one."""
    if "strategies.registry" not in sys.modules:
        try:
            from ._catalogue import CATALOGUE
        except ImportError:
            pass
        else:
            return CATALOGUE
    return describe_live()


def scenario_names() -> list[str]:
    return [row["name"] for row in catalogue()["scenarios"]]


def strategy_names() -> list[str]:
    return [row["name"] for row in catalogue()["strategies"]]


def render_list(cat: dict[str, Any]) -> str:
    """The text of ``python -m benchmark list``."""
    lines = ["Scenarios:"]
    for row in cat["scenarios"]:
        emb = "embedded" if row["embedded"] else "download"
        lines.append(f"  {row['name']:<16} {row['n_tasks']:>2} tasks  {row['network']:<8} "
                     f"{emb:<9} {row['description']}")
    lines += ["", "Strategies:"]
    for spec in cat["strategies"]:
        name = spec["name"]
        lines.append(f"  {name:<8} {spec['description']}")
        if spec["defaults"]:
            lines.append("           " + ", ".join(
                f"{name}.{k}={v}" for k, v in spec["defaults"].items()))
        lines.append(f"           train.clipgrad={spec['clipgrad']} (the reference's)")
        if spec["space"]:
            lines.append("           tune space: " + "; ".join(
                f"{name}.{k} in {{{', '.join(vals)}}}" for k, vals in spec["space"].items()))
    lines += ["", "Training (train.*): " + ", ".join(f"{k}={v}" for k, v in cat["train"].items())]
    return "\n".join(lines)


def generated_source(cat: dict[str, Any]) -> str:
    """The text of ``_catalogue.py`` holding ``cat``."""
    prefix = "CATALOGUE = "
    body = pprint.pformat(cat, width=96 - len(prefix), sort_dicts=False)
    return ('"""Written by ``python scripts/write_catalogue.py`` from the live registries: '
            "do not edit.\"\"\"\n\n"
            + prefix + body.replace("\n", "\n" + " " * len(prefix)) + "\n")


def main() -> int:
    """Write ``_catalogue.py`` from the live registries."""
    tmp = GENERATED.with_suffix(".tmp")
    tmp.write_text(generated_source(describe_live()), encoding="utf-8")
    os.replace(tmp, GENERATED)
    print(f"wrote {GENERATED}")
    return 0
