"""The paper's training recipe (hat-reference §2) as ``TrainingRecipePlugin``.

The validation loss is scripted (monkeypatched) so that the schedule is known exactly:
lr ÷ lr_factor with a rebuilt optimizer after ``patience`` epochs without improvement, a stop
once lr < lr_min, and the best-validation weights restored at the end of the experience.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training import Naive
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import HAT, ConfigError, RecipeConfig, TrainingRecipePlugin
from strategies.hat import attention_regulariser
from strategies.training.recipe import split_indices
from tests.support.trunks import (
    MLP_SHAPE,
    clone_params,
    fast_plugins,
    hat_net,
    keep_subnormals,  # noqa: F401  (autouse fixture)
    make_stream,
    mlp_trunk,
    multihead_net,
    quiet_evaluator,
)


class EpochRecorder(SupervisedPlugin):
    """Per epoch: the optimizer object, its lr, the weights and the number of batches.

    Put it *before* the recipe plugin: its ``after_training_epoch`` then sees the epoch's own
    weights and optimizer, before the recipe reacts (restore / rebuild)."""

    def __init__(self):
        super().__init__()
        self.start_optimizer = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lrs: list[float] = []
        self.weights: list[dict[str, torch.Tensor]] = []
        self.batches: list[int] = []
        self.samples: list[int] = []

    def before_training_epoch(self, strategy, **kwargs):
        self.batches.append(0)
        self.samples.append(0)
        if self.start_optimizer is None:
            self.start_optimizer = strategy.optimizer

    def after_training_iteration(self, strategy, **kwargs):
        self.batches[-1] += 1
        self.samples[-1] += len(strategy.mb_x)

    def after_training_epoch(self, strategy, **kwargs):
        self.optimizers.append(strategy.optimizer)
        self.lrs.append(strategy.optimizer.param_groups[0]["lr"])
        self.weights.append(clone_params(strategy.model))


def _script(monkeypatch, losses):
    it = iter(losses)
    calls = []

    def scripted(self, strategy):
        calls.append(strategy.clock.train_exp_epochs)
        return next(it)

    monkeypatch.setattr(TrainingRecipePlugin, "validation_loss", scripted)
    return calls


def _naive(recipe, rec, epochs, lr=0.1, n_train=40, optimizer="sgd"):
    torch.manual_seed(0)
    bm, _, _ = make_stream(2, MLP_SHAPE, n_train=n_train)
    model = multihead_net(mlp_trunk(), MLP_SHAPE)
    opt = {
        "sgd": lambda ps: torch.optim.SGD(ps, lr=lr, momentum=0.9, weight_decay=1e-4),
        "adam": lambda ps: torch.optim.Adam(ps, lr=lr, betas=(0.8, 0.95)),
        "adamw": lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=0.01),
    }[optimizer](model.parameters())
    strategy = Naive(
        model=model, optimizer=opt, train_mb_size=8, train_epochs=epochs, eval_mb_size=16,
        plugins=fast_plugins(rec, recipe), evaluator=quiet_evaluator(),
    )
    return bm, model, strategy


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_lr_schedule_rebuilt_optimizer_stop_and_best_restore(monkeypatch, optimizer):
    patience, factor, lr0, lr_min = 2, 3.0, 0.1, 0.005
    # epoch:    1    2    3    4    5    6     7     8
    losses = [1.0, 0.5, 0.8, 0.9, 0.7, 0.95, 0.99, 0.98, 0.1, 0.1]
    _script(monkeypatch, losses)
    rec = EpochRecorder()
    recipe = TrainingRecipePlugin(
        RecipeConfig(patience=patience, lr_factor=factor, lr_min=lr_min, valid_fraction=0.25),
        lr=lr0,
    )
    bm, model, strategy = _naive(recipe, rec, epochs=50, optimizer=optimizer)
    given_optimizer = strategy.optimizer
    strategy.train(bm.train_stream[0])

    # best at epoch 2; no improvement in 3, 4 -> lr/3; in 5, 6 -> lr/9; in 7, 8 -> lr/27 <
    # lr_min: stop after epoch 8 (of at most 50)
    assert recipe.epochs_trained == 8 == len(rec.lrs)
    want = [lr0] * 4 + [lr0 / factor] * 2 + [lr0 / factor**2] * 2
    assert rec.lrs[:3] == want[:3]
    # the lr changes take effect at the end of epochs 4 and 6: epochs 5-6 and 7-8 run with it
    assert all(math.isclose(a, b) for a, b in zip(rec.lrs[4:], want[4:], strict=True))
    assert math.isclose(recipe.lr, lr0 / factor**3)
    # a new optimizer at the experience start and at each lr change, of the same type
    assert rec.start_optimizer is not given_optimizer
    assert rec.start_optimizer.param_groups[0]["lr"] == lr0
    ids = [id(o) for o in rec.optimizers]
    assert ids[0] == id(rec.start_optimizer)
    changes = [i for i in range(1, len(ids)) if ids[i] != ids[i - 1]]
    assert changes == [4, 6]
    assert len({id(o) for o in rec.optimizers}) == 3
    for o in rec.optimizers:
        assert type(o) is type(given_optimizer)
        for key, value in given_optimizer.param_groups[0].items():  # same settings
            if key not in ("params", "lr", "initial_lr"):
                assert o.param_groups[0][key] == value, key
        assert {id(p) for p in o.param_groups[0]["params"]} == {id(p) for p in
                                                                model.parameters()}
    # the best-validation weights (epoch 2) are restored, not the last ones (epoch 8)
    final = clone_params(model)
    assert all(torch.equal(final[n], rec.weights[1][n]) for n in final)
    assert any(not torch.equal(final[n], rec.weights[-1][n]) for n in final)


def test_rebuilt_optimizer_has_fresh_state(monkeypatch):
    """SGD momentum buffers survive an improving epoch, but not a rebuild (lr change) nor the
    start of the next experience (the reference starts every task afresh)."""
    _script(monkeypatch, [3.0, 2.0, 1.0] + [1.0, 2.0, 3.0])
    rec = EpochRecorder()
    recipe = TrainingRecipePlugin(RecipeConfig(patience=1, lr_min=1e-9, valid_fraction=0.25),
                                  lr=0.1)

    class StateAtStart(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.sizes: list[int] = []

        def before_training_epoch(self, strategy, **kwargs):
            self.sizes.append(len(strategy.optimizer.state))

    probe = StateAtStart()
    bm, _, strategy = _naive(recipe, rec, epochs=3)
    strategy.plugins.append(probe)
    strategy.train(bm.train_stream[0])
    strategy.train(bm.train_stream[1])
    # experience 0 always improves (state kept); experience 1 starts afresh, then its
    # epochs 2 and 3 do not improve (lr ÷ 3, optimizer rebuilt after each)
    k = probe.sizes[1]
    assert k > 0
    assert probe.sizes == [0, k, k, 0, k, 0]
    assert rec.lrs[3] == 0.1  # the next experience restarts from the initial lr


def test_max_epochs_bound_and_restore_on_the_last_epoch(monkeypatch):
    # keeps improving except the last epoch: trains all train_epochs, restores epoch 3
    _script(monkeypatch, [1.0, 0.9, 0.8, 0.85])
    rec = EpochRecorder()
    recipe = TrainingRecipePlugin(RecipeConfig(patience=5, valid_fraction=0.25), lr=0.1)
    bm, model, strategy = _naive(recipe, rec, epochs=4)
    strategy.train(bm.train_stream[0])
    assert recipe.epochs_trained == 4
    assert len({id(o) for o in rec.optimizers}) == 1  # never rebuilt within the experience
    final = clone_params(model)
    assert all(torch.equal(final[n], rec.weights[2][n]) for n in final)


def test_stop_on_the_last_epoch_does_not_skip_the_next_experience(monkeypatch):
    """lr < lr_min exactly on the last allowed epoch, then a second experience in the same
    ``train`` call: it must still train its epochs."""
    _script(monkeypatch, [1.0, 2.0, 3.0] + [1.0, 0.9, 0.8])
    rec = EpochRecorder()
    recipe = TrainingRecipePlugin(
        RecipeConfig(patience=2, lr_factor=3.0, lr_min=0.05, valid_fraction=0.25), lr=0.1
    )
    bm, _, strategy = _naive(recipe, rec, epochs=3)
    strategy.train(bm.train_stream[:2])
    assert len(rec.batches) == 6
    assert recipe.epochs_trained == 3


def test_fixed_mode_trains_exactly_train_epochs_on_all_data(monkeypatch):
    calls = _script(monkeypatch, [])  # must never be asked for a validation loss
    rec = EpochRecorder()
    recipe = TrainingRecipePlugin(RecipeConfig(mode="fixed"), lr=0.1)
    bm, _, strategy = _naive(recipe, rec, epochs=3, n_train=40)
    given_optimizer = strategy.optimizer
    strategy.train(bm.train_stream[0])
    assert recipe.epochs_trained == 3
    assert rec.samples == [40, 40, 40]  # no validation hold-out
    assert rec.batches == [5, 5, 5]
    assert calls == []
    assert strategy.optimizer is given_optimizer
    assert recipe.last_valid_loss is None


def test_paper_mode_holds_out_the_validation_fraction():
    rec = EpochRecorder()
    recipe = TrainingRecipePlugin(RecipeConfig(valid_fraction=0.25, patience=5), lr=0.05)
    bm, _, strategy = _naive(recipe, rec, epochs=2, n_train=40)
    strategy.train(bm.train_stream[0])
    assert rec.samples == [30, 30]
    assert len(recipe.valid_data) == 10
    assert recipe.last_valid_loss is not None and math.isfinite(recipe.last_valid_loss)


def test_validation_loss_is_cross_entropy_plus_hat_penalty():
    """Unscripted: the recipe's validation loss = mean CE (eval mode) + c·R at smax."""
    torch.manual_seed(0)
    bm, _, _ = make_stream(1, MLP_SHAPE, n_train=40)
    model = hat_net(mlp_trunk(), MLP_SHAPE)
    recipe = TrainingRecipePlugin(RecipeConfig(valid_fraction=0.25, patience=5), lr=0.05)
    c = 0.6

    class Check(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.seen: list[tuple[float, float]] = []

        def after_training_epoch(self, strategy, **kwargs):
            x = torch.stack([recipe.valid_data[i][0] for i in range(len(recipe.valid_data))])
            y = torch.tensor([recipe.valid_data[i][1] for i in range(len(recipe.valid_data))])
            model.eval()
            with torch.no_grad():
                ce = float(torch.nn.functional.cross_entropy(model(x, 0), y))
                reg = float(attention_regulariser(model.masks(0), model.cumulative_masks()))
            model.train()
            self.seen.append((recipe.validation_loss(strategy), ce + c * reg))

    check = Check()
    strategy = HAT(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), c=c,
        train_mb_size=10, train_epochs=2, eval_mb_size=4,
        plugins=fast_plugins(recipe, check), evaluator=quiet_evaluator(),
    )
    strategy.train(bm.train_stream[0])
    assert len(check.seen) == 2
    for got, want in check.seen:
        assert math.isclose(got, want, rel_tol=1e-5)


