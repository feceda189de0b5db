"""ER-ACE (strategies/rehearsal/er_ace.py): the current batch's term ignores the classes absent
from it, per task in a mixed batch, and stays finite where Avalanche's criterion gives NaN;
the loss halves the current and memory terms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from strategies import ERACEPlugin
from strategies.rehearsal.er_ace import present_class_ce
from tests.support.rehearsal import _Stub
from tests.support.trunks import (
    MLP_SHAPE,
    keep_subnormals,  # noqa: F401  (autouse fixture)
    multihead_net,
)

# one torch thread (conftest's fixture): much faster for these tiny networks on shared cores
pytestmark = pytest.mark.usefixtures("one_thread")


@settings(max_examples=50, deadline=None)
@given(width=st.integers(2, 6), data=st.data())
def test_er_ace_current_term_ignores_absent_classes(width, data):
    present = data.draw(st.sets(st.integers(0, width - 1), min_size=1, max_size=width - 1))
    n = data.draw(st.integers(1, 12))
    labels = sorted(present)
    y = torch.tensor([labels[i % len(labels)] for i in range(n)])
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    out = torch.randn(n, width, generator=g, requires_grad=True)
    t = torch.zeros(1, dtype=torch.long).expand(n)
    loss = present_class_ce(out, y, t)
    kept = sorted(set(y.tolist()))
    remap = torch.tensor([kept.index(int(c)) for c in y])
    by_hand = F.cross_entropy(out.detach()[:, kept], remap)
    assert float(loss.detach()) == pytest.approx(float(by_hand), rel=1e-5)
    loss.backward()
    absent = [c for c in range(width) if c not in kept]
    assert torch.equal(out.grad[:, absent], torch.zeros(n, len(absent)))
    changed = out.detach().clone()
    changed[:, absent] += 100.0
    assert float(present_class_ce(changed, y, t)) == pytest.approx(float(loss.detach()), rel=1e-6)


def test_er_ace_mask_is_per_task_in_a_mixed_batch():
    out = torch.randn(4, 3)
    y, t = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 0, 1, 1])
    # task 0 keeps columns {0, 1}, task 1 keeps {2}: its samples' loss is 0
    expected = (F.cross_entropy(out[:2, :2], y[:2], reduction="sum")) / 4
    assert float(present_class_ce(out, y, t)) == pytest.approx(float(expected), rel=1e-5)


def test_er_ace_current_term_stays_finite_where_avalanche_gives_nan():
    """Avalanche's ACECriterion takes the log of a softmax: a probability that underflows
    to 0 makes 0 · log 0 = NaN; the masked log-softmax here stays finite."""
    from avalanche.training import ACECriterion

    out = torch.tensor([[200.0, 0.0], [0.0, 1.0]])
    y, t = torch.tensor([0, 1]), torch.zeros(2, dtype=torch.long)
    assert torch.isnan(ACECriterion()(out, y, out, y))
    value = present_class_ce(out, y, t)
    assert torch.isfinite(value)
    assert float(value) == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-6)


def test_er_ace_loss_halves_current_and_memory_terms():
    """The memory term covers every class of the sample's head (with a memory batch as large
    as the memory it is the whole memory)."""
    torch.manual_seed(0)
    model = multihead_net(nn.Sequential(nn.Linear(64, 16), nn.ReLU()), MLP_SHAPE, (3, 3))
    plugin = ERACEPlugin(mem_size=6)
    xm, ym, tm = torch.randn(6, 64), torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0] * 6)
    plugin.memory.add(xm, ym, tm)
    strategy = _Stub(model)
    strategy.train_mb_size = 6
    strategy.mb_y, strategy.mb_task_id = torch.tensor([0, 0, 0, 0, 0, 0]), torch.ones(6).long()
    strategy.mb_output = model(torch.randn(6, 64), 1)
    loss = plugin.ace_loss(strategy).detach()
    with torch.no_grad():
        current = F.cross_entropy(strategy.mb_output[:, :1], torch.zeros(6, dtype=torch.long))
        memory = F.cross_entropy(model(xm, 0), ym)
    assert float(current) == 0.0  # one class present: nothing to learn from the batch
    assert float(loss) == pytest.approx(float((current + memory) / 2), rel=1e-5)
