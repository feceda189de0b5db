"""LwF follows the reference implementation (joansj/hat, ``src/approaches``) where Avalanche's
plugin differs from it: the teacher predicts in evaluation mode (Avalanche keeps a
training-mode copy: dropout); the distillation term equals Avalanche's bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.models import avalanche_forward
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import (
    LwF,
    LwFPlugin,
)
from tests.support.regularisers import N_TRAIN, _common, _model, _recipe
from tests.support.trunks import (
    MLP_SHAPE,
    logits,
    make_stream,
    plugin_of,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class TeacherProbe(SupervisedPlugin):
    """Before LwF adds its term: the teacher's mode and two of its predictions of the batch."""

    def __init__(self):
        super().__init__()
        self.task0_model = None
        self.modes: list[bool] = []
        self.pairs: list[tuple[dict, dict]] = []
        self.task0_outputs: list[torch.Tensor] = []

    def after_training_exp(self, strategy, **kwargs):
        if self.task0_model is None:  # runs before LwF's copy: the same (restored) weights
            self.task0_model = copy.deepcopy(strategy.model)

    @torch.no_grad()
    def before_backward(self, strategy, **kwargs):
        teacher = plugin_of(strategy, LwFPlugin).lwf.prev_model
        if teacher is None:
            return
        self.modes.append(any(m.training for m in teacher.modules()))
        x = strategy.mb_x
        self.pairs.append((avalanche_forward(teacher, x, None),
                           avalanche_forward(teacher, x, None)))
        self.task0_outputs.append(logits(self.task0_model, x, 0))


def test_lwf_teacher_predicts_in_eval_mode():
    """The reference calls ``model_old.eval()``: deterministic targets, the task-1 model's
    evaluation-mode outputs (Avalanche's copy keeps dropout on)."""
    bm, _, _ = make_stream(2, MLP_SHAPE, n_train=N_TRAIN)
    probe = TeacherProbe()
    strategy = LwF(alpha=2.0, temperature=1.0, **_common(_model(), _recipe(), probe))
    strategy.train(bm.train_stream[0])
    strategy.train(bm.train_stream[1])
    assert probe.pairs and not any(probe.modes)
    for (first, second), want in zip(probe.pairs, probe.task0_outputs, strict=True):
        assert torch.equal(first[0], second[0])
        assert torch.equal(first[0], want)
    teacher = plugin_of(strategy, LwFPlugin).lwf.prev_model
    assert not any(p.requires_grad for p in teacher.parameters())


@settings(max_examples=40, deadline=None)
@given(n_classes=st.integers(1, 12), batch=st.integers(1, 70), temperature=st.sampled_from(
    [0.5, 1.0, 2.0, 4.0]), subset=st.booleans(), seed=st.integers(0, 2**16))
def test_lwf_distillation_equals_avalanches_bit_for_bit(n_classes, batch, temperature, subset,
                                                        seed):
    from avalanche.training.regularization import LearningWithoutForgetting

    from strategies.baselines.lwf import _Distillation

    g = torch.Generator().manual_seed(seed)
    out = (torch.randn(batch, n_classes, generator=g) * 5).requires_grad_()
    prev = torch.randn(batch, n_classes, generator=g) * 5
    units = set(range(n_classes))
    if subset and n_classes > 1:  # classes seen: not every unit of the head
        units = set(torch.randperm(n_classes, generator=g)[: n_classes - 1].tolist())
    ours = _Distillation(1.0, temperature)._distillation_loss(out, prev, units)
    (grad,) = torch.autograd.grad(ours, out)
    theirs = LearningWithoutForgetting(1.0, temperature)._distillation_loss(out, prev, units)
    (grad_ref,) = torch.autograd.grad(theirs, out)
    assert torch.equal(ours, theirs) and torch.equal(grad, grad_ref)


def test_class_incremental_lwf_distils_every_old_class_in_one_softmax():
    """With an expanding head the distillation is KL over the softmax of all the classes the
    teacher saw (not one per earlier head), on the student's logits of those classes."""
    from strategies.baselines.lwf import _Distillation
    from strategies.common.expanding import ExpandingHeadNet
    from strategies.common.multihead import MultiHeadNet

    torch.manual_seed(0)
    model = ExpandingHeadNet.from_multihead(MultiHeadNet(torch.nn.Linear(6, 5), 5, [2, 3, 2]))
    model.see([1])
    distil = _Distillation(alpha=1.0, temperature=2.0)
    distil.prev_model = copy.deepcopy(model).eval()  # the teacher saw tasks 0 and 1
    model.see([2])
    x = torch.randn(7, 6)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        got = distil._lwf_penalty(model(x), x, model)
        old = distil.prev_model(x)
        assert old.shape[1] == 5
        want = torch.nn.functional.kl_div(
            torch.log_softmax(model(x)[:, :5] / 2.0, dim=1),
            torch.softmax(old / 2.0, dim=1), reduction="batchmean")
    assert torch.allclose(got, want)
    distil.prev_model = None
    assert distil._lwf_penalty(model(x), x, model) == 0
