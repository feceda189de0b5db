"""HATPlugin in a user's own Avalanche script: labels outside a task's head and a second
HATPlugin are refused with one HATError before any training step."""

from __future__ import annotations

import pytest
import torch
from avalanche.benchmarks import tensors_benchmark
from avalanche.training import Naive

from strategies import HAT, HATError, HATPlugin
from tests.support.trunks import (
    MLP_SHAPE,
    fast_plugins,
    hat_net,
    mlp_trunk,
    quiet_evaluator,
    task_data,
)


def _global_label_stream(offset: int):
    """Two tasks of two classes each; task 1's labels start at ``offset`` (2: not renumbered
    from 0, as a class-incremental split gives them)."""
    data = [task_data(32, MLP_SHAPE, t, seed=0) for t in range(2)]
    data[1] = (data[1][0], data[1][1] + offset)
    return tensors_benchmark(train_tensors=data, test_tensors=data, task_labels=[0, 1],
                             complete_test_set_only=False)


def _naive(model, plugins):
    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                 train_mb_size=16, train_epochs=1, plugins=fast_plugins(*plugins),
                 evaluator=quiet_evaluator())


@pytest.mark.parametrize("offset", [2, 5, -1])
def test_labels_outside_the_tasks_head_are_refused_before_training(offset):
    torch.manual_seed(0)
    bm = _global_label_stream(offset)
    model = hat_net(mlp_trunk(), MLP_SHAPE, head_sizes=[2, 2])
    strategy = _naive(model, [HATPlugin()])
    strategy.train(bm.train_stream[0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(HATError, match=r"experience 1 \(task 1\) has class labels .* "
                                       r"outside its head's outputs 0\.\.1: renumber"):
        strategy.train(bm.train_stream[1])
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_labels_within_a_head_sized_by_the_adaptation_train():
    """Without preset head sizes, the model adaptation sizes a head to the largest label."""
    torch.manual_seed(0)
    bm = _global_label_stream(2)
    model = hat_net(mlp_trunk(), MLP_SHAPE)
    strategy = _naive(model, [HATPlugin()])
    for exp in bm.train_stream:
        strategy.train(exp)
    assert model.heads["1"].out_features == 4


def test_a_second_hat_plugin_is_refused():
    bm = _global_label_stream(0)
    model = hat_net(mlp_trunk(), MLP_SHAPE)
    strategy = _naive(model, [HATPlugin(), HATPlugin()])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(HATError, match="2 HATPlugins.*keep one"):
        strategy.train(bm.train_stream[0])
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_the_hat_strategy_refuses_a_hat_plugin_in_its_plugins():
    model = hat_net(mlp_trunk(), MLP_SHAPE)
    with pytest.raises(HATError, match="HAT adds its own HATPlugin"):
        HAT(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
            plugins=[HATPlugin()], evaluator=quiet_evaluator())
