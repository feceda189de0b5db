"""SGD-F (strategies/baselines/sgd_frozen.py), trained on a tiny task-incremental stream through
the registry: after the first task only the new heads change, with carried optimizer state
or under the training recipe."""

from __future__ import annotations

import pytest
import torch

from tests.support.paper_baselines import build, stream
from tests.support.trunks import (
    clone_params,
    logits,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("recipe", [False, True], ids=["carried-state", "recipe"])
@pytest.mark.parametrize("opt", ["sgd_momentum", "adamw"])
def test_sgd_f_changes_only_the_new_heads(opt, recipe):
    bm, _, test = stream()
    strategy = build("sgd-f", opt=opt, recipe=recipe)
    model = strategy.model
    initial = clone_params(model)
    snaps, first = [], None
    for t in range(3):
        strategy.train(bm.train_stream[t])
        snaps.append(clone_params(model))
        first = logits(model, test[0][0], 0) if first is None else first
    trunk = [n for n in initial if n.startswith("trunk.")]
    assert any(not torch.equal(snaps[0][n], initial[n]) for n in trunk)  # task 1 trains it
    for t in (1, 2):
        for n in trunk:
            assert torch.equal(snaps[t][n], snaps[0][n]), n
        head = [n for n in initial if n.startswith(f"heads.{t}.")]
        assert all(not torch.equal(snaps[t][n], snaps[t - 1][n]) for n in head)
        for u in range(t):  # old heads bit-identical
            for n in (n for n in initial if n.startswith(f"heads.{u}.")):
                assert torch.equal(snaps[t][n], snaps[u][n]), n
    assert torch.equal(logits(model, test[0][0], 0), first)
