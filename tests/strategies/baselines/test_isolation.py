"""PNN and PathNet isolate the tasks: training later tasks leaves the earlier tasks' outputs bit
identical, on each trunk, optimizer and training recipe."""

from __future__ import annotations

import pytest
import torch

from strategies import (
    PathNetNet,
    ProgressiveNet,
)
from tests.support.paper_baselines import SMALL_PATHNET, build, stream
from tests.support.trunks import logits

pytestmark = pytest.mark.usefixtures("one_thread")


ISOLATION = [("pnn", {}), ("pathnet", SMALL_PATHNET)]


@pytest.mark.parametrize(("name", "overrides"), ISOLATION, ids=["pnn", "pathnet"])
@pytest.mark.parametrize(("trunk", "opt", "recipe"), [
    ("mlp", "sgd_momentum", False), ("mlp", "adamw", True), ("conv", "adamw", False),
    ("conv", "sgd_momentum", True),
])
def test_earlier_tasks_outputs_stay_bit_identical(name, overrides, trunk, opt, recipe):
    bm, _, test = stream(trunk)
    strategy = build(name, trunk=trunk, opt=opt, recipe=recipe, overrides=overrides)
    model = strategy.model
    assert isinstance(model, ProgressiveNet if name == "pnn" else PathNetNet)
    assert model.tasks == [0, 1, 2]
    outs = {}
    for t in range(3):
        before = logits(model, test[t][0], t)
        strategy.train(bm.train_stream[t])
        outs[t] = logits(model, test[t][0], t)
        assert not torch.equal(outs[t], before)  # the task did train
        for u in range(t):
            assert torch.equal(logits(model, test[u][0], u), outs[u]), (t, u)