# ------------------------------------------------------------------- split
@given(n=st.integers(1, 500), fraction=st.floats(0.0, 0.95), seed=st.integers(0, 2**32 - 1),
       exp=st.integers(0, 50))
@settings(max_examples=80, deadline=None)
def test_split_indices_deterministic_disjoint_complete(n, fraction, seed, exp):
    train, valid = split_indices(n, fraction, seed, exp)
    train2, valid2 = split_indices(n, fraction, seed, exp)
    assert np.array_equal(train, train2) and np.array_equal(valid, valid2)
    assert not set(train.tolist()) & set(valid.tolist())
    assert sorted(train.tolist() + valid.tolist()) == list(range(n))
    assert len(train) >= 1
    if n > 1:
        assert len(valid) == min(n - 1, max(1, round(fraction * n)))


def test_split_depends_on_seed_and_experience():
    base = split_indices(200, 0.1, 0, 0)[1]
    assert not np.array_equal(base, split_indices(200, 0.1, 1, 0)[1])
    assert not np.array_equal(base, split_indices(200, 0.1, 0, 1)[1])


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"mode": "cosine"}, "train.recipe"), ({"valid_fraction": 1.0}, "valid_fraction"),
     ({"valid_fraction": 0.0}, "recipe=fixed"), ({"patience": 0}, "patience"),
     ({"lr_factor": 1.0}, "lr_factor"), ({"lr_min": 0.0}, "lr_min")],
)
def test_recipe_config_validation(kw, match):
    with pytest.raises(ConfigError, match=match):
        RecipeConfig(**kw)
    RecipeConfig(mode="fixed", valid_fraction=0.0)  # fine without validation


def test_best_weights_snapshot_is_a_copy_refreshed_in_place_and_follows_new_state():
    from strategies.training.recipe import ModelSnapshot

    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    snap = ModelSnapshot(net)
    first = snap.state["0.weight"]
    with torch.no_grad():
        net[0].weight.add_(1.0)
    assert not torch.equal(snap.state["0.weight"], net[0].weight)  # a copy, not a view
    snap.refresh()
    assert snap.state["0.weight"] is first  # refreshed in place
    assert torch.equal(first, net[0].weight)
    net.add_module("1", torch.nn.Linear(2, 2))  # the state changed: copied anew
    snap.refresh()
    assert set(snap.state) == set(net.state_dict())
    assert torch.equal(snap.state["1.bias"], net[1].bias)
