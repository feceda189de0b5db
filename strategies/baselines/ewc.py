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

Speed: Avalanche walks every (earlier task, parameter) pair in Python each step (five
operations each). ``EWCPlugin`` stacks the earlier tasks' Fishers and weights once per
experience into two (tasks × all parameters) matrices and adds the same penalty in five
operations per step: one sum instead of per-pair sums (rounding order only; a parameter a
task did not have gets importance 0, as Avalanche skips it). The penalty is one autograd
node (``_Penalty``) whose backward runs the kernels autograd would: the same numbers, about
half the backward graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from avalanche.training.plugins import EWCPlugin as AvalancheEWCPlugin
from avalanche.training.templates import SupervisedTemplate
from torch.autograd.function import once_differentiable

from ..common.config import ConfigError, check_range
from ..training.recipe import loss_added_by


@dataclass(frozen=True)
class EWCConfig:
    """EWC: the penalty's weight λ (default: the paper's 5000), Avalanche's mode (one
    (Fisher, weights) pair per earlier task, or one running pair) and, for ``online``, the
    decay of the running Fisher (None: 1)."""

    lambda_: float = 5000.0
    mode: Literal["separate", "online"] = "separate"
    decay_factor: float | None = None

    def __post_init__(self):
        check_range("ewc.lambda", self.lambda_, 0)
        if self.decay_factor is not None:
            check_range("ewc.decay_factor", self.decay_factor, 0, 1)

    def check_combination(self) -> None:
        if self.decay_factor is not None and self.mode != "online":
            raise ConfigError("ewc.decay_factor needs ewc.mode=online")


class EWCPlugin(AvalancheEWCPlugin):
    """Avalanche's ``EWCPlugin`` with the Fisher on the training part of the experience."""

    #: per-experience scratch, left out of checkpoints: the training subset (read in
    #: ``after_training_exp`` of the same experience) and the stacked Fishers and anchors
    #: (rebuilt from ``importances``/``saved_params``)
    checkpoint_transient = ("_train_part", "_stack")
    _stack: tuple | None = None
    #: True: the penalty through autograd's operations (for tests); False: the same value
    #: and gradients from one node (``_Penalty``)
    autograd_penalty: bool = False

    def _stacked(self, strategy):
        """(parameters, importances, weights): the model's parameters and, per earlier task
        the penalty counts, its Fishers and weights flattened in the parameters' order."""
        counter = strategy.clock.train_exp_counter
        if self._stack is not None and self._stack[0] == counter:
            return self._stack[1]  # built once per experience: no module walk per step
        named = list(strategy.model.named_parameters())
        tasks = range(counter) if self.mode == "separate" else [counter - 1]
        imps, olds = [], []
        for task in tasks:
            imp, old = [], []
            for name, p in named:
                if name in self.saved_params[task]:
                    saved, fisher = self.saved_params[task][name], self.importances[task][name]
                    if tuple(saved.shape) != tuple(p.shape):
                        return None  # grown parameters: Avalanche's expanding loop
                    imp.append(fisher.data.reshape(-1))
                    old.append(saved.data.reshape(-1))
                else:  # new parameters do not count
                    imp.append(torch.zeros(p.numel(), device=p.device))
                    old.append(torch.zeros(p.numel(), device=p.device))
            imps.append(torch.cat(imp).to(strategy.device))
            olds.append(torch.cat(old).to(strategy.device))
        stack = ([p for _, p in named], torch.stack(imps), torch.stack(olds))
        self._stack = (counter, stack)
        return stack

    def before_training_exp(self, strategy, **kwargs):
        super().before_training_exp(strategy, **kwargs)
        self._stack = None  # the model may have gained parameters (heads)

    def before_backward(self, strategy, **kwargs):
        """Avalanche's penalty λ Σ_τ Σ F_τ (θ − θ_τ)², in one pass over stacked tensors."""
        if strategy.clock.train_exp_counter == 0:
            return
        stack = self._stacked(strategy)
        if stack is None:
            return super().before_backward(strategy, **kwargs)
        params, imp, old = stack
        if not self.autograd_penalty:
            strategy.loss += _Penalty.apply(imp, old, self.ewc_lambda, *params)
            return
        theta = torch.cat([p.reshape(-1) for p in params])
        penalty = (imp * (theta - old).pow(2)).sum()
        strategy.loss += self.ewc_lambda * penalty

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
        return loss_added_by(self.before_backward, strategy)


class _Penalty(torch.autograd.Function):
    """``λ · Σ F (cat(θ) − θ_old)²`` over stacked (tasks × parameters) matrices as one
    autograd node: the forward computes it as ``EWCPlugin`` writes it; the backward runs the
    kernels autograd runs for that expression (Mul, Sum, Mul, Pow, the broadcast's
    ``sum_to_size``, Cat and view backward), so every parameter gets the same gradient,
    summed with its other gradients by the engine as before (tested bit for bit)."""

    @staticmethod
    def forward(ctx, importance, old, lam, *params):
        theta = torch.cat([p.reshape(-1) for p in params])
        x = theta - old
        ctx.importance, ctx.x, ctx.lam = importance, x, lam
        ctx.shapes, ctx.n = [p.shape for p in params], theta.shape
        return lam * (importance * x.pow(2)).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        g = grad * ctx.lam  # MulBackward0 (λ · penalty)
        g = g.expand(ctx.x.shape) * ctx.importance  # SumBackward0, MulBackward0
        g = g * (ctx.x.pow(1.0) * 2.0)  # PowBackward0: grad * (2 · x^1)
        g = g.sum_to_size(ctx.n)  # SubBackward0 with θ broadcast over the tasks
        sizes = [s.numel() for s in ctx.shapes]  # CatBackward0: split
        return (None, None, None,
                *[t.view(s) for t, s in zip(g.split(sizes), ctx.shapes, strict=True)])


class EWC(SupervisedTemplate):
    """EWC as a strategy (keyword-only, like Avalanche's wrappers) using ``EWCPlugin``."""

    def __init__(self, *, ewc_lambda: float, mode: Literal["separate", "online"] = "separate",
                 decay_factor: float | None = None, keep_importance_data: bool = False,
                 plugins=None, **kwargs):
        self.ewc_plugin = EWCPlugin(ewc_lambda, mode, decay_factor, keep_importance_data)
        super().__init__(plugins=[*(plugins or []), self.ewc_plugin], **kwargs)
