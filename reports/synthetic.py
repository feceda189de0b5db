"""Synthetic, schema-valid run records with known accuracy matrices (for tests, benchmarks and
trying the report without training anything). Deterministic: the same arguments give the same
records.
"""

from __future__ import annotations

import itertools
import json
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import VALIDATION_CRITERION

__all__ = [
    "FORGET_RATE",
    "NO_AGNOSTIC",
    "NO_CLASS",
    "REHEARSAL",
    "SPACES",
    "STRATEGY_PARAMS",
    "TASK_INFERENCE",
    "TASK_SCORES",
    "make_accuracy",
    "make_agnostic",
    "make_agnostic_random",
    "make_class_record",
    "make_costs",
    "make_hat_stats",
    "make_task_inference",
    "make_record",
    "make_selection",
    "record_filename",
    "synthetic_records",
    "write_records",
]

#: accuracy lost per later task, per strategy (others: 0.05)
FORGET_RATE = {"joint": 0.0, "hat": 0.004, "ewc": 0.03, "sgd": 0.1}
#: strategies without a task-agnostic prediction: their ``agnostic_accuracy`` is null
NO_AGNOSTIC = ("hat", "packnet", "pnn", "pathnet", "single")
#: strategies without a class-incremental prediction (the others, hat among them through task
#: inference, have class-incremental records)
NO_CLASS = ("single",)
#: strategies that predict by task inference in the class protocol: their class records hold
#: ``task_prediction_accuracy`` and ``task_inference``
TASK_INFERENCE = ("hat", "packnet", "pnn", "pathnet")
#: the task scores of task inference (every one is in every task-inference record)
TASK_SCORES = ("max_softmax", "max_logit", "energy", "neg_entropy")
#: how well each synthetic score infers the task: task-prediction accuracy lost per later task
_SCORE_RATE = {"max_softmax": 0.08, "max_logit": 0.12, "energy": 0.1, "neg_entropy": 0.09}
#: rehearsal memory size per strategy that keeps one (others: ``memory_samples`` null)
REHEARSAL = {"replay": 200, "agem": 50, "der": 200, "icarl": 200, "gdumb": 200, "er-ace": 200}
#: the synthetic records' own hyperparameters (others: none); also the selections' choice
STRATEGY_PARAMS: dict[str, dict[str, Any]] = {
    "hat": {"smax": 400.0, "c": 0.75},
    "ewc": {"lambda": 10000.0},
    "lwf": {"alpha": 1.0, "temperature": 2.0},
}
#: search spaces of the synthetic selection blocks (``<strategy>.<param>`` -> values)
SPACES: dict[str, dict[str, list[float]]] = {
    "hat": {"hat.smax": [25, 50, 100, 200, 400, 800],
            "hat.c": [0.1, 0.25, 0.5, 0.75, 1, 1.5, 2.5, 4]},
    "ewc": {"ewc.lambda": [1, 10, 100, 1000, 5000, 10000, 100000, 1000000]},
    "lwf": {"lwf.alpha": [0.1, 0.5, 1, 2, 4, 8, 10], "lwf.temperature": [0.5, 1, 2, 4]},
}


