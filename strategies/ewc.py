"""Elastic Weight Consolidation: Avalanche's estimator, Fisher on the training part only.

Avalanche's ``EWCPlugin.after_training_exp`` computes the importances on
``strategy.experience.dataset``, which still holds the validation samples that
``TrainingRecipePlugin`` keeps out of training. The reference (joansj/hat,
``approaches/ewc.py``) computes its Fisher on ``xtrain`` only. ``EWCPlugin`` here passes
``strategy.adapted_dataset`` as the recipe left it: the training subset (all the training data
with ``train.recipe=fixed``).

Everything else is Avalanche's estimator, on purpose (the suite selects λ on validation for
it): the Fisher is the mean over mini-batches of ``train_mb_size`` of the squared batch-mean
gradient, in evaluation mode; the penalty is ``λ Σ_τ Σ F_τ (θ - θ_τ)²`` summed over one
(Fisher, weights) pair per earlier task ("separate" mode), without the 1/2. The reference
instead uses one running-mean Fisher with the last model's weights, ``λ/2 Σ F (θ - θ_old)²``,
and a Fisher of per-20-sample batches in training mode (dropout on).

The penalty is also part of the validation loss (``validation_penalty``), as the reference's
``eval()`` includes it (its criterion adds it).
"""

from __future__ import annotations

from typing import Literal

from avalanche.training.plugins import EWCPlugin as AvalancheEWCPlugin
from avalanche.training.templates import SupervisedTemplate

from .recipe import loss_added_by


class EWCPlugin(AvalancheEWCPlugin):
    """Avalanche's ``EWCPlugin`` with the Fisher on the training part of the experience."""

    def after_training_exp(self, strategy, **kwargs):
        self._train_part = strategy.adapted_dataset  # the recipe's training subset
        super().after_training_exp(strategy, **kwargs)

    def compute_importances(self, model, criterion, optimizer, dataset, device, batch_size,
                            num_workers=0):
        """Avalanche's estimator on the training part (it passes ``experience.dataset``)."""
        return super().compute_importances(model, criterion, optimizer, self._train_part,
                                           device, batch_size, num_workers)

    def validation_penalty(self, strategy) -> float:
        """λ times the penalty Avalanche adds in ``before_backward``, at the current weights."""
        return loss_added_by(super().before_backward, strategy)


class EWC(SupervisedTemplate):
    """EWC as a strategy (keyword-only, like Avalanche's wrappers) using ``EWCPlugin``."""

    def __init__(self, *, ewc_lambda: float, mode: Literal["separate", "online"] = "separate",
                 decay_factor: float | None = None, keep_importance_data: bool = False,
                 plugins=None, **kwargs):
        self.ewc_plugin = EWCPlugin(ewc_lambda, mode, decay_factor, keep_importance_data)
        super().__init__(plugins=[*(plugins or []), self.ewc_plugin], **kwargs)
