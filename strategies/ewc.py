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
from avalanche.training.utils import copy_params_dict

from .recipe import loss_added_by


class EWCPlugin(AvalancheEWCPlugin):
    """Avalanche's ``EWCPlugin`` with the Fisher on the training part of the experience."""

    def after_training_exp(self, strategy, **kwargs):
        exp_counter = strategy.clock.train_exp_counter
        importances = self.compute_importances(
            strategy.model,
            strategy._criterion,
            strategy.optimizer,
            strategy.adapted_dataset,  # the recipe's training subset, not experience.dataset
            strategy.device,
            strategy.train_mb_size,
            num_workers=kwargs.get("num_workers", 0),
        )
        self.update_importances(importances, exp_counter)
        self.saved_params[exp_counter] = copy_params_dict(strategy.model)
        if exp_counter > 0 and not self.keep_importance_data:
            del self.saved_params[exp_counter - 1]

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
