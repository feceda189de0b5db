"""Bad input gets a clear error of the right type, never a crash deep inside Avalanche."""

from __future__ import annotations

import pytest
import torch
from avalanche.benchmarks import tensors_benchmark
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.training import Naive
from torch import nn

from strategies import (
    HAT,
    HATConv2d,
    HATError,
    HATLinear,
    HATNet,
    HATPlugin,
    TaskNotTrainedError,
)
from tests.support.trunks import (
    CONV_SHAPE,
    MLP_SHAPE,
    conv_trunk,
    fast_plugins,
    hat_net,
    make_stream,
    mlp_trunk,
    multihead_net,
    quiet_evaluator,
    task_data,
)


def _hat(model, **kw):
    return HAT(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=16,
        train_epochs=1, plugins=fast_plugins(), evaluator=quiet_evaluator(), **kw,
    )


# -------------------------------------------------------------- models
def test_hat_strategy_refuses_a_model_without_hat_layers():
    model = multihead_net(mlp_trunk(), MLP_SHAPE)
    with pytest.raises(HATError, match=r"HATNet\.wrap"):
        _hat(model)


def test_hat_plugin_on_a_plain_model_fails_clearly_when_training():
    bm, _, _ = make_stream(1)
    model = multihead_net(mlp_trunk(), MLP_SHAPE)
    strategy = Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=16,
        eval_mb_size=16, plugins=fast_plugins(HATPlugin()), evaluator=quiet_evaluator(),
    )
    with pytest.raises(HATError, match="no HAT layers"):
        strategy.train(bm.train_stream[0])


def test_hatnet_needs_hat_layers():
    with pytest.raises(HATError, match="no HAT layers"):
        HATNet(nn.Sequential(nn.Linear(64, 8), nn.ReLU()), MLP_SHAPE)


@pytest.mark.parametrize("where", ["after_relu", "first", "3d"])
def test_wrap_refuses_batchnorm_that_is_not_right_after_a_gated_layer(where):
    if where == "after_relu":  # normalising a gated output: masked units would leak β − γμ/σ
        trunk = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.BatchNorm1d(32), nn.Linear(32, 8))
        shape, name = MLP_SHAPE, "BatchNorm1d"
    elif where == "first":
        trunk = nn.Sequential(nn.BatchNorm1d(64), nn.Linear(64, 8), nn.ReLU())
        shape, name = MLP_SHAPE, "BatchNorm1d"
    else:
        trunk = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm3d(4), nn.ReLU(), nn.Flatten(),
                              nn.Linear(144, 8))
        shape, name = CONV_SHAPE, "BatchNorm3d"
    with pytest.raises(HATError, match=f"{name}.*directly follow"):
        HATNet.wrap(trunk, shape)


def test_per_task_batchnorm_built_by_hand_must_follow_its_layer():
    from strategies import HATBatchNorm1d, HATLinear

    ok = nn.Sequential(HATLinear(64, 8), HATBatchNorm1d(8), nn.ReLU())
    assert HATNet(ok, MLP_SHAPE).task_norms == [ok[1]]
    bad = nn.Sequential(HATLinear(64, 8), nn.ReLU(), HATBatchNorm1d(8))
    with pytest.raises(HATError, match="right after a gated layer"):
        HATNet(bad, MLP_SHAPE)
    wide = nn.Sequential(HATLinear(64, 8), HATBatchNorm1d(16))
    with pytest.raises(HATError, match="right after a gated layer"):
        HATNet(wide, MLP_SHAPE)
    with pytest.raises(HATError, match="without a task"):
        HATBatchNorm1d(8)(torch.zeros(2, 8))


@pytest.mark.parametrize("bad", [nn.Tanh(), nn.Sigmoid(), nn.LayerNorm(32), nn.ReLU6()])
def test_wrap_refuses_modules_that_do_not_commute_with_the_gate(bad):
    trunk = nn.Sequential(nn.Linear(64, 32), bad, nn.Linear(32, 8), nn.ReLU())
    with pytest.raises(HATError, match=type(bad).__name__):
        HATNet.wrap(trunk, MLP_SHAPE)


