"""LFL (strategies/baselines/lfl.py), trained on a tiny task-incremental stream through the
registry: the penalty is the summed feature distance to the previous model, it keeps the
features closer to it, and the feature pass leaves the trunk in its mode."""

from __future__ import annotations

import pytest
import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from tests.support.paper_baselines import build, stream

pytestmark = pytest.mark.usefixtures("one_thread")


class FeatureCheck(SupervisedPlugin):
    """Hand computation of LFL's penalty for each mini-batch (runs before the LFL plugin)."""

    def __init__(self):
        super().__init__()
        self.prev = None
        self.prevs: list[nn.Module] = []
        self.hand: list[torch.Tensor] = []
        self.seen: list[torch.Tensor] = []
        self.training_mode: list[bool] = []

    def after_training_exp(self, strategy, **kwargs):
        import copy

        self.prev = copy.deepcopy(strategy.model.trunk).eval()
        self.prevs.append(self.prev)

    @torch.no_grad()
    def before_backward(self, strategy, **kwargs):
        if self.prev is None:
            return
        trunk = strategy.model.trunk
        trunk.eval()
        now = trunk(strategy.mb_x)
        trunk.train()
        self.hand.append(((now - self.prev(strategy.mb_x)) ** 2).sum() / 2)

    def after_backward(self, strategy, **kwargs):
        lfl = next(p for p in strategy.plugins if hasattr(p, "last_penalty"))
        if self.prev is not None and lfl.last_penalty is not None:
            self.seen.append(lfl.last_penalty.clone())
            self.training_mode.append(strategy.model.training)


def test_lfl_penalty_is_the_summed_feature_distance_to_the_previous_model():
    bm, _, _ = stream(n_tasks=2)
    check = FeatureCheck()
    strategy = build("lfl", extra=(check,))
    strategy.train(bm.train_stream[0])
    strategy.train(bm.train_stream[1])
    assert len(check.hand) == len(check.seen) > 1
    assert float(check.seen[0]) == 0.0  # same weights, no dropout: identical features
    assert float(check.seen[-1]) > 0
    for hand, seen in zip(check.hand, check.seen, strict=True):
        torch.testing.assert_close(seen, hand)
    assert all(check.training_mode)  # dropout stays on for the training pass


def test_lfl_keeps_the_features_closer_to_the_previous_model():
    bm, train, _ = stream(n_tasks=2)
    x_new = train[1][0]

    def distance(overrides):
        check = FeatureCheck()
        strategy = build("lfl", extra=(check,), overrides=overrides, epochs=3)
        strategy.train(bm.train_stream[0])
        strategy.train(bm.train_stream[1])
        trunk = strategy.model.trunk.eval()
        with torch.no_grad():
            return float((trunk(x_new) - check.prevs[0](x_new)).norm())

    assert distance({"lambda": 0.05}) < 0.5 * distance({"lambda": 0.0})
    assert distance({"lambda": 0.05, "features": "train"}) < distance({"lambda": 0.0})


@pytest.mark.parametrize("mode", [True, False])
def test_lfl_feature_pass_leaves_the_trunk_in_its_mode(mode):
    """LFL computes the features in eval mode and restores the trunk's own mode (a sliced
    Sequential is always in training mode, so its mode must not be the one restored)."""
    from types import SimpleNamespace

    from strategies.baselines.lfl import LFLPlugin

    trunk = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Dropout(0.5), nn.Linear(3, 3),
                          nn.Dropout(0.5))
    model = SimpleNamespace(trunk=trunk, heads=nn.ModuleDict())
    x = torch.randn(5, 4)
    strategy = SimpleNamespace(model=model, mb_x=x,
                               experience=SimpleNamespace(task_labels=[0]))
    lfl = LFLPlugin(features="eval")
    trunk.train(mode)
    lfl.before_training_exp(strategy)
    feat = lfl._current_features(strategy)
    assert [m.training for m in trunk.modules()] == [mode] * 6
    with torch.no_grad():
        assert torch.equal(feat, trunk.eval()[:4](x))  # features without the last dropout
