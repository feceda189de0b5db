"""HAT's all-task pass (``HATNet.all_task_logits``): every task's logits in one trunk pass, the
masks stacked on a leading axis, equal to one task-aware pass per task; task inference takes
it, and it writes nothing (earlier tasks stay bit-identical)."""

from __future__ import annotations

import pytest
import torch

from benchmark.networks import alexnet_trunk
from strategies import HAT, HATNet
from strategies.common.multihead import TaskNotTrainedError
from strategies.training.task_inference import task_logits
from tests.support.trunks import (
    ALL_TRUNKS,
    fast_plugins,
    hat_net,
    logits,
    make_stream,
    quiet_evaluator,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ALEXNET_SHAPE = (3, 16, 16)
#: the suite's trunks plus the AlexNet-like network (small: 16×16 inputs, fc 64)
TRUNKS = {**ALL_TRUNKS, "alexnet": (lambda: alexnet_trunk(ALEXNET_SHAPE, 64), ALEXNET_SHAPE)}
HEADS = [2, 3, 4]


def _trained(name: str, **kw) -> tuple[HATNet, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A HATNet trained one epoch on each of three tasks (heads of 2, 3 and 4 classes)."""
    torch.manual_seed(0)
    make_trunk, shape = TRUNKS[name]
    bm, _, test = make_stream(len(HEADS), shape, n_train=32, n_test=24, n_classes=HEADS)
    model = hat_net(make_trunk(), shape, **kw)
    strategy = HAT(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                   train_mb_size=16, train_epochs=1, plugins=fast_plugins(),
                   evaluator=quiet_evaluator())
    for exp in bm.train_stream:
        strategy.train(exp)
    return model, test


def _separate(model: HATNet, x: torch.Tensor, tasks: list[int]) -> list[torch.Tensor]:
    return [logits(model, x, t) for t in tasks]


@pytest.mark.parametrize("name", sorted(TRUNKS))
def test_all_task_pass_equals_one_task_aware_pass_per_task(name):
    model, test = _trained(name)
    x = torch.cat([x for x, _ in test])
    tasks = [0, 1, 2]
    model.eval()
    want = _separate(model, x, tasks)
    got = model.all_task_logits(x, tasks)
    assert [z.shape for z in got] == [(len(x), c) for c in HEADS]
    for t, (a, b) in enumerate(zip(want, got, strict=True)):
        assert torch.equal(a.argmax(1), b.argmax(1)), f"task {t}: predictions differ"
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        if x.device.type == "cpu":  # same kernels on the same rows: the same bits here
            assert torch.equal(a, b), f"task {t}: logits differ"
    # in chunks of at most 20 rows (6 samples × 3 tasks): the same values
    for a, b in zip(got, model.all_task_logits(x, tasks, max_rows=20), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        assert torch.equal(a.argmax(1), b.argmax(1))


def test_per_task_batchnorm_statistics_apply_per_block():
    """Each block gets its own task's BatchNorm: with distinct running statistics per task
    the all-task pass still equals each task's pass (a mixed-up norm would not)."""
    model, test = _trained("resnet32")
    g = torch.Generator().manual_seed(1)
    for norm in model.task_norms:
        for bn in norm.norms.values():
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    x = test[1][0]
    tasks = [2, 0, 1, 0]  # any order, repeats allowed
    for a, b in zip(_separate(model, x, tasks), model.all_task_logits(x, tasks), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["mlp", "conv_bn"])
def test_soft_masks_give_the_same_values(name):
    model, test = _trained(name, binary_masks=False)
    x = test[0][0]
    for a, b in zip(_separate(model, x, [0, 1, 2]), model.all_task_logits(x, [0, 1, 2]),
                    strict=True):
        assert torch.equal(a, b)


def test_mode_is_restored_and_training_mode_callers_get_evaluation_outputs():
    model, test = _trained("conv_bn")
    x = test[2][0]
    want = _separate(model, x, [0, 1, 2])
    model.train()
    model.trunk[0].eval()  # a mixed state, restored module by module
    got = model.all_task_logits(x, [0, 1, 2])
    assert model.training and not model.trunk[0].training and model.trunk[1].training
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    assert not any(z.requires_grad for z in got)
    # no gate or task is left set on the layers and norms
    assert all(layer.current_gate is None for layer in model.gated_layers)
    assert all(norm.current_task is None for norm in model.task_norms)


def test_one_task_an_empty_batch_and_an_unknown_task():
    model, test = _trained("mlp")
    x = test[0][0]
    (z,) = model.all_task_logits(x, [1])
    assert torch.equal(z, logits(model, x, 1))
    empty = model.all_task_logits(x[:0], [0, 2])
    assert [tuple(z.shape) for z in empty] == [(0, 2), (0, 4)]
    with pytest.raises(TaskNotTrainedError):
        model.all_task_logits(x, [0, 7])


@pytest.mark.parametrize("name", ["conv_bn", "resnet32"])
def test_task_inference_uses_the_all_task_pass_and_writes_nothing_between_tasks(name):
    """Task inference between tasks (through the all-task pass) leaves the state and every
    earlier task's outputs bit-identical after later training."""
    torch.manual_seed(0)
    make_trunk, shape = TRUNKS[name]
    bm, _, test = make_stream(len(HEADS), shape, n_train=32, n_test=24, n_classes=HEADS)
    model = hat_net(make_trunk(), shape)
    strategy = HAT(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=0.01),
                   train_mb_size=16, train_epochs=1, plugins=fast_plugins(),
                   evaluator=quiet_evaluator())
    calls = []
    batched = model.all_task_logits

    def spy(x, tasks):
        calls.append(list(tasks))
        return batched(x, tasks)

    model.all_task_logits = spy
    before: list[torch.Tensor] = []
    for i, exp in enumerate(bm.train_stream):
        strategy.train(exp)
        tasks = list(range(i + 1))
        state = {k: v.clone() for k, v in model.state_dict().items()}
        model.train()
        z = task_logits(model, test[0][0], tasks)
        assert model.training and calls[-1] == tasks
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
        assert all(torch.equal(a, b)
                   for a, b in zip(z, _separate(model, test[0][0], tasks), strict=True))
        now = [logits(model, test[j][0], j) for j in range(i + 1)]
        for j, old in enumerate(before):
            assert torch.equal(old, now[j]), f"task {j} changed after inference at {i}"
        before = now
