"""Progressive networks (strategies/baselines/pnn.py): the columns are narrower than the trunk
and read the earlier columns."""

from __future__ import annotations

import pytest
import torch

from tests.support.paper_baselines import build, stream
from tests.support.trunks import (
    TRUNKS,
    logits,
    multihead_net,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pnn_columns_are_narrower_and_read_the_earlier_columns():
    bm, _, test = stream()
    strategy = build("pnn")
    model = strategy.model
    trunk_params = sum(p.numel() for p in multihead_net(TRUNKS["mlp"][0](), (64,))
                       .trunk.parameters())
    columns = sum(p.numel() for p in model.columns.parameters())
    assert columns <= trunk_params
    assert all(w < 32 for w in model.widths)  # narrower than the 32-unit trunk layers
    assert [len(model.columns[str(t)].adapters) for t in range(3)] == [0, 1, 1]
    for t in range(3):
        strategy.train(bm.train_stream[t])
    x = test[2][0]
    out = logits(model, x, 2)
    with torch.no_grad():
        model.columns["0"].layers[0].weight.add_(1.0)
    assert not torch.equal(logits(model, x, 2), out)  # laterals carry column 0 into task 2
