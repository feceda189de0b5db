"""IMM-mean and IMM-mode (strategies/baselines/imm.py), trained on a tiny task-incremental
stream through the registry: the mean merge is the exact average of the trained trunks, the
L2 transfer pulls towards the merged model, the diagonal Fisher matches a hand computation
and the mode merge is Fisher-weighted."""

from __future__ import annotations

import pytest
import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from strategies import MultiHeadNet
from strategies.baselines.imm import diagonal_fisher
from tests.support.paper_baselines import build, stream
from tests.support.trunks import clone_params

pytestmark = pytest.mark.usefixtures("one_thread")


def trunk_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.trunk.named_parameters()}


class TrunkRecorder(SupervisedPlugin):
    """Trunk at the start of each experience and right after training (before any merge)."""

    def __init__(self):
        super().__init__()
        self.start: list[dict] = []
        self.trained: list[dict] = []
        self.heads: list[dict] = []

    def before_training_exp(self, strategy, **kwargs):
        self.start.append(trunk_state(strategy.model))

    def after_training_exp(self, strategy, **kwargs):
        self.trained.append(trunk_state(strategy.model))
        t = strategy.experience.task_labels[0]
        self.heads.append(clone_params(strategy.model.heads[str(t)]))


@pytest.mark.parametrize("recipe", [False, True], ids=["fixed", "recipe"])
def test_imm_mean_writes_the_exact_average_of_the_trained_trunks(recipe):
    bm, _, _ = stream()
    rec = TrunkRecorder()
    strategy = build("imm-mean", recipe=recipe, extra=(rec,))
    model = strategy.model
    merged = []
    for t in range(3):
        strategy.train(bm.train_stream[t])
        merged.append(trunk_state(model))
        for n, p in merged[-1].items():
            hand = torch.stack([rec.trained[u][n].double() for u in range(t + 1)]).mean(0)
            torch.testing.assert_close(p, hand.float(), rtol=1e-6, atol=1e-7)
        for n, v in rec.heads[t].items():  # heads are not averaged
            assert torch.equal(model.heads[str(t)].state_dict()[n], v)
    for t in (1, 2):  # each task starts from (and is pulled towards) the merged model
        for n, v in rec.start[t].items():
            assert torch.equal(v, merged[t - 1][n])
        assert any(not torch.equal(merged[t][n], rec.trained[t][n]) for n in merged[t])


def test_imm_l2_transfer_pulls_towards_the_merged_model():
    bm, _, _ = stream(n_tasks=2)

    def drift(lam):
        rec = TrunkRecorder()
        strategy = build("imm-mean", extra=(rec,), overrides={"lambda": lam}, epochs=3)
        strategy.train(bm.train_stream[0])
        strategy.train(bm.train_stream[1])
        return sum(float((rec.trained[1][n] - rec.start[1][n]).norm()) for n in rec.start[1])

    assert drift(5.0) < 0.5 * drift(0.0)


def test_diagonal_fisher_matches_a_hand_computation():
    torch.manual_seed(0)
    model = MultiHeadNet(nn.Sequential(nn.Linear(4, 3), nn.Tanh()), 3, [2])
    x, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    data = (x, y, torch.zeros(10, dtype=torch.long))
    params = dict(model.trunk.named_parameters())
    for batch in (1, 4):
        fisher = diagonal_fisher(model, params, data, batch)
        hand = {n: torch.zeros_like(p) for n, p in params.items()}
        for i in range(0, 10, batch):
            model.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + batch], 0), y[i:i + batch]).backward()
            for n, p in params.items():
                hand[n] += len(y[i:i + batch]) * p.grad ** 2 / 10
        for n in params:
            torch.testing.assert_close(fisher[n], hand[n])
            assert fisher[n].abs().sum() > 0


def test_imm_mode_writes_the_fisher_weighted_merge():
    bm, _, _ = stream()
    rec = TrunkRecorder()
    strategy = build("imm-mode", extra=(rec,))
    plugin = strategy.imm_plugin
    model = strategy.model
    fishers = []
    for t in range(3):
        strategy.train(bm.train_stream[t])
        fishers.append({n: f.clone() for n, f in plugin.last_fisher.items()})
        eps = plugin.eps
        for n, p in model.trunk.named_parameters():
            w = [fishers[u][n].double() + eps for u in range(t + 1)]
            num = sum(wu * rec.trained[u][n].double() for u, wu in enumerate(w))
            torch.testing.assert_close(p.detach(), (num / sum(w)).float(), rtol=1e-6, atol=1e-7)
    # the Fisher weighting matters: the merge is neither the last model nor the plain mean
    final = trunk_state(model)
    mean = {n: torch.stack([r[n] for r in rec.trained]).mean(0) for n in final}
    assert any(not torch.allclose(final[n], mean[n], atol=1e-5) for n in final)
    assert any(not torch.equal(final[n], rec.trained[-1][n]) for n in final)