def test_wrap_refuses_nested_bad_modules_too():
    trunk = nn.Sequential(nn.Sequential(nn.Linear(64, 32), nn.Tanh()), nn.Linear(32, 8))
    with pytest.raises(HATError, match="Tanh"):
        HATNet.wrap(trunk, MLP_SHAPE)


class _Branchy(nn.Module):
    """Control flow on the data: torch.fx cannot trace it, so HAT cannot read its graph."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 8)

    def forward(self, x):
        return torch.relu(self.a(x)) if x.sum() > 0 else self.a(x)


def test_wrap_takes_any_traceable_module_copies_it_and_needs_a_flat_output():
    lin = nn.Linear(64, 8)
    net = HATNet.wrap(lin, MLP_SHAPE, [2])
    assert type(lin) is nn.Linear and isinstance(net.trunk, HATLinear)
    assert torch.equal(net.trunk.weight, lin.weight) and net.trunk.weight is not lin.weight
    with pytest.raises(HATError, match="cannot trace the trunk"):
        HATNet.wrap(_Branchy(), MLP_SHAPE)
    with pytest.raises(HATError, match="no submodule 'head'.*'a'"):
        HATNet.wrap(_Branchy(), MLP_SHAPE, classifier="head")
    with pytest.raises(HATError, match="Flatten"):
        HATNet.wrap(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()), CONV_SHAPE)
    with pytest.raises(HATError, match="shape"):
        HATNet.wrap(mlp_trunk(), (63,))


def test_hatnet_refuses_unprotected_trainable_trunk_layers():
    """A plain Linear between gated layers would be trained freely by every task: HAT's
    protection would silently fail, so HATNet refuses it."""
    trunk = nn.Sequential(HATLinear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          HATLinear(16, 8), nn.ReLU())
    with pytest.raises(HATError, match=r"\['2'\].*neither gates nor protects"):
        HATNet(trunk, MLP_SHAPE)


def test_hatnet_refuses_a_chain_it_cannot_map():
    # a linear layer reading twice the previous linear layer's units (through an ungated
    # reshaping module): the conditioning could not know which gate feeds which column
    class Repeat(nn.Module):
        def forward(self, x):
            return torch.cat([x, x], dim=1)

    trunk = nn.Sequential(HATLinear(64, 8), nn.ReLU(), Repeat(), HATLinear(16, 4), nn.ReLU())
    with pytest.raises(HATError, match="'2' \\(Repeat\\) does not commute"):
        HATNet(trunk, MLP_SHAPE)
    # a linear layer applied to a conv's last (width) axis: its inputs are not channels
    trunk = nn.Sequential(HATConv2d(1, 4, 3), nn.ReLU(), HATLinear(6, 4), nn.ReLU(), nn.Flatten())
    with pytest.raises(HATError, match="cannot tell which gate feeds HATLinear"):
        HATNet(trunk, CONV_SHAPE)
    with pytest.raises(HATError, match="groups"):
        HATConv2d(4, 4, 3, groups=2)


# ------------------------------------------------------------- tasks
def test_unknown_task_at_evaluation_raises_task_not_trained():
    torch.manual_seed(0)
    bm, _, test = make_stream(3)
    model = hat_net(mlp_trunk(), MLP_SHAPE)
    strategy = _hat(model)
    strategy.train(bm.train_stream[0])
    strategy.train(bm.train_stream[1])
    with pytest.raises(TaskNotTrainedError, match=r"task 2 .*known tasks: 0, 1"):
        strategy.eval(bm.test_stream[2])
    model.eval()
    with pytest.raises(TaskNotTrainedError):
        model(test[0][0], 7)
    with pytest.raises(TaskNotTrainedError):
        model.masks(7)
    mixed = torch.tensor([0, 1, 5, 0])
    with pytest.raises(TaskNotTrainedError, match="task 5"):
        model(test[0][0][:4], mixed)
    # the error is a KeyError (a missing task), with a readable message
    assert issubclass(TaskNotTrainedError, KeyError)
    assert "add_task" in str(TaskNotTrainedError(3, [0]))


def test_conv_trunk_unknown_task_too():
    model = hat_net(conv_trunk(), CONV_SHAPE, head_sizes=[2])
    model.eval()
    with pytest.raises(TaskNotTrainedError, match="known tasks: 0"):
        model(torch.zeros(2, *CONV_SHAPE), 1)


def _repeated_task_zero_stream():
    data = [task_data(48, MLP_SHAPE, t, seed=0) for t in range(2)]
    return tensors_benchmark(
        train_tensors=data, test_tensors=data, task_labels=[0, 0], complete_test_set_only=False
    )


def test_repeated_task_label_is_refused():
    """A class-incremental stream where every experience has task label 0."""
    torch.manual_seed(0)
    bm = _repeated_task_zero_stream()
    model = hat_net(mlp_trunk(), MLP_SHAPE)
    strategy = _hat(model)
    strategy.train(bm.train_stream[0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(HATError, match="task label 0.*already trained"):
        strategy.train(bm.train_stream[1])
    # refused before any training step: nothing changed
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def _dataset_only_stream(task_labels: bool, classes: bool):
    bm, _, _ = make_stream(2)
    data = bm.train_stream[0].dataset.concat(bm.train_stream[1].dataset)
    scenario = benchmark_from_datasets(train=[data], test=[data])
    if classes:
        scenario = with_classes_timeline(scenario)
    if task_labels:
        scenario = with_task_labels(scenario)
    return scenario


@pytest.mark.parametrize("classes", [False, True])
def test_stream_without_task_labels_is_refused(classes):
    scenario = _dataset_only_stream(task_labels=False, classes=classes)
    model = hat_net(mlp_trunk(), MLP_SHAPE)
    with pytest.raises(HATError, match="task-incremental.*task labels None"):
        _hat(model).train(scenario.train_stream[0])


def test_experience_with_several_task_labels_is_refused():
    scenario = _dataset_only_stream(task_labels=True, classes=True)
    model = hat_net(mlp_trunk(), MLP_SHAPE)
    with pytest.raises(HATError, match=r"one task label per experience.*\[0, 1\]"):
        _hat(model).train(scenario.train_stream[0])


class _Reordered(nn.Module):
    """Registers a, b but runs b, a: the chain HAT would read from registration is wrong."""

    def __init__(self):
        super().__init__()
        self.a = HATLinear(8, 8)
        self.b = HATLinear(8, 8)

    def forward(self, x):
        return torch.relu(self.a(torch.relu(self.b(x))))


class _Twice(_Reordered):
    def forward(self, x):
        return torch.relu(self.a(torch.relu(self.a(x))))


def test_hat_net_refuses_a_layer_run_twice():
    with pytest.raises(HATError, match=r"runs its HAT layers \[2, 0\] times"):
        HATNet(_Twice(), (8,))


def test_conditioning_follows_the_run_order_not_the_registration_order():
    """b runs first, then a: a's weights are conditioned by b's gate (columns), b's by the
    ungated input only (rows)."""
    net = HATNet(_Reordered(), (8,), [2])
    a, b = net.trunk.a, net.trunk.b
    with torch.no_grad():
        a.cumulative.copy_(torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0]))
        b.cumulative.copy_(torch.tensor([0.0, 1, 0, 0, 0, 0, 0, 0]))
    factors = {id(p): f for p, f in net.conditioning_factors()}
    fa, fb = factors[id(a.weight)], factors[id(b.weight)]
    assert torch.equal(fb[1], torch.zeros(8)) and bool((fb[0] == 1).all())  # b's row 1 only
    assert fa[0, 1] == 0 and fa[0, 0] == 1 and fa[1, 1] == 1  # min(a_out, b_in)


def test_a_float64_trunk_with_batchnorm_wraps_and_adds_tasks_in_its_dtype():
    trunk = nn.Sequential(nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU()).double()
    model = HATNet.wrap(trunk, MLP_SHAPE, [2]).double()
    model.add_task(1, 2)  # after the conversion: created in the trunk's dtype
    assert model.task_norms[0].norm(1).weight.dtype == torch.float64
    model.train()
    model.s = 5.0
    assert model(torch.randn(3, 64, dtype=torch.float64), 1).dtype == torch.float64
