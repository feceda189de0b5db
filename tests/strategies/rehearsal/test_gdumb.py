"""GDumb (strategies/rehearsal/gdumb.py): every experience restarts from the initial weights and
trains on the class-balanced memory alone."""

from __future__ import annotations

import copy

import pytest
import torch
from avalanche.core import SupervisedPlugin

from strategies import GDumbPlugin
from tests.support.rehearsal import _build
from tests.support.trunks import (
    keep_subnormals,  # noqa: F401  (autouse fixture)
    make_stream,
    plugin_of,
)

# one torch thread (conftest's fixture): much faster for these tiny networks on shared cores
pytestmark = pytest.mark.usefixtures("one_thread")


class _GDumbSpy(SupervisedPlugin):
    """The weights when each experience's training starts and the inputs of every step."""

    def __init__(self):
        super().__init__()
        self.start_states: list[dict[str, torch.Tensor]] = []
        self.batches: list[list[torch.Tensor]] = []

    def before_training_exp(self, strategy, **kwargs):
        self.start_states.append(copy.deepcopy(strategy.model.state_dict()))
        self.batches.append([])

    def after_forward(self, strategy, **kwargs):
        self.batches[-1].append(strategy.mb_x.clone())


def test_gdumb_restarts_from_the_initial_weights_and_trains_on_the_memory_only():
    spy = _GDumbSpy()
    strategy = _build("gdumb", {"mem_size": 30}, spy, n_tasks=3, epochs=3, batch_size=8)
    initial = copy.deepcopy(strategy.model.state_dict())
    plugin = plugin_of(strategy, GDumbPlugin)
    bm, _, _ = make_stream(3, n_train=48)
    for exp in bm.train_stream:
        strategy.train(exp)
        memory_x = {r.numpy().tobytes() for r in plugin.memory.tensors[0]}
        steps = torch.cat(spy.batches[-1])
        assert {r.numpy().tobytes() for r in steps} <= memory_x  # the memory alone
        n_epochs = len(steps) // len(memory_x)
        assert len(steps) == n_epochs * len(memory_x) and n_epochs >= 1
        assert len(memory_x) == 30  # 36 training samples a task: full after the first
    assert len(spy.start_states) == 3
    for state in spy.start_states:  # every experience starts from the initial weights
        assert all(torch.equal(state[k], v) for k, v in initial.items())
    final = strategy.model.state_dict()
    assert not all(torch.equal(final[k], v) for k, v in initial.items())  # it trained
    counts = plugin.memory.class_counts()
    assert sorted(counts) == [(t, c) for t in range(3) for c in range(2)]
    assert set(counts.values()) == {5}