def _rng(*key: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def make_accuracy(strategy: str, n_tasks: int, seed: int, scenario: str = "") -> list[list[float]]:
    """T×T accuracies: task ``tau`` is learned to about 0.9-0.97 and loses
    ``FORGET_RATE[strategy]`` per later task (plus small seed noise); entries above the diagonal
    (tasks not trained yet) sit near chance (0.5). ``single`` (row t: task t trained alone)
    is near chance off the diagonal."""
    rng = _rng(scenario, strategy, n_tasks, seed)
    rate = FORGET_RATE.get(strategy, 0.05)
    base = 0.97 - 0.01 * np.arange(n_tasks) - (0.0 if strategy == "joint" else 0.01)
    a = np.empty((n_tasks, n_tasks))
    for t in range(n_tasks):
        for tau in range(n_tasks):
            if tau <= t and (strategy != "single" or tau == t):
                v = base[tau] - rate * (t - tau) + rng.normal(0.0, 0.005)
            else:
                v = 0.5 + rng.normal(0.0, 0.02)
            a[t, tau] = round(float(np.clip(v, 0.0, 1.0)), 6)
    return a.tolist()


def make_costs(strategy: str, n_tasks: int, seed: int, scenario: str = "") -> dict[str, Any]:
    """The optional per-run cost fields (docs/record-schema.md), deterministic per arguments:
    ``seconds``, ``peak_memory_mb`` and ``state_mb`` per task (a strategy-dependent level,
    plus seed noise for the first two),
    ``memory_samples`` (null unless the strategy is in :data:`REHEARSAL`, then filling up to
    its size) and ``agnostic_accuracy`` (null for :data:`NO_AGNOSTIC`, else row t holding
    t+1 accuracies, lower for older tasks)."""
    rng = _rng("costs", scenario, strategy, n_tasks, seed)
    level = 1 + zlib.crc32(strategy.encode()) % 7
    seconds = [round(0.2 * level + abs(rng.normal(0.0, 0.02)), 6) for _ in range(n_tasks)]
    peak = [round(100.0 + 15.0 * level + 2.0 * t + rng.normal(0.0, 1.0), 3)
            for t in range(n_tasks)]
    state = [round(0.5 * level + 0.1 * t, 4) for t in range(n_tasks)]
    size = REHEARSAL.get(strategy)
    held = None if size is None else [min(size, 60 * (t + 1)) for t in range(n_tasks)]
    agnostic = None
    if strategy not in NO_AGNOSTIC:
        agnostic = [[round(float(np.clip(0.9 - 0.1 * (t - u) + rng.normal(0.0, 0.01), 0, 1)), 6)
                     for u in range(t + 1)] for t in range(n_tasks)]
    return {"seconds": seconds, "peak_memory_mb": peak, "state_mb": state,
            "memory_samples": held, "agnostic_accuracy": agnostic}


def make_hat_stats(n_tasks: int, seed: int, layers: Sequence[str] = ("c1", "c2", "fc1")) -> dict:
    """HAT mask statistics in the record's ``hat`` format."""
    rng = _rng("hat-stats", n_tasks, seed)
    used = np.clip(0.3 + 0.05 * rng.standard_normal((len(layers), n_tasks)), 0, 1)
    overlap = np.clip(
        np.linspace(0.0, 0.8, n_tasks)[None, :]
        + 0.02 * rng.standard_normal((len(layers), n_tasks)),
        0,
        1,
    )
    overlap[:, 0] = 0.0
    return {
        "layers": list(layers),
        "tasks": list(range(n_tasks)),
        "used": np.round(used, 6).tolist(),
        "overlap": np.round(overlap, 6).tolist(),
        "weights_kept": np.round(np.clip(used.mean(0) ** 2, 0, 1), 6).tolist(),
    }


def make_selection(
    scenario: str, strategy: str, space: Mapping[str, Sequence[Any]] | None = None,
    chosen: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A selection block over ``space`` (default :data:`SPACES`) whose criterion peaks at
    ``chosen`` (default: the point nearest :data:`STRATEGY_PARAMS`), falling with the squared
    log-distance from it."""
    space = {k: list(v) for k, v in (space or SPACES[strategy]).items()}
    if chosen is None:
        own = STRATEGY_PARAMS.get(strategy, {})
        chosen = {k: min(v, key=lambda x, k=k: abs(math.log(x / own.get(k.split(".", 1)[1], x))))
                  for k, v in space.items()}
    rng = _rng("selection", scenario, strategy)
    points = []
    for combo in itertools.product(*space.values()):
        params = dict(zip(space, combo, strict=True))
        d = sum(math.log2(params[k] / chosen[k]) ** 2 for k in space)
        drop = 0.0 if d == 0 else 0.004 * d + abs(rng.normal(0.0, 0.003)) + 1e-4
        points.append({"params": params, "value": round(max(0.3, 0.95 - drop), 6)})
    return {
        "preset": f"configs/tuned/{scenario}.yaml",
        "criterion": f"{VALIDATION_CRITERION} (mean over seeds)",
        "seeds": [0, 1],
        "epochs": 20,
        "suite": "0.1.0",
        "space": space,
        "points": points,
        "chosen": dict(chosen),
    }


def make_agnostic(strategy: str, n_tasks: int, seed: int, scenario: str = ""
                  ) -> list[list[float]]:
    """Class-IL accuracies as T rows, row t of t+1 entries: task u learned to about 0.9
    (joint) or 0.85, falling by ``2 × FORGET_RATE[strategy]`` per later task (Class-IL forgets
    more than Task-IL), plus seed noise."""
    rng = _rng("agnostic", scenario, strategy, n_tasks, seed)
    rate = 2 * FORGET_RATE.get(strategy, 0.05)
    top = 0.9 if strategy == "joint" else 0.85
    return [[round(float(np.clip(top - rate * (t - u) + rng.normal(0.0, 0.005), 0.0, 1.0)), 6)
             for u in range(t + 1)] for t in range(n_tasks)]


def make_agnostic_random(n_tasks: int, classes_per_task: int = 2) -> list[list[float]]:
    """The stratified random classifier's Class-IL accuracy with balanced classes: after task
    t, every one of the ``classes_per_task × (t+1)`` classes seen is equally likely, so on any
    task u <= t it is right with probability 1 / (classes_per_task × (t+1))."""
    return [[1.0 / (classes_per_task * (t + 1))] * (t + 1) for t in range(n_tasks)]


def make_task_inference(strategy: str, n_tasks: int, seed: int, scenario: str = "",
                        accuracy: Sequence[Sequence[float]] | None = None,
                        score: str = "max_softmax", valid: bool = True) -> dict[str, Any]:
    """A record's ``task_inference`` (docs/record-schema.md): ``score`` and, per score of
    :data:`TASK_SCORES`, triangular ``task_prediction_accuracy`` (about 0.95 on the task just
    learned, falling per later task by a score-dependent rate, plus seed noise), the Class-IL
    ``agnostic_accuracy`` (task prediction times the within-task accuracy of ``accuracy``,
    default :func:`make_accuracy`), its validation twin (null unless ``valid``) and ``auroc``
    (T numbers, about 0.75-0.9)."""
    rng = _rng("task-inference", scenario, strategy, n_tasks, seed)
    acc = accuracy if accuracy is not None else make_accuracy(strategy, n_tasks, seed, scenario)

    def tri(rate: float, within: Sequence[Sequence[float]] | None) -> list[list[float]]:
        return [[round(float(np.clip((0.95 - rate * (t - u) + rng.normal(0.0, 0.01))
                                     * (1.0 if within is None else within[t][u]), 0, 1)), 6)
                 for u in range(t + 1)] for t in range(n_tasks)]

    scores = {}
    for sc in TASK_SCORES:
        rate = _SCORE_RATE[sc]
        scores[sc] = {
            "agnostic_accuracy": tri(rate, acc),
            "valid_agnostic_accuracy": tri(rate, acc) if valid else None,
            "task_prediction_accuracy": tri(rate, None),
            "auroc": [round(float(np.clip(0.9 - rate + rng.normal(0.0, 0.02), 0, 1)), 6)
                      for _ in range(n_tasks)],
        }
    return {"score": score, "scores": scores}


def make_class_record(
    scenario: str,
    strategy: str,
    seed: int,
    n_tasks: int,
    *,
    agnostic_accuracy: Sequence[Sequence[float]] | None = None,
    agnostic_random_accuracy: Sequence[Sequence[float]] | None = None,
    valid_agnostic_accuracy: Sequence[Sequence[float]] | None = None,
    params: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    task_score: str = "max_softmax",
    task_inference: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """A class-incremental record (``params.scenario.protocol = "class"``; docs/record-schema.md):
    :func:`make_record` (``kwargs`` go there; ``accuracy`` is Task-IL) with the Class-IL
    matrix ``agnostic_accuracy`` (default :func:`make_agnostic`), the chance level
    ``agnostic_random_accuracy`` (default :func:`make_agnostic_random`) and
    ``valid_agnostic_accuracy`` (default: null, as ``valid_accuracy``). Raises ValueError for
    a strategy of :data:`NO_CLASS` (no prediction over every class seen).

    A strategy of :data:`TASK_INFERENCE` (with ``task_inference``, the default) also gets
    ``task_inference`` (:func:`make_task_inference`, headline score ``task_score``, also
    ``params.<strategy>.task_score``) and ``task_prediction_accuracy``; its
    ``agnostic_accuracy`` and ``valid_agnostic_accuracy`` default to the headline score's,
    as a run writes them. Without ``task_inference``: a record written before those fields
    existed."""
    if strategy in NO_CLASS:
        raise ValueError(f"{strategy} has no class-incremental records (no prediction over "
                         "every class seen)")
    params = (dict(params) if params is not None
              else {"train": {"lr": 0.05, "clipgrad": 10000.0}, strategy: {}})
    params["scenario"] = {**params.get("scenario", {}), "protocol": "class"}
    kwargs.setdefault("accuracy", make_accuracy(strategy, n_tasks, seed, f"{scenario}/class"))
    inference: dict[str, Any] = {}
    if strategy in TASK_INFERENCE and task_inference:
        params[strategy] = {**params.get(strategy, {}), "task_score": task_score}
        ti = make_task_inference(strategy, n_tasks, seed, scenario, kwargs["accuracy"],
                                 task_score)
        head = ti["scores"][task_score]
        agnostic_accuracy = (head["agnostic_accuracy"] if agnostic_accuracy is None
                             else agnostic_accuracy)
        valid_agnostic_accuracy = (head["valid_agnostic_accuracy"]
                                   if valid_agnostic_accuracy is None
                                   else valid_agnostic_accuracy)
        inference = {"task_prediction_accuracy": head["task_prediction_accuracy"],
                     "task_inference": ti}
    tri = {
        "agnostic_accuracy": (make_agnostic(strategy, n_tasks, seed, scenario)
                              if agnostic_accuracy is None else agnostic_accuracy),
        "agnostic_random_accuracy": (make_agnostic_random(n_tasks)
                                     if agnostic_random_accuracy is None
                                     else agnostic_random_accuracy),
        "valid_agnostic_accuracy": valid_agnostic_accuracy,
    }
    fields = {k: None if v is None else [list(map(float, r)) for r in v] for k, v in tri.items()}
    return make_record(scenario, strategy, seed, n_tasks, params=params,
                       extra={**(dict(extra) if extra is not None else {}), **fields,
                              **inference}, **kwargs)


def make_record(
    scenario: str,
    strategy: str,
    seed: int,
    n_tasks: int,
    *,
    accuracy: Sequence[Sequence[float]] | None = None,
    random_accuracy: Sequence[float] | None = None,
    tag: str = "",
    params: Mapping[str, Any] | None = None,
    hat: Mapping[str, Any] | None = None,
    valid_accuracy: Sequence[Sequence[float]] | None = None,
    selection: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A complete schema-2 run record (docs/record-schema.md); ``valid_accuracy`` and
    ``selection`` null unless given; ``extra`` sets more fields (e.g. :func:`make_costs`'s;
    without them the record is one written before those fields existed)."""
    acc = (
        [list(map(float, r)) for r in accuracy]
        if accuracy is not None
        else make_accuracy(strategy, n_tasks, seed, scenario)
    )
    ra = list(random_accuracy) if random_accuracy is not None else [0.5] * n_tasks
    return {
        "schema": 2,
        "scenario": scenario,
        "strategy": strategy,
        "seed": seed,
        "tag": tag,
        "params": (dict(params) if params is not None
                   else {"train": {"lr": 0.05, "clipgrad": 10000.0}, strategy: {}}),
        "task_names": [f"task{i}" for i in range(n_tasks)],
        "accuracy": acc,
        "valid_accuracy": ([list(map(float, r)) for r in valid_accuracy]
                           if valid_accuracy is not None else None),
        "random_accuracy": ra,
        "epochs": [1] * n_tasks,
        "seconds": [0.1] * n_tasks,
        "history": [
            [{"epoch": 1, "train_loss": 0.1, "train_acc": 0.9, "valid_loss": None, "lr": 0.05}]
            for _ in range(n_tasks)
        ],
        "hat": dict(hat) if hat is not None else None,
        "selection": dict(selection) if selection is not None else None,
        "versions": {"python": "3.11", "torch": "n/a", "avalanche": "n/a", "suite": "0.1.0"},
        "device": "cpu",
        "created": "2024-01-01T00:00:00Z",
        **(dict(extra) if extra is not None else {}),
    }


def synthetic_records(
    scenarios: Mapping[str, int] | None = None,
    strategies: Iterable[str] = ("hat", "ewc", "sgd", "joint"),
    seeds: Iterable[int] = (0, 1, 2),
    *,
    grid: tuple[Sequence[float], Sequence[float]] | None = None,
    hat_stats: bool = False,
    selected: Iterable[str] = ("hat", "ewc", "lwf"),
    costs: bool = False,
    protocol: str = "task",
) -> list[dict[str, Any]]:
    """Records for every scenario (name -> T), strategy and seed; with ``grid = (smaxs, cs)``
    also tagged HAT grid points; with ``hat_stats`` HAT records carry mask statistics. Every
    record has a ``valid_accuracy``; untagged records of the ``selected`` strategies (those
    with a space in :data:`SPACES`) carry a selection block (:func:`make_selection`). With
    ``costs`` untagged records carry :func:`make_costs`'s fields (else they have none: older
    records). With ``protocol="class"`` the untagged records are class-incremental
    (:func:`make_class_record`, with a ``valid_agnostic_accuracy``; those of
    :data:`TASK_INFERENCE` with ``task_inference``), strategies of :data:`NO_CLASS` are
    skipped and ``grid``/``hat_stats`` give nothing."""
    scenarios = scenarios if scenarios is not None else {"syn-3": 3, "syn-5": 5}
    seeds, strategies = list(seeds), list(strategies)
    selected = set(selected) & set(SPACES)
    if protocol == "class":
        return [_class_record(sc, n, st, sd, costs) for sc, n in scenarios.items()
                for st in strategies if st not in NO_CLASS for sd in seeds]
    if protocol != "task":
        raise ValueError(f"protocol must be task or class, got {protocol!r}")
    out = []
    for sc, n in scenarios.items():
        for st in strategies:
            sel = make_selection(sc, st) if st in selected else None
            for sd in seeds:
                params = {"train": {"lr": 0.05, "clipgrad": 10000.0},
                          st: dict(STRATEGY_PARAMS.get(st, {}))}
                hat = make_hat_stats(n, sd) if st == "hat" and hat_stats else None
                valid = make_accuracy(st, n, sd, f"{sc}/valid")
                extra = make_costs(st, n, sd, sc) if costs else None
                out.append(make_record(sc, st, sd, n, params=params, hat=hat,
                                       valid_accuracy=valid, selection=sel, extra=extra))
        if grid is not None:
            for smax in grid[0]:
                for c in grid[1]:
                    tag = f"hat.c={c:g},hat.smax={smax:g}"
                    for sd in seeds:
                        acc = make_accuracy("hat", n, sd, f"{sc}/{tag}")
                        out.append(
                            make_record(
                                sc,
                                "hat",
                                sd,
                                n,
                                accuracy=acc,
                                tag=tag,
                                params={"hat": {"smax": smax, "c": c}},
                                valid_accuracy=make_accuracy("hat", n, sd, f"{sc}/{tag}/valid"),
                            )
                        )
    return out


def _class_record(sc: str, n: int, st: str, sd: int, costs: bool) -> dict[str, Any]:
    extra = make_costs(st, n, sd, sc) if costs else {}
    extra.pop("agnostic_accuracy", None)
    return make_class_record(
        sc, st, sd, n, params={"train": {"lr": 0.05, "clipgrad": 10000.0},
                               st: dict(STRATEGY_PARAMS.get(st, {}))},
        valid_accuracy=make_accuracy(st, n, sd, f"{sc}/class/valid"),
        valid_agnostic_accuracy=(None if st in TASK_INFERENCE
                                 else make_agnostic(st, n, sd, f"{sc}/valid")), extra=extra)


def record_filename(rec: Mapping[str, Any]) -> str:
    """``<scenario>__<strategy>__s<seed>[__<tag>].json`` as the runner names records."""
    tag = f"__{rec['tag']}" if rec.get("tag") else ""
    return f"{rec['scenario']}__{rec['strategy']}__s{rec['seed']}{tag}.json"


def write_records(results: str | Path, records: Iterable[Mapping[str, Any]]) -> list[Path]:
    """Write records to ``<results>/runs/`` (created); returns the paths."""
    runs = Path(results) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    paths = []
    for rec in records:
        p = runs / record_filename(rec)
        p.write_text(json.dumps(rec), encoding="utf-8")
        paths.append(p)
    return paths
