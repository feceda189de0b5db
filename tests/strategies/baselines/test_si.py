"""Synaptic Intelligence: the path integral equals the per-parameter formula bit for bit, with
and without momentum."""

from __future__ import annotations

import pytest
import torch
from avalanche.core import SupervisedPlugin

from strategies.baselines.si import SIPlugin, SynapticIntelligence
from tests.support.regularisers import N_TRAIN, _common, _model
from tests.support.trunks import make_stream, plugin_of

pytestmark = pytest.mark.usefixtures("one_thread")


class PathIntegral(SupervisedPlugin):
    """Σ over steps of grad · (θ_after − θ_before) per parameter, by hand (Avalanche's
    ``post_update`` formula, parameter by parameter), checked against SI's at each task's end."""

    def __init__(self):
        super().__init__()
        self.total: dict[str, torch.Tensor] = {}
        self.checked = 0

    def before_training_exp(self, strategy, **kwargs):
        self.total = {n: torch.zeros(p.numel()) for n, p in strategy.model.named_parameters()}

    def before_training_iteration(self, strategy, **kwargs):
        self.before = {n: p.detach().flatten().clone()
                       for n, p in strategy.model.named_parameters()}

    def after_training_iteration(self, strategy, **kwargs):
        for n, p in strategy.model.named_parameters():
            if p.grad is not None:
                self.total[n] += p.grad.flatten() * (p.detach().flatten() - self.before[n])

    def after_training_exp(self, strategy, **kwargs):
        si = plugin_of(strategy, SIPlugin)
        for n, t in self.total.items():
            assert torch.equal(si.syn_data["trajectory"][n].data, t), n
        assert any(bool(t.abs().sum() > 0) for t in self.total.values())
        self.checked += 1


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_si_path_integral_equals_the_per_parameter_formula_bit_for_bit(momentum):
    model = _model()
    probe = PathIntegral()
    kw = _common(model, probe)
    kw["optimizer"] = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum)
    strategy = SynapticIntelligence(si_lambda=1.0, **kw)
    for exp in make_stream(2, n_train=N_TRAIN)[0].train_stream:
        strategy.train(exp, eval_streams=[])
    assert probe.checked == 2
