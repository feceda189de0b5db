"""Hyperparameter selection on validation data: ``python -m benchmark tune``.

Every strategy declares its search space next to its defaults (``StrategySpec.space``: the
reference code's grids where it has one). ``tune`` runs strategies × seeds × their spaces
through the usual grid machinery (each point's record written atomically, so a killed tune
resumes), then selects, per strategy, the point with the best **validation** criterion and
writes it as a preset for ``run --config`` (``configs/tuned/<scenario>.yaml``).

Protocol (docs/tuning.md):

- criterion of a point: the mean over tuning seeds of ``reports.metrics.validation_criterion``
  (the mean validation accuracy over all tasks after the last task), each task's validation
  data being the split the training recipe held out of that task's training data;
- the largest criterion wins; points within ``TIE`` of the best are ties, resolved in favour of
  the strategy's default (the paper's value) when it is among them, else the first tied point
  in the space's order (keys sorted, values ascending);
- only the records' ``valid_accuracy`` reaches :func:`select`: test accuracy is never read;
- strategies without a search space (naive, sgd-f, pnn, joint) have nothing to select and are
  not run; they stay in the preset's strategy list;
- a chosen value at an end of a searched numeric range (of at least three values) is said in
  one warning line (:func:`edge_warnings`), and the report marks it (the records' selection
  holds the space and the choice).
"""

from __future__ import annotations

import itertools
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reports.io import write_text
from reports.metrics import agnostic_final_accuracy, validation_criterion
from reports.schema import protocol_of
from reports.tables.model import on_edge
from strategies import STRATEGIES
from strategies.common.config import to_public_dict
from strategies.registry import INFERENCE

from . import __version__
from . import grid as gridlib
from .errors import BenchmarkError
from .experiment import InferenceConfig
from .records import now_iso

#: points whose criterion is within TIE of the best are ties
TIE = 1e-9
CRITERION = ("mean validation accuracy over all tasks after the last task, averaged over the "
             "tuning seeds (each task's held-out validation split; test data never read)")
#: each protocol's criterion (``reports.schema.PROTOCOLS``): its text, the record field it
#: reads and its formula (the mean of that matrix's last row: every task after the last one)
CRITERIA: dict[str, tuple[str, str, Callable[[Any], float]]] = {
    "task": (CRITERION, "valid_accuracy", validation_criterion),
    "class": ("mean class-incremental validation accuracy (the prediction over every class "
              "seen, no task label) over all tasks after the last task, averaged over the "
              "tuning seeds (each task's held-out validation split; test data never read)",
              "valid_agnostic_accuracy", agnostic_final_accuracy),
}


def validation_matrix(rec: Mapping[str, Any]) -> Any:
    """The validation matrix ``tune`` selects on in ``rec``'s protocol (its ``CRITERIA``)."""
    return rec.get(CRITERIA[protocol_of(rec)][1])


def record_criterion(rec: Mapping[str, Any]) -> float | None:
    """``rec``'s value of its protocol's criterion; None without validation data."""
    valid = validation_matrix(rec)
    return None if valid is None else CRITERIA[protocol_of(rec)][2](valid)


def default_space(strategy: str) -> dict[str, list[str]]:
    """``strategy``'s search space as a grid (``section.key`` -> canonical values)."""
    spec = STRATEGIES[strategy]
    return gridlib.validate_grid(
        {f"{strategy}.{key}": list(values) for key, values in spec.space.items()})


def tunable(strategies: Sequence[str], protocol: str = "task") -> list[str]:
    """The strategies that have something to select (in the class protocol, a strategy that
    predicts by task inference always has: its task score)."""
    return [s for s in strategies if STRATEGIES[s].space or infers_tasks(s, protocol)]


def infers_tasks(strategy: str, protocol: str) -> bool:
    """Whether ``strategy``'s runs in ``protocol`` predict by task inference."""
    return protocol == "class" and STRATEGIES[strategy].class_protocol == INFERENCE


#: the task scores ``<strategy>.task_score`` takes (``InferenceConfig``), default first
TASK_SCORES = typing.get_args(typing.get_type_hints(InferenceConfig)["task_score"])


def with_task_scores(strategy: str, space: Mapping[str, Sequence[str]],
                     records: Mapping[str, Sequence[Mapping[str, Any]]]
                     ) -> tuple[dict[str, list[str]], dict[str, list]]:
    """The space and validation matrices of a strategy that predicts by task inference: each
    of its runs measured every task score (the score changes no training), so
    ``<strategy>.task_score`` joins the space without more runs, every run point read under
    every score (its record's ``task_inference.scores.<score>.valid_agnostic_accuracy``).
    ``records`` maps each run point's tag to its seeds' records."""
    key = f"{strategy}.task_score"
    extended = {**{k: list(v) for k, v in space.items()}, key: list(TASK_SCORES)}
    valid: dict[str, list] = {}
    for point in space_points(space):
        recs = records.get(gridlib.point_tag(point), [])
        for score in TASK_SCORES:
            valid[gridlib.point_tag({**point, key: score})] = [
                (r.get("task_inference") or {}).get("scores", {}).get(score, {}).get(
                    "valid_agnostic_accuracy") for r in recs]
    return extended, valid


@dataclass
class Selection:
    """The outcome for one strategy: every point's criterion and the chosen point."""

    strategy: str
    space: dict[str, list[str]]
    #: (point, criterion) in the space's order; a point maps ``section.key`` -> canonical value
    points: list[tuple[dict[str, str], float]]
    chosen: dict[str, str]
    value: float


def space_points(space: Mapping[str, Sequence[str]]) -> list[dict[str, str]]:
    """Every point of ``space``: keys sorted, each key's values in the given order."""
    keys = sorted(space)
    return [dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(space[k] for k in keys))]


