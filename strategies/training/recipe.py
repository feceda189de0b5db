"""The paper's training recipe as a plugin usable by every strategy (docs/hat-reference.md §2).

Per experience: hold out ``valid_fraction`` of the training data (seeded), start from the
initial learning rate with a freshly built optimizer, and after every epoch compute the
validation loss: cross-entropy plus the penalties other plugins offer, as the reference's
``eval()`` uses its training criterion: ``validation_penalty(strategy) -> float`` for terms
of the parameters alone (HAT's c·R, EWC, SI, IMM's L2-transfer), added once, and
``validation_batch_penalty(strategy, x, t, output) -> tensor`` for terms of the data (LwF's
distillation, LFL's feature drift), added to every validation batch's cross-entropy.
When it has not improved for ``patience`` epochs, divide the learning rate by ``lr_factor``
and rebuild the optimizer; stop when the learning rate falls below ``lr_min`` or after the
strategy's ``train_epochs`` (the maximum). At the end of the
experience the weights of the best validation loss are restored (before any plugin's
``after_training_exp``, so e.g. HAT's cumulative mask is taken from them).

``mode="fixed"`` switches all of this off: train exactly ``train_epochs`` epochs on all the
training data, with the optimizer handled by Avalanche as usual.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Literal

import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from avalanche.models import avalanche_forward
from torch import nn

from ..common.config import ConfigError, check_range
from ..common.hooks import hooks
from .lean_loop import set_training
from .tensor_data import TensorLoader, materialize


@dataclass(frozen=True)
class RecipeConfig:
    """Early stopping and learning-rate schedule of the paper (defaults as published)."""

    mode: Literal["paper", "fixed"] = "paper"
    valid_fraction: float = 0.1
    patience: int = 5
    lr_factor: float = 3.0
    lr_min: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        if self.mode not in ("paper", "fixed"):
            raise ConfigError(f"train.recipe must be 'paper' or 'fixed', got {self.mode!r}")
        check_range("train.valid_fraction", self.valid_fraction, 0, 1, high_open=True)
        if self.mode == "paper" and self.valid_fraction == 0:
            raise ConfigError(
                "train.valid_fraction=0 leaves no validation data for the paper's recipe; "
                "use train.recipe=fixed to train without validation"
            )
        if self.patience < 1:
            raise ConfigError(f"train.patience must be >= 1, got {self.patience}")
        check_range("train.lr_factor", self.lr_factor, 1, low_open=True)
        check_range("train.lr_min", self.lr_min, 0, low_open=True)


def n_held_out(n: int, fraction: float) -> int:
    """How many of ``n`` samples ``split_indices`` holds out for validation: ``fraction`` of
    them, rounded, at least one and never all (none of a single sample)."""
    return min(n - 1, max(1, round(fraction * n))) if n > 1 else 0


def split_indices(n: int, fraction: float, seed: int, experience: int) -> tuple[np.ndarray, ...]:
    """Seeded random (train, valid) index split of ``n`` samples."""
    rng = np.random.default_rng([seed, experience])
    order = rng.permutation(n)
    n_valid = n_held_out(n, fraction)
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])


def same_optimizer(optimizer: torch.optim.Optimizer, params, lr: float | None = None
                   ) -> torch.optim.Optimizer:
    """An optimizer of ``optimizer``'s type and settings over ``params`` (a model or an
    iterable of parameters), at ``lr`` or at ``optimizer``'s current learning rate.

    Only the settings the constructor accepts are passed on (``AdamW.defaults`` holds
    ``decoupled_weight_decay``, which ``AdamW(...)`` refuses).
    """
    if isinstance(params, nn.Module):
        params = params.parameters()
    cls = type(optimizer)
    accepted = inspect.signature(cls.__init__).parameters
    settings = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    settings["lr"] = optimizer.param_groups[0]["lr"] if lr is None else lr
    return cls(params, **settings)


def rebuild_optimizer(strategy, lr: float) -> None:
    """A fresh optimizer of the same type and settings over all model parameters."""
    strategy.optimizer = same_optimizer(strategy.optimizer, strategy.model, lr)


@torch.no_grad()
def loss_added_by(before_backward, strategy) -> float:
    """What ``before_backward`` (a plugin's bound method: Avalanche's regularisers add their
    penalty to ``strategy.loss`` there) adds at the current weights; computed on a stand-in
    strategy, so the real one is untouched. For ``validation_penalty`` hooks."""
    probe = SimpleNamespace(clock=strategy.clock, device=strategy.device, model=strategy.model,
                            loss=torch.zeros((), device=strategy.device))
    before_backward(probe)
    return float(probe.loss)


class ModelSnapshot:
    """The best weights so far: a copy of the model's state, refreshed in place (one
    multi-tensor copy instead of a deep copy) while its keys, shapes and dtypes stay."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.state: dict = {}
        self.refresh()

    def refresh(self) -> None:
        state = self.model.state_dict()
        same = state.keys() == self.state.keys() and all(
            torch.is_tensor(v) and torch.is_tensor(old) and v.shape == old.shape
            and v.dtype == old.dtype and v.device == old.device
            for v, old in zip(state.values(), self.state.values(), strict=True))
        if not same:
            self.state = copy.deepcopy(state)
            return
        with torch.no_grad():
            torch._foreach_copy_(list(self.state.values()), list(state.values()))


