"""DER++ (strategies/rehearsal/der.py): the loss is cross-entropy plus alpha times the logit
squared error plus beta times the memory's cross-entropy, computed by hand; the logit MSE
ignores padding; the memory stores the logits of the step that inserted each sample."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import nn

from strategies import DERPlugin
from strategies.rehearsal.der import logit_mse
from tests.support.rehearsal import _build, _Stub
from tests.support.trunks import (
    MLP_SHAPE,
    keep_subnormals,  # noqa: F401  (autouse fixture)
    make_stream,
    multihead_net,
    plugin_of,
)

# one torch thread (conftest's fixture): much faster for these tiny networks on shared cores
pytestmark = pytest.mark.usefixtures("one_thread")


def test_der_loss_is_ce_plus_alpha_mse_plus_beta_ce_by_hand():
    """Heads of different widths (2 and 3 classes): the squared error covers each memory
    sample's own head; with a memory batch as large as the memory, both memory batches are
    the whole memory (in some order), so the terms are fixed."""
    torch.manual_seed(0)
    model = multihead_net(nn.Sequential(nn.Linear(64, 16), nn.ReLU()), MLP_SHAPE, (2, 3))
    plugin = DERPlugin(mem_size=8, alpha=0.3, beta=0.7, mem_batch_ratio=1.0)
    xs = torch.randn(8, 64)
    ts = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    ys = torch.tensor([0, 1, 0, 1, 0, 1, 2, 2])
    zs = [torch.randn(4, 2), torch.randn(4, 3)]
    plugin.memory.add(xs[:4], ys[:4], ts[:4], zs[0])
    plugin.memory.add(xs[4:], ys[4:], ts[4:], zs[1])
    assert len(plugin.memory) == 8 and plugin.memory.width_set == {2, 3}

    x, y = torch.randn(8, 64), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    strategy = _Stub(model)
    strategy.train_mb_size = 8
    strategy.loss = F.cross_entropy(model(x, 1), y)
    ce_current = float(strategy.loss.detach())
    plugin.before_backward(strategy)

    with torch.no_grad():  # by hand: sample by sample, each with its own head
        sq = sum(((model(xs[i : i + 1], int(ts[i]))[0] - z) ** 2).sum()
                 for i, z in enumerate([*zs[0], *zs[1]]))
        mse = sq / (4 * 2 + 4 * 3)
        ce_memory = (F.cross_entropy(model(xs[:4], 0), ys[:4]) * 4
                     + F.cross_entropy(model(xs[4:], 1), ys[4:]) * 4) / 8
    expected = ce_current + 0.3 * float(mse) + 0.7 * float(ce_memory)
    assert float(strategy.loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert torch.isfinite(strategy.loss)


def test_logit_mse_is_mse_loss_for_equal_widths_and_ignores_padding():
    out, stored = torch.randn(5, 3), torch.randn(5, 3)
    assert torch.equal(logit_mse(out, stored, None), F.mse_loss(out, stored))
    widths = torch.tensor([2, 3, 2, 3, 3])
    padded = out.clone()
    padded[widths == 2, 2] = float("-inf")  # MultiHeadNet's padding of a mixed batch
    value = logit_mse(padded, stored, widths)
    keep = torch.arange(3) < widths.unsqueeze(1)
    assert torch.isfinite(value)
    assert float(value) == pytest.approx(float(((out - stored)[keep] ** 2).mean()), rel=1e-6)


class _StepRecorder(SupervisedPlugin):
    """Each training step's inputs and outputs (before the update)."""

    def __init__(self):
        super().__init__()
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def after_forward(self, strategy, **kwargs):
        self.steps.append((strategy.mb_x.clone(), strategy.mb_output.detach().clone()))


def test_der_stores_the_logits_of_the_step_that_inserted_each_sample():
    recorder = _StepRecorder()
    strategy = _build("der", {"mem_size": 20}, recorder)
    bm, _, _ = make_stream(2, n_train=48)
    for exp in bm.train_stream:
        strategy.train(exp)
    memory = plugin_of(strategy, DERPlugin).memory
    assert len(memory) == 20 and memory.seen > 20
    outputs = {}  # input row -> the outputs it had at each step it was trained on
    for x, out in recorder.steps:
        for row, logits in zip(x, out, strict=True):
            outputs.setdefault(row.numpy().tobytes(), []).append(logits)
    for row, z in zip(memory.x, memory.logits, strict=True):
        seen = outputs[row.numpy().tobytes()]
        assert any(torch.equal(z, logits) for logits in seen)
    # not recomputed later: the current model's outputs differ
    strategy.model.eval()
    with torch.no_grad():
        now = strategy.model(memory.x, memory.t)
    assert not torch.allclose(now, memory.logits, atol=1e-3)


def test_logit_mse_of_a_grown_head_compares_the_stored_classes_only():
    """Class-incremental: logits stored when the expanding head had 2 classes are matched by
    the head's first 2 columns once it has 4 (the new classes have no stored logit)."""
    torch.manual_seed(0)
    out, stored = torch.randn(5, 4), torch.randn(5, 2)
    assert torch.equal(logit_mse(out, stored, None), F.mse_loss(out[:, :2], stored))
    widths = torch.tensor([2, 2, 1, 2, 1])
    padded = torch.cat([stored, torch.full((5, 1), float("nan"))], 1)  # stored, padded wider
    inside = torch.arange(2) < widths.unsqueeze(1)
    want = (out[:, :2] - stored).pow(2)[inside].sum() / inside.sum()
    assert torch.allclose(logit_mse(out, padded[:, :2], widths), want)