def _default_point(strategy: str, keys: Sequence[str]) -> dict[str, str]:
    """The strategy's defaults (its task score's too) for ``keys``."""
    defaults = {**STRATEGIES[strategy].defaults(), **to_public_dict(InferenceConfig())}
    return {k: gridlib.format_value(defaults[k.split(".", 1)[1]]) for k in keys}


def select(strategy: str, space: Mapping[str, Sequence[str]],
           valid: Mapping[str, Sequence[Sequence[Sequence[float]]]],
           protocol: str = "task") -> Selection:
    """Choose ``strategy``'s point from validation accuracy matrices only (``protocol``'s:
    ``CRITERIA``).

    ``valid`` maps each point's tag (``gridlib.point_tag``) to its seeds' validation matrices.
    Raises BenchmarkError when a point has no matrix (e.g. ``train.recipe=fixed``)."""
    scored: list[tuple[dict[str, str], float]] = []
    for point in space_points(space):
        tag = gridlib.point_tag(point)
        mats = valid.get(tag) or []
        if not mats or any(m is None for m in mats):
            raise BenchmarkError(
                f"{strategy} point {tag} has no validation accuracy: tuning needs the paper's "
                "recipe (train.recipe=paper with train.valid_fraction > 0) and records written "
                "by this version of the suite; use a fresh --out"
            )
        criterion = CRITERIA[protocol][2]
        scored.append((point, sum(criterion(m) for m in mats) / len(mats)))
    best = max(v for _, v in scored)
    tied = [p for p, v in scored if v >= best - TIE]
    default = _default_point(strategy, sorted(space))
    chosen = default if default in tied else tied[0]
    value = next(v for p, v in scored if p == chosen)
    return Selection(strategy, {k: list(space[k]) for k in sorted(space)}, scored, chosen,
                     value)


def _typed(text: str) -> Any:
    """Canonical parameter text as a YAML scalar (numbers as numbers)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text, text)


def selection_block(sel: Selection, *, seeds: Sequence[int], epochs: int | None,
                    train: Mapping[str, Any], protocol: str = "task") -> dict[str, Any]:
    """What a preset (and every record run from it) says about one strategy's selection."""
    return {
        "criterion": CRITERIA[protocol][0],
        "seeds": list(seeds),
        "epochs": epochs,
        "train": dict(train),
        "suite": __version__,
        "space": {k: [_typed(v) for v in vals] for k, vals in sel.space.items()},
        "points": [{"params": {k: _typed(v) for k, v in p.items()}, "value": round(v, 6)}
                   for p, v in sel.points],
        "chosen": {k: _typed(v) for k, v in sel.chosen.items()},
        "value": round(sel.value, 6),
    }


def preset(scenario: str, strategies: Sequence[str], selections: Sequence[Selection], *,
           seeds: Sequence[int], epochs: int | None, fixed: Mapping[str, Mapping[str, Any]],
           command: str, run_seeds: Sequence[int] = (0, 1, 2),
           protocol: str = "task") -> dict[str, Any]:
    """The preset ``run --config`` reads: the chosen values (and the tuning's own fixed
    settings, ``scenario.protocol`` included) under ``set``, and the whole selection under
    ``selection``; selected for ``scenario`` in ``protocol``."""
    values: dict[str, Any] = {
        f"{sec}.{k}": _typed(v if isinstance(v, str) else gridlib.format_value(v))
        for sec, kv in fixed.items() for k, v in kv.items()
        if (sec, k) != ("train", "epochs")  # the preset's own ``epochs``
    }
    for sel in selections:
        values.update({k: _typed(v) for k, v in sel.chosen.items()})
    out: dict[str, Any] = {
        "description": (f"{scenario}{'' if protocol == 'task' else f' ({protocol}-incremental)'}"
                        f": every strategy's hyperparameters selected on validation data by "
                        f"`{command}`; regenerate with the same command"),
        "scenario": scenario,
        "strategies": list(strategies),
        "seeds": list(run_seeds),
    }
    if epochs is not None:
        out["epochs"] = epochs
    out["set"] = dict(sorted(values.items()))
    train = {k: v for k, v in fixed.get("train", {}).items() if k != "epochs"}
    out["selection"] = {
        "created": now_iso(),
        "command": command,
        "strategies": {s.strategy: selection_block(s, seeds=seeds, epochs=epochs, train=train,
                                                   protocol=protocol)
                       for s in selections},
    }
    return out


def write_preset(path: Path, data: Mapping[str, Any]) -> Path:
    """Write the preset atomically (YAML, a header saying where it came from)."""
    header = ("# Hyperparameters selected on validation data (python -m benchmark tune).\n"
              "# Regenerate with the command under selection.command; do not edit by hand.\n")
    return write_text(path, header + yaml.safe_dump(dict(data), sort_keys=False,
                                                    allow_unicode=True, width=100,
                                                    default_flow_style=None))


def criterion_table(sel: Selection) -> str:
    """A plain-text table of every point's criterion, the chosen one marked."""
    lines = [f"{sel.strategy}: " + ", ".join(sel.space) + " -> criterion"]
    for point, value in sel.points:
        mark = "  <- chosen" if point == sel.chosen else ""
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in point.items())
                     + f": {value:.4f}{mark}")
    return "\n".join(lines)


def edge_warnings(sel: Selection) -> list[str]:
    """One warning line per searched numeric key whose chosen value is the smallest or the
    largest of its range (at least three values: ``reports.tables.model.on_edge``): the
    optimum may lie outside the space."""
    return [f"warning: {sel.strategy} selected {e.text()} (its searched range): the optimum "
            f"may lie outside it; widen the range with --grid {e.key}=<values> to know"
            for e in on_edge(sel.space, sel.chosen)]