class TrainingRecipePlugin(SupervisedPlugin):
    """Validation split, lr/3 on plateau with the optimizer rebuilt, best-weights restore."""

    def __init__(self, config: RecipeConfig | None = None, *, lr: float | None = None, **kw):
        super().__init__()
        self.config = config if config is not None else RecipeConfig(**kw)
        self.initial_lr = lr
        self.valid_data = None
        self.lr: float | None = None
        self.last_valid_loss: float | None = None
        self.epochs_trained = 0
        self._best_loss = math.inf
        self._best_state = None
        self._patience = self.config.patience
        self._done = False

    @property
    def active(self) -> bool:
        return self.config.mode == "paper"

    def after_train_dataset_adaptation(self, strategy, **kwargs):
        self.valid_data = None
        if not self.active:
            return
        data = strategy.adapted_dataset
        exp = int(getattr(strategy.experience, "current_experience", 0))
        train_idx, valid_idx = split_indices(len(data), self.config.valid_fraction,
                                             self.config.seed, exp)
        self.valid_data = data.subset(valid_idx.tolist())
        strategy.adapted_dataset = data.subset(train_idx.tolist())

    def before_training_exp(self, strategy, **kwargs):
        self.epochs_trained = 0
        self.last_valid_loss = None
        if self.initial_lr is None:
            self.initial_lr = strategy.optimizer.param_groups[0]["lr"]
        self.lr = self.initial_lr
        if not self.active:
            return
        rebuild_optimizer(strategy, self.lr)  # the reference starts every task afresh
        self._best_loss = math.inf
        self._best_state = ModelSnapshot(strategy.model)
        self._patience = self.config.patience
        self._done = False

    @torch.no_grad()
    def validation_loss(self, strategy) -> float:
        """Mean cross-entropy on the held-out data plus other plugins' penalties.

        Per batch, every ``validation_batch_penalty(strategy, x, t, output)`` (data-dependent
        terms, a batch value like the cross-entropy) is added to the batch's cross-entropy
        and weighted by the batch size; then every ``validation_penalty(strategy)``
        (parameter-only terms) is added once. The model is in evaluation mode throughout.
        """
        model = strategy.model
        was_training = model.training
        set_training(model, False)
        batch_hooks = hooks(strategy, "validation_batch_penalty", exclude=[self])
        x, y, t = materialize(self.valid_data, strategy.device)
        total, n = 0.0, 0
        for xb, yb, tb in TensorLoader((x, y, t), strategy.eval_mb_size or 256, shuffle=False):
            out = avalanche_forward(model, xb, tb)
            batch_loss = strategy._criterion(out, yb)
            for hook in batch_hooks:
                batch_loss = batch_loss + hook(strategy, xb, tb, out)
            total += float(batch_loss) * len(yb)
            n += len(yb)
        loss = total / max(n, 1)
        for penalty in hooks(strategy, "validation_penalty", exclude=[self]):
            loss += float(penalty(strategy))
        set_training(model, was_training)
        return loss

    def after_training_epoch(self, strategy, **kwargs):
        self.epochs_trained += 1
        if not self.active:
            return
        cfg = self.config
        loss = self.validation_loss(strategy)
        self.last_valid_loss = loss
        if loss < self._best_loss:
            self._best_loss = loss
            self._best_state.refresh()
            self._patience = cfg.patience
        else:
            self._patience -= 1
            if self._patience <= 0:
                self.lr /= cfg.lr_factor
                self._patience = cfg.patience
                if self.lr < cfg.lr_min:
                    self._done = True
                else:
                    rebuild_optimizer(strategy, self.lr)
        if self._done or self.epochs_trained >= strategy.train_epochs:
            strategy.model.load_state_dict(self._best_state.state)
            # on the last epoch the loop ends by itself: a stop request there would stay
            # pending and skip the next experience trained in the same train() call
            if self._done and self.epochs_trained < strategy.train_epochs:
                strategy.stop_training()

    def current_lr(self, strategy) -> float:
        return float(strategy.optimizer.param_groups[0]["lr"])
