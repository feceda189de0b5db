"""The shared behaviour of the rehearsal baselines (``replay``, ``agem``, ``der``, ``er-ace``,
``gdumb``; strategies/rehearsal/base.py): each trains on both embedded scenarios through the
runner above chance; its memory holds training samples only, within its budget and balance;
runs are deterministic under a seed; bad configuration values get one clear error; the
registry entries and search spaces; training on CUDA keeps the memory there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.data.scenarios import get_scenario
from benchmark.experiment import Experiment
from benchmark.records import validate_record
from benchmark.run import runner
from benchmark.run.runner import run_experiment
from strategies import (
    STRATEGIES,
    ConfigError,
    get_strategy,
)
from strategies.rehearsal.memory import ReservoirMemory
from strategies.training.recipe import split_indices
from tests.support.rehearsal import PLUGINS
from tests.support.trunks import (
    keep_subnormals,  # noqa: F401  (autouse fixture)
    plugin_of,
)

REHEARSAL = ("replay", "agem", "der", "er-ace", "gdumb")


SCENARIOS = ("split-digits", "permuted-digits")


# one torch thread (conftest's fixture): much faster for these tiny networks on shared cores
pytestmark = pytest.mark.usefixtures("one_thread")


def epochs(scenario: str, strategy: str) -> int:
    """2 epochs, but GDumb trains on its 200-sample memory alone, from scratch at every
    task: 4 steps an epoch for five tasks' worth of classes, so it gets more epochs (its
    epochs are cheap) to leave chance level within the test's budget."""
    if strategy == "gdumb":
        return 10 if scenario == "split-digits" else 25
    return 2


_runs: dict = {}


_scenarios: dict = {}


def scenario_data(name: str):
    if name not in _scenarios:
        _scenarios[name] = get_scenario(name).build(0, Path("data"))
    return _scenarios[name]


def run_with_strategy(scenario: str, strategy: str, seed: int = 0):
    """(record, trained strategy) of the runner's experiment, memoised."""
    key = (scenario, strategy, seed)
    if key not in _runs:
        built = []
        real = runner._make_strategy

        def keep(*args, **kwargs):
            built.append(real(*args, **kwargs))
            return built[-1]

        exp = Experiment(scenario, strategy, seed,
                         {"train": {"epochs": epochs(scenario, strategy)}})
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(runner, "_make_strategy", keep)
            rec = run_experiment(exp, scenario_data(scenario))
        _runs[key] = (rec, built[-1])
    return _runs[key]


