"""Forward passes of a HATNet: per-task gating, forward_all_tasks, avalanche_forward with task
labels, and mixed-task batches (per-sample heads, -inf outside each sample's head)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from avalanche.models import MultiTaskModule, avalanche_forward
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from strategies import HATNet
from tests.support.trunks import (
    CONV_SHAPE,
    MLP_SHAPE,
    conv_trunk,
    hat_net,
    keep_subnormals,  # noqa: F401  (autouse fixture)
    mlp_trunk,
    multihead_net,
)

HEADS = [2, 3, 4]


def _model(kind: str) -> tuple[HATNet, tuple[int, ...]]:
    torch.manual_seed(0)
    if kind == "mlp":
        model, shape = hat_net(mlp_trunk(), MLP_SHAPE, head_sizes=HEADS), MLP_SHAPE
    else:
        model, shape = hat_net(conv_trunk(), CONV_SHAPE, head_sizes=HEADS), CONV_SHAPE
    model.eval()
    return model, shape


def _manual(model: HATNet, x: torch.Tensor, task: int, gates: list[torch.Tensor]):
    """The network computed by hand: each gated layer's output times its gate."""
    t = model.trunk
    if isinstance(t[0], nn.Conv2d):
        h = F.conv2d(x, t[0].weight, t[0].bias) * gates[0].view(1, -1, 1, 1)
        h = F.max_pool2d(F.relu(h), 2).flatten(1)
        h = F.relu(F.linear(h, t[4].weight, t[4].bias) * gates[1])
    else:
        h = F.relu(F.linear(x, t[0].weight, t[0].bias) * gates[0])
        h = F.relu(F.linear(h, t[3].weight, t[3].bias) * gates[1])  # dropout: eval / p=0
    head = model.heads[str(task)]
    return F.linear(h, head.weight, head.bias)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_eval_forward_gates_each_layer_with_the_tasks_binary_mask(kind):
    model, shape = _model(kind)
    x = torch.randn(5, *shape)
    with torch.no_grad():
        for task in range(len(HEADS)):
            masks = [(layer.embedding(task) > 0).float() for layer in model.gated_layers]
            assert torch.allclose(model(x, task), _manual(model, x, task, masks), atol=1e-6)


def test_train_forward_uses_sigmoid_of_s_times_e():
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.0), nn.Linear(32, 32),
                          nn.ReLU())
    model = hat_net(trunk, MLP_SHAPE, head_sizes=HEADS)
    model.train()
    x = torch.randn(5, *MLP_SHAPE)
    for s in (0.01, 1.0, 37.0):
        model.s = s
        with torch.no_grad():
            gates = [torch.sigmoid(s * layer.embedding(1)) for layer in model.gated_layers]
            assert torch.allclose(model(x, 1), _manual(model, x, 1, gates), atol=1e-6)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_forward_all_tasks_and_avalanche_forward(kind):
    model, shape = _model(kind)
    assert isinstance(model, MultiTaskModule)
    x = torch.randn(6, *shape)
    with torch.no_grad():
        every = model.forward_all_tasks(x)
        assert sorted(every) == list(range(len(HEADS)))
        for task, n_classes in enumerate(HEADS):
            single = model(x, task)
            assert every[task].shape == (6, n_classes)
            assert torch.equal(every[task], single)
            labels = torch.full((6,), task)
            assert torch.equal(avalanche_forward(model, x, labels), single)
            assert torch.equal(model(x, labels), single)
        # no task labels: all heads (what LwF-style code asks for)
        none = model(x, None)
        assert all(torch.equal(none[t], every[t]) for t in every)
        # different tasks really differ (different masks and heads)
        assert not torch.equal(every[0], every[1][:, :2])


@settings(max_examples=25, deadline=None)
@given(labels=st.lists(st.sampled_from(range(len(HEADS))), min_size=2, max_size=12),
       kind=st.sampled_from(["mlp", "conv"]))
def test_mixed_task_batch_uses_each_samples_head_and_fills_minus_inf(labels, kind):
    model, shape = _model(kind)
    x = torch.randn(len(labels), *shape, generator=torch.Generator().manual_seed(len(labels)))
    t = torch.tensor(labels)
    with torch.no_grad():
        out = avalanche_forward(model, x, t)
        present = sorted(set(labels))
        assert out.shape == (len(labels), max(HEADS[k] for k in present))
        for task in present:
            sel = t == task
            n = HEADS[task]
            alone = model(x, task)[sel]  # the whole batch through task's head
            assert torch.allclose(out[sel, :n], alone, atol=1e-6)
            assert torch.isinf(out[sel, n:]).all() and (out[sel, n:] < 0).all()
            assert torch.isfinite(out[sel, :n]).all()
    # the -inf columns are harmless for cross-entropy (joint training uses this)
    y = torch.tensor([min(1, HEADS[k] - 1) for k in labels])
    assert torch.isfinite(F.cross_entropy(out, y))


def test_mixed_batch_on_a_plain_multihead_net():
    torch.manual_seed(0)
    model = multihead_net(mlp_trunk(), MLP_SHAPE)
    model.add_task(0, 2)
    model.add_task(3, 5)
    model.eval()
    x = torch.randn(4, *MLP_SHAPE)
    t = torch.tensor([3, 0, 0, 3])
    with torch.no_grad():
        out = model(x, t)
        assert out.shape == (4, 5)
        assert torch.allclose(out[t == 3], model(x, 3)[t == 3], atol=1e-6)
        assert torch.allclose(out[t == 0, :2], model(x, 0)[t == 0], atol=1e-6)
        assert torch.isneginf(out[t == 0, 2:]).all()
    assert model.tasks == [0, 3]
