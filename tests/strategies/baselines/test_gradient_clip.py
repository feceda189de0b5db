"""Per-strategy gradient clipping (as in the reference implementation, joansj/hat): the global
norm is bounded before the optimizer step, and the reference clipgrad values cover the
registry."""

from __future__ import annotations

import math

import pytest
import torch
from avalanche.core import SupervisedPlugin

from strategies import (
    REFERENCE_CLIPGRAD,
    STRATEGIES,
    GradientClipPlugin,
)
from tests.support.regularisers import N_TRAIN, _common, _model
from tests.support.trunks import (
    MLP_SHAPE,
    make_stream,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class GradProbe(SupervisedPlugin):
    """Raw gradients after the backward (before the clipping plugin, which acts in
    ``before_update``), the weights before the step."""

    def __init__(self):
        super().__init__()
        self.raw: list[list[torch.Tensor]] = []
        self.w_pre: list[list[torch.Tensor]] = []

    def after_backward(self, strategy, **kwargs):
        self.raw.append([p.grad.clone() for p in strategy.model.parameters()
                         if p.grad is not None])
        self.w_pre.append([p.detach().clone() for p in strategy.model.parameters()
                            if p.grad is not None])


class StepProbe(SupervisedPlugin):
    """The gradients the optimizer steps with (placed after the clipping plugin) and the
    weights after the step."""

    def __init__(self):
        super().__init__()
        self.used: list[list[torch.Tensor]] = []
        self.w_post: list[list[torch.Tensor]] = []

    def before_update(self, strategy, **kwargs):
        self.used.append([p.grad.clone() for p in strategy.model.parameters()
                          if p.grad is not None])

    def after_update(self, strategy, **kwargs):
        self.w_post.append([p.detach().clone() for p in strategy.model.parameters()
                           if p.grad is not None])


def _global_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


@pytest.mark.parametrize("max_norm", [1e-3, 1e6])
def test_gradient_clip_bounds_the_global_norm_before_the_step(max_norm):
    from avalanche.training import Naive

    bm, _, _ = make_stream(1, MLP_SHAPE, n_train=N_TRAIN)
    raw, step, lr = GradProbe(), StepProbe(), 0.05
    clip = GradientClipPlugin(max_norm)
    strategy = Naive(**_common(_model(1), raw, clip, step, epochs=1, lr=lr))
    strategy.train(bm.train_stream[0])
    assert len(raw.raw) == len(step.used) == N_TRAIN // 8
    for g_raw, g_used, before, after in zip(raw.raw, step.used, raw.w_pre, step.w_post,
                                            strict=True):
        norm = _global_norm(g_raw)
        if norm <= max_norm:  # multiplied by exactly 1.0: bit-identical
            assert all(torch.equal(a, b) for a, b in zip(g_used, g_raw, strict=True))
        else:  # scaled to the bound, all tensors by one factor
            assert math.isclose(float(_global_norm(g_used)), max_norm, rel_tol=1e-4)
            coef = max_norm / (norm + 1e-6)
            for a, b in zip(g_used, g_raw, strict=True):
                torch.testing.assert_close(a, b * coef)
        for w0, w1, g in zip(before, after, g_used, strict=True):  # the step used them
            assert torch.equal(w1, w0.add(g, alpha=-lr))
    norms = [float(_global_norm(g)) for g in raw.raw]
    assert (min(norms) > max_norm) if max_norm < 1 else (max(norms) < max_norm)


def test_reference_clipgrad_values_cover_the_registry():
    assert set(REFERENCE_CLIPGRAD) == set(STRATEGIES)
    assert REFERENCE_CLIPGRAD["ewc"] == REFERENCE_CLIPGRAD["lwf"] == 100
    assert REFERENCE_CLIPGRAD["lfl"] == 200
    assert REFERENCE_CLIPGRAD["imm-mode"] == REFERENCE_CLIPGRAD["pathnet"] == 1000
    assert {REFERENCE_CLIPGRAD[n] for n in ("naive", "sgd-f", "joint", "hat", "pnn",
                                            "imm-mean", "si")} == {10000}
    with pytest.raises(ValueError):
        GradientClipPlugin(0.0)
