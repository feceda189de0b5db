"""EWC follows the reference implementation (joansj/hat, ``src/approaches``): its Fisher sees
the training part only, never the held-out validation samples."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin

from strategies import (
    EWC,
    EWCPlugin,
    materialize,
)
from strategies.training.recipe import split_indices
from tests.support.regularisers import N_TRAIN, VALID, _common, _model, _recipe
from tests.support.trunks import (
    MLP_SHAPE,
    make_stream,
    plugin_of,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class FisherProbe(SupervisedPlugin):
    """Just before EWC's ``after_training_exp`` (it is appended after this one): the Fisher
    Avalanche's estimator gives on the training indices, computed by hand."""

    def __init__(self, x_train: torch.Tensor, y_train: torch.Tensor, mode: str):
        super().__init__()
        self.x, self.y, self.mode = x_train, y_train, mode
        self.fisher: dict[str, torch.Tensor] = {}
        self.fisher_all: dict[str, torch.Tensor] = {}

    def _fisher(self, model, x, y, batch: int) -> dict[str, torch.Tensor]:
        names, params = zip(*model.named_parameters(), strict=True)
        out = {n: torch.zeros_like(p) for n, p in zip(names, params, strict=True)}
        was = model.training
        model.eval()
        n_batches = 0
        for i in range(0, len(x), batch):
            loss = F.cross_entropy(model(x[i:i + batch], 0), y[i:i + batch])
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for n, g in zip(names, grads, strict=True):
                if g is not None:
                    out[n] += g ** 2
            n_batches += 1
        model.train(was)
        return {n: f / n_batches for n, f in out.items()}

    def after_training_exp(self, strategy, **kwargs):
        if self.fisher:
            return
        idx = torch.arange(len(self.x))
        if self.mode == "paper":
            idx = torch.as_tensor(split_indices(len(self.x), VALID, 0, 0)[0])
        self.fisher = self._fisher(strategy.model, self.x[idx], self.y[idx],
                                   strategy.train_mb_size)
        self.fisher_all = self._fisher(strategy.model, self.x, self.y, strategy.train_mb_size)


@pytest.mark.parametrize("mode", ["paper", "fixed"])
def test_ewc_fisher_uses_the_training_part_only(monkeypatch, mode):
    bm, train, _ = make_stream(1, MLP_SHAPE, n_train=N_TRAIN)
    x, y = train[0]
    seen = []
    # Avalanche's estimator itself: the dataset it finally computes the Fisher on
    from avalanche.training.plugins import EWCPlugin as AvalancheEWCPlugin

    original = AvalancheEWCPlugin.compute_importances

    def spy(self, model, criterion, optimizer, dataset, *args, **kwargs):
        seen.append(materialize(dataset)[0].clone())
        return original(self, model, criterion, optimizer, dataset, *args, **kwargs)

    monkeypatch.setattr(AvalancheEWCPlugin, "compute_importances", spy)
    probe = FisherProbe(x, y, mode)
    strategy = EWC(ewc_lambda=100.0, **_common(_model(1), _recipe(mode), probe))
    strategy.train(bm.train_stream[0])

    train_idx, valid_idx = split_indices(N_TRAIN, VALID, 0, 0)
    want = x[torch.as_tensor(train_idx)] if mode == "paper" else x
    assert len(seen) == 1 and torch.equal(seen[0], want)  # exactly the training samples
    if mode == "paper":
        valid = x[torch.as_tensor(valid_idx)]
        assert not (seen[0][:, None] == valid[None]).all(-1).any()  # no validation sample
    importances = plugin_of(strategy, EWCPlugin).importances[0]
    for name, fisher in probe.fisher.items():
        torch.testing.assert_close(importances[name].data, fisher, rtol=1e-5, atol=1e-12)
    if mode == "paper":  # the check can tell the two apart
        assert any(not torch.allclose(probe.fisher[n], probe.fisher_all[n], rtol=1e-3)
                   for n in probe.fisher)
