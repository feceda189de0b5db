"""The quadratic penalties of EWC and SI computed as one autograd node give autograd's numbers
bit for bit, under SGD, momentum and Adam."""

from __future__ import annotations

import pytest
import torch
from avalanche.core import SupervisedPlugin

from strategies import (
    EWC,
    EWCPlugin,
)
from strategies.baselines.si import SIPlugin, SynapticIntelligence
from tests.support.regularisers import N_TRAIN, _common, _model
from tests.support.trunks import make_stream, plugin_of

pytestmark = pytest.mark.usefixtures("one_thread")


def _train_with_penalty(name: str, autograd: bool, opt: str) -> dict[str, torch.Tensor]:
    model = _model(3)
    kw = _common(model, epochs=2)
    params = model.parameters()
    kw["optimizer"] = {"sgd": lambda: torch.optim.SGD(params, lr=0.05),
                       "momentum": lambda: torch.optim.SGD(params, lr=0.05, momentum=0.9),
                       "adam": lambda: torch.optim.Adam(params, lr=1e-3)}[opt]()
    if name == "ewc":
        strategy = EWC(ewc_lambda=1e3, **kw)
        plugin = plugin_of(strategy, EWCPlugin)
    else:
        strategy = SynapticIntelligence(si_lambda=1e2, **kw)
        plugin = plugin_of(strategy, SIPlugin)
    plugin.autograd_penalty = autograd
    losses = []
    probe = type("LossProbe", (SupervisedPlugin,), {
        "after_backward": lambda self, s, **k: losses.append(float(s.loss))})()
    strategy.plugins.append(probe)
    torch.manual_seed(1)
    for exp in make_stream(3, n_train=N_TRAIN)[0].train_stream:
        strategy.train(exp, eval_streams=[])
    return {"losses": torch.tensor(losses),
            **{n: p.detach().clone() for n, p in model.named_parameters()}}


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("name", ["ewc", "si"])
def test_penalty_node_gives_autograds_numbers_bit_for_bit(name, opt):
    """EWC's and SI's penalties as one autograd node: the same loss values and parameters
    as autograd's own operations, over three tasks (two earlier Fishers for EWC)."""
    ref = _train_with_penalty(name, True, opt)
    fast = _train_with_penalty(name, False, opt)
    assert ref.keys() == fast.keys()
    differ = [k for k in ref  # float32 compared as int32: +0 and -0 differ too
              if not torch.equal(ref[k].view(torch.int32), fast[k].view(torch.int32))]
    assert not differ, differ
    assert len(ref["losses"]) > 0
