"""The run record's measurements: the single-task reference (``single``), task-agnostic
accuracy (``strategies/training/agnostic.py``), the cost fields (``peak_memory_mb``,
``state_mb``, ``memory_samples``) and their validation; and presets naming several
scenarios."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from avalanche.training import Naive
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from benchmark import cli
from benchmark.experiment import Experiment
from benchmark.records import RecordError, validate_record
from benchmark.run.measures import held_tensors_mb, memory_samples
from benchmark.run.runner import run_experiment
from strategies import HATNet, MultiHeadNet
from strategies.training.agnostic import agnostic_accuracy, agnostic_scorer
from tests.support.runs import FAST, run_cached

# one torch thread (conftest's fixture): much faster for these tiny networks on shared cores
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.issue(16)]


# ------------------------------------------------------------------ single-task reference


def test_single_trains_each_task_alone_from_the_common_initialisation(monkeypatch):
    calls = []
    original = Naive.train

    def spy(self, experiences, *args, **kwargs):
        exps = experiences if isinstance(experiences, list | tuple) else [experiences]
        init = copy.deepcopy(self.model.state_dict())
        calls.append(([e.task_label for e in exps], id(self.model), init))
        return original(self, experiences, *args, **kwargs)

    monkeypatch.setattr(Naive, "train", spy)
    rec = run_experiment(Experiment("split-digits", "single", 0, FAST))
    n = len(rec["task_names"])
    assert [labels for labels, *_ in calls] == [[t] for t in range(n)]
    assert len({m for _, m, _ in calls}) == n  # a fresh model for every t
    first = calls[0][2]
    for *_, init in calls[1:]:
        assert all(torch.equal(init[k], first[k]) for k in first)
    naive = run_cached("split-digits", "naive")
    # the naive run starts from the same weights and trains task 1 the same way
    assert rec["accuracy"][0] == naive["accuracy"][0]
    assert rec["history"][0] == naive["history"][0]
    assert rec["agnostic_accuracy"] is None and rec["hat"] is None


# ------------------------------------------------------------------ task-agnostic accuracy


def _net(sizes: list[int], seed: int) -> MultiHeadNet:
    torch.manual_seed(seed)
    return MultiHeadNet(nn.Sequential(nn.Linear(6, 5), nn.ReLU()), 5, sizes)


class _Strategy:
    def __init__(self, model, plugins=()):
        self.model, self.plugins, self.device = model, list(plugins), "cpu"


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=4), seed=st.integers(0, 999),
       batch=st.integers(1, 9))
def test_agnostic_accuracy_is_the_argmax_over_the_seen_heads(sizes, seed, batch):
    model = _net(sizes, seed)
    g = torch.Generator().manual_seed(seed)
    sets = [(torch.randn(7, 6, generator=g), torch.randint(0, k, (7,), generator=g))
            for k in sizes]
    for seen in range(1, len(sizes) + 1):
        row = agnostic_accuracy(_Strategy(model), sets, sizes, seen, batch_size=batch)
        assert len(row) == seen
        with torch.no_grad():
            for u, (x, y) in enumerate(sets[:seen]):
                logits = torch.cat([model.heads[str(t)](model.trunk(x)) for t in range(seen)], 1)
                want = (logits.argmax(1) == y + sum(sizes[:u])).float().mean().item()
                assert row[u] == pytest.approx(want)


def test_agnostic_accuracy_leaves_the_model_mode():
    model = _net([2, 2], 0).train()
    agnostic_accuracy(_Strategy(model), [(torch.randn(3, 6), torch.zeros(3, dtype=torch.long))],
                      [2], 1)
    assert model.training


def test_task_dependent_networks_and_opted_out_plugins_have_no_agnostic_prediction():
    hat = HATNet.wrap(nn.Sequential(nn.Linear(6, 5), nn.ReLU()), (6,), [2, 2])
    assert agnostic_scorer(_Strategy(hat)) is None

    class OptOut:
        task_agnostic = False

    assert agnostic_scorer(_Strategy(_net([2], 0), [OptOut()])) is None
    assert agnostic_scorer(_Strategy(_net([2], 0))) is not None


def test_a_plugins_own_scores_take_precedence():
    class Own:
        def agnostic_scores(self, strategy, x, tasks):
            # always the last class of the last task seen
            out = torch.zeros(len(x), 2 * len(tasks))
            out[:, -1] = 1
            return out

    sets = [(torch.randn(4, 6), torch.tensor([0, 1, 1, 0])),
            (torch.randn(4, 6), torch.tensor([1, 1, 0, 1]))]
    row = agnostic_accuracy(_Strategy(_net([2, 2], 0), [Own()]), sets, [2, 2], 2)
    assert row == [0.0, 0.75]


def test_records_hold_triangular_agnostic_rows_or_null():
    naive = run_cached("split-digits", "naive")
    rows = naive["agnostic_accuracy"]
    assert [len(r) for r in rows] == [1, 2, 3, 4, 5]
    # one task seen: the only head, the same prediction as with the task label
    assert rows[0][0] == naive["accuracy"][0][0]
    # more classes to choose from, never more right than with the task label
    assert all(rows[t][u] <= naive["accuracy"][t][u] for t in range(5) for u in range(t + 1))
    assert run_cached("split-digits", "hat")["agnostic_accuracy"] is None


# ------------------------------------------------------------------ cost fields


def _bytes(module: nn.Module) -> float:
    return sum(v.numel() * v.element_size() for v in module.state_dict().values()) / 2**20


def test_held_tensors_count_each_storage_once():
    model = _net([2, 3], 0)
    strategy = _Strategy(model)
    strategy.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    class Keeps:
        def __init__(self, *things):
            self.things = things

    assert held_tensors_mb(strategy) == pytest.approx(_bytes(model))
    teacher = copy.deepcopy(model)
    strategy.plugins = [Keeps(teacher, model.trunk[0].weight, {"again": teacher})]
    assert held_tensors_mb(strategy) == pytest.approx(2 * _bytes(model))
    assert held_tensors_mb(strategy, skip=strategy.plugins) == pytest.approx(_bytes(model))


def test_cost_fields_of_real_runs():
    naive, lwf = run_cached("split-digits", "naive"), run_cached("split-digits", "lwf")
    ewc = run_cached("split-digits", "ewc")
    for rec in (naive, lwf, ewc):
        assert len(rec["peak_memory_mb"]) == len(rec["state_mb"]) == 5
        assert all(v >= 0 for v in rec["peak_memory_mb"])
        assert rec["memory_samples"] is None
    model_mb = naive["state_mb"][0]
    assert naive["state_mb"] == [model_mb] * 5  # plain SGD keeps no state
    # LwF keeps one teacher (a copy of the model) once a task is done
    assert lwf["state_mb"][1:] == pytest.approx([2 * model_mb] * 4, rel=1e-4)
    # EWC keeps a Fisher and an anchor per task: its state grows with every task
    assert all(b > a for a, b in zip(ewc["state_mb"], ewc["state_mb"][1:], strict=False))


def test_memory_samples_sum_the_plugins_memories():
    class Memory:
        def __init__(self, n):
            self.n = n

        def memory_samples(self):
            return self.n

    assert memory_samples(_Strategy(None, [object()])) is None
    assert memory_samples(_Strategy(None, [Memory(3), object(), Memory(4)])) == 7


# ------------------------------------------------------------------ record validation


@pytest.mark.parametrize(("field", "value", "match"), [
    ("agnostic_accuracy", [[0.5]] * 5, "row t with t"),
    ("agnostic_accuracy", [[0.5] * (t + 1) for t in range(4)], "row t with t"),
    ("agnostic_accuracy", [[1.5] * (t + 1) for t in range(5)], r"\[0, 1\]"),
    ("peak_memory_mb", [1.0] * 4, "peak_memory_mb"),
    ("peak_memory_mb", [-1.0] * 5, "peak_memory_mb"),
    ("memory_samples", [1.5] * 5, "memory_samples"),
    ("memory_samples", [10] * 4, "memory_samples"),
])
def test_bad_measurement_fields_are_refused(field, value, match):
    rec = dict(run_cached("split-digits", "naive"))
    validate_record(rec)
    rec[field] = value
    with pytest.raises(RecordError, match=match):
        validate_record(rec)


def test_older_records_without_the_fields_stay_valid():
    rec = dict(run_cached("split-digits", "naive"))
    for key in ("agnostic_accuracy", "peak_memory_mb", "state_mb", "memory_samples"):
        rec.pop(key)
    validate_record(rec)


# ------------------------------------------------------------------ presets


def test_a_preset_may_name_several_scenarios(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("scenario: split-digits,permuted-digits\nstrategies: [naive, single]\n"
                      "seeds: 0-1\n")
    args = cli.build_parser().parse_args(["run", "--config", str(preset), "--out",
                                          str(tmp_path / "o")])
    plan = cli.plan_run(args)
    got = sorted({(e.scenario, e.strategy, e.seed) for e in plan.experiments})
    assert got == sorted((s, n, seed) for s in ("split-digits", "permuted-digits")
                         for n in ("naive", "single") for seed in (0, 1))
    # --scenario picks one of them
    args = cli.build_parser().parse_args(["run", "--config", str(preset), "--scenario",
                                          "permuted-digits", "--out", str(tmp_path / "o")])
    assert {e.scenario for e in cli.plan_run(args).experiments} == {"permuted-digits"}
    assert not Path(tmp_path / "o").exists()


def test_agnostic_rows_are_averages_of_the_test_samples():
    rec = run_cached("permuted-digits", "naive")
    rows = rec["agnostic_accuracy"]
    assert np.all(np.asarray(rows[-1]) >= 0) and len(rows[-1]) == 5
