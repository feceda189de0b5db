"""The recipe rebuilds the optimizer (lr / 3) with every setting kept, for every optimizer."""

from types import SimpleNamespace

import pytest
import torch

from strategies.training.recipe import rebuild_optimizer

OPTIMIZERS = [
    (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}),
    (torch.optim.Adam, {"lr": 0.01, "weight_decay": 1e-3, "betas": (0.8, 0.99)}),
    (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.01}),
]


@pytest.mark.parametrize(("cls", "kwargs"), OPTIMIZERS, ids=lambda o: getattr(o, "__name__", ""))
def test_rebuild_keeps_type_and_settings(cls, kwargs):
    model = torch.nn.Linear(3, 2)
    old = cls(model.parameters(), **kwargs)
    model(torch.randn(4, 3)).sum().backward()
    old.step()  # non-empty state that the rebuild must drop
    strategy = SimpleNamespace(optimizer=old, model=model)
    rebuild_optimizer(strategy, kwargs["lr"] / 3)
    new = strategy.optimizer
    assert type(new) is cls and new is not old
    assert new.param_groups[0]["lr"] == pytest.approx(kwargs["lr"] / 3)
    for key, value in kwargs.items():
        if key != "lr":
            assert new.param_groups[0][key] == value
    assert not new.state
    assert [id(p) for p in new.param_groups[0]["params"]] == [id(p) for p in model.parameters()]
