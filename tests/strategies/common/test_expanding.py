"""The expanding head: one classifier over every class seen, the task label unused."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from strategies import MultiHeadNet
from strategies.common.expanding import ExpandingHeadNet


def _net(widths) -> ExpandingHeadNet:
    torch.manual_seed(0)
    return ExpandingHeadNet.from_multihead(MultiHeadNet(nn.Linear(5, 7), 7, widths))


class _Exp:
    def __init__(self, task: int, classes):
        self.task_labels = [task]
        self.classes_in_this_experience = list(classes)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=5), st.data())
def test_the_output_is_the_seen_heads_in_task_order(widths, data):
    net = _net(widths)
    seen = data.draw(st.integers(1, len(widths)))
    net.see([seen - 1])
    x = torch.randn(3, 5)
    out = net(x, torch.tensor([seen - 1, 0, 0]))
    assert out.shape == (3, sum(widths[:seen]))
    assert net.offsets == [sum(widths[:u]) for u in range(len(widths))]
    for u in range(seen):  # each task's head is its block of columns
        lo = net.offsets[u]
        assert torch.equal(out[:, lo:lo + widths[u]], net.task_logits(x, u))
    # no task label, or another one: the same output
    assert torch.equal(out, net(x, None))


def test_training_a_task_grows_the_head_and_evaluation_does_not():
    net = _net([2, 2, 2])
    net.train()
    net.adaptation(_Exp(1, [2, 3]))  # global labels
    assert net.seen == 2 and net(torch.randn(1, 5)).shape == (1, 4)
    net.eval()
    net.adaptation(_Exp(2, [4, 5]))
    assert net.seen == 2
    net.train()
    net.adaptation(_Exp(0, [0, 1]))  # an earlier task never shrinks it
    assert net.seen == 2


def test_it_shares_the_multihead_modules_and_refuses_task_dependent_weights():
    base = MultiHeadNet(nn.Linear(5, 7), 7, [2, 3])
    net = ExpandingHeadNet.from_multihead(base)
    assert net.trunk is base.trunk and net.heads["1"] is base.heads["1"]

    class Gated(MultiHeadNet):
        pass

    with pytest.raises(TypeError, match="must not depend on the task"):
        ExpandingHeadNet.from_multihead(Gated(nn.Linear(5, 7), 7, [2]))
    with pytest.raises(RuntimeError, match="train a task first"):
        net(torch.randn(1, 5))