def memory_tensors(plugin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    memory = plugin.memory
    if isinstance(memory, ReservoirMemory):
        return memory.x, memory.y, memory.t
    return memory.tensors


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("strategy", REHEARSAL)
def test_each_trains_on_both_embedded_scenarios_above_chance(strategy, scenario):
    rec, _ = run_with_strategy(scenario, strategy)
    validate_record(rec)
    acc = np.asarray(rec["accuracy"])
    n = len(rec["task_names"])
    assert acc.shape == (n, n) and np.isfinite(acc).all()
    chance = np.asarray(rec["random_accuracy"])
    for i in range(n):  # every task trained so far, after every task
        assert (acc[i, : i + 1] > chance[: i + 1]).all(), (i, acc[i], chance)
    assert acc[-1].mean() > chance.mean() + 0.1
    # the memory is recorded after every task, within its budget
    params = rec["params"][strategy]
    held = rec["memory_samples"]
    assert len(held) == n and all(h > 0 for h in held)
    if strategy == "agem":
        assert held == [params["patterns_per_experience"] * (t + 1) for t in range(n)]
    else:
        assert held == [params["mem_size"]] * n  # every task has >= 200 training samples
    assert rec["agnostic_accuracy"] is not None  # multi-head, shared trunk: heads concatenated


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("strategy", REHEARSAL)
def test_memories_hold_training_samples_only(strategy, scenario):
    """Every memory sample is a training-part sample of its own task (the recipe's
    ``split_indices``), with its label: never a validation or test sample."""
    _, trained = run_with_strategy(scenario, strategy)
    data = scenario_data(scenario)
    x, y, t = (v.cpu() for v in memory_tensors(plugin_of(trained, PLUGINS[strategy])))
    assert len(y) > 0
    for u, task in enumerate(data.tasks):
        train_idx, valid_idx = split_indices(len(task.train_y), data.valid_fraction, 0, u)
        rows = {(r.numpy().tobytes(), int(c)) for r, c in
                zip(task.train_x[train_idx], task.train_y[train_idx], strict=True)}
        valid_only = [i for i in valid_idx
                      if (task.train_x[i].numpy().tobytes(), int(task.train_y[i])) not in rows]
        assert valid_only  # the check can tell the two parts apart
        mine = (t == u).nonzero().squeeze(1)
        assert len(mine) > 0, f"task {u} has no sample in memory"
        for i in mine.tolist():
            assert (x[i].numpy().tobytes(), int(y[i])) in rows, (u, i)


@pytest.mark.parametrize("strategy", REHEARSAL)
def test_memory_sizes_and_balance_after_a_run(strategy):
    _, trained = run_with_strategy("split-digits", strategy)
    plugin = plugin_of(trained, PLUGINS[strategy])
    _, y, t = (v.cpu() for v in memory_tensors(plugin))
    by_task = torch.bincount(t, minlength=5).tolist()
    by_class = torch.bincount(t * 2 + y, minlength=10).tolist()
    if strategy == "replay":  # balanced over experiences
        assert by_task == [40] * 5
    elif strategy == "agem":  # a fixed number per experience
        assert by_task == [50] * 5
    elif strategy == "der":  # a reservoir: bounded, every task represented
        assert len(y) == 200 and min(by_task) > 0
    else:  # balanced over (task, label) classes
        assert by_class == [20] * 10


@pytest.mark.parametrize("strategy", REHEARSAL)
def test_runs_are_deterministic_under_a_seed(strategy):
    rec, _ = run_with_strategy("split-digits", strategy)
    exp = Experiment("split-digits", strategy, 0,
                     {"train": {"epochs": epochs("split-digits", strategy)}})
    again = run_experiment(exp, scenario_data("split-digits"))
    assert again["accuracy"] == rec["accuracy"]
    assert again["valid_accuracy"] == rec["valid_accuracy"]
    assert again["memory_samples"] == rec["memory_samples"]


@pytest.mark.parametrize(("strategy", "key", "value"), [
    ("replay", "mem_size", 0), ("replay", "mem_batch_ratio", 0), ("agem", "sample_size", 0),
    ("agem", "patterns_per_experience", -1), ("der", "alpha", -1), ("der", "mem_size", 0),
    ("er-ace", "mem_batch_ratio", -0.5), ("gdumb", "mem_size", 0)])
def test_bad_values_get_one_clear_error(strategy, key, value):
    with pytest.raises(ConfigError, match=rf"^{strategy}\.{key} must be"):
        get_strategy(strategy).config({key: value})


def test_registry_entries_and_spaces():
    for name in REHEARSAL:
        spec = STRATEGIES[name]
        assert not (spec.gated or spec.joint or spec.single)
        for key, values in spec.space.items():
            assert "mem_size" not in key and list(values) == sorted(values)
    assert not STRATEGIES["gdumb"].space  # its only parameter is the memory budget
    assert STRATEGIES["der"].defaults() == {"mem_size": 200, "alpha": 0.2, "beta": 1.0,
                                            "mem_batch_ratio": 1.0}
    assert STRATEGIES["agem"].defaults() == {"patterns_per_experience": 50, "sample_size": 64}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("strategy", REHEARSAL)
def test_each_trains_on_cuda_with_its_memory_there(strategy):
    built = []
    real = runner._make_strategy

    def keep(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    exp = Experiment("split-digits", strategy, 0,
                     {"train": {"epochs": epochs("split-digits", strategy)}})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "_make_strategy", keep)
        rec = run_experiment(exp, scenario_data("split-digits"), device="cuda")
    acc = np.asarray(rec["accuracy"])
    assert np.isfinite(acc).all() and acc[-1].mean() > 0.6
    assert rec["memory_samples"] == run_with_strategy("split-digits", strategy)[0]["memory_samples"]
    assert all(v.is_cuda for v in memory_tensors(plugin_of(built[-1], PLUGINS[strategy])))
