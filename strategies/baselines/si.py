"""Synaptic Intelligence (Zenke et al., 2017) with a fix for Avalanche 0.6.0 on CPU.

Avalanche's ``SynapticIntelligencePlugin`` stores parameter snapshots with
``param.detach().cpu().flatten()``; on a CPU model ``.cpu()`` returns the parameter itself, so
the "snapshots" alias the live weights: θ* always equals θ and the surrogate loss is exactly 0
(SI silently becomes fine-tuning). ``SIPlugin`` clones the snapshots that alias a live
parameter right after Avalanche takes them; on GPU (where they are copies already) it does
nothing more than the original.

SI is not in the HAT reference. Avalanche's estimator is kept as it is: after each experience
every importance is clamped to at most 0.001 (``update_ewc_data``'s ``clip_to``, from the
original Caffe code) with damping ``c = 1``. As for the reference's regularisers, the surrogate
loss is part of the validation loss (``validation_penalty``).

Speed: Avalanche lists the allowed parameters (a walk over all modules) three times per step
and updates the path integral and the surrogate loss parameter by parameter. ``SIPlugin``
lists them once per experience, keeps the path integral in one flat tensor whose slices are
Avalanche's per-parameter tensors and updates it with the same element-wise operations over
all parameters at once (the same numbers; six operations per step instead of about forty),
and computes the surrogate loss as one dot product over all parameters (rounding order
only), as one autograd node (``_Surrogate``) whose backward runs the kernels autograd would
(the same numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from avalanche.training.plugins import SynapticIntelligencePlugin
from avalanche.training.templates import SupervisedTemplate
from torch.autograd.function import once_differentiable

from ..common.config import check_range
from ..training.recipe import loss_added_by


@dataclass(frozen=True)
class SIConfig:
    """SI: the surrogate loss's weight λ and the damping ε of the importances."""

    lambda_: float = 1.0
    eps: float = 1e-7

    def __post_init__(self):
        check_range("si.lambda", self.lambda_, 0)
        check_range("si.eps", self.eps, 0, low_open=True)


def _own_copies(snapshots: dict, live: set[int]) -> None:
    """Clone the snapshots that share storage with a live parameter (all of them on CPU;
    none on GPU, where Avalanche's ``.cpu()`` already copied)."""
    for data in snapshots.values():
        if data.data.data_ptr() in live:
            data.data = data.data.clone()


class SIPlugin(SynapticIntelligencePlugin):
    """``SynapticIntelligencePlugin`` whose weight snapshots are real copies."""

    #: per-experience scratch, left out of checkpoints: the flat copies of θ* and Ω (rebuilt
    #: from ``ewc_data`` in ``before_training_exp``) and θ before the last update (set every
    #: iteration)
    checkpoint_transient = ("_old", "_theta_star", "_importance")
    def before_training_exp(self, strategy, **kwargs):
        super().before_training_exp(strategy, **kwargs)
        self._live = {p.data_ptr() for p in strategy.model.parameters()}
        _own_copies(self.ewc_data[0], self._live)  # θ* of the surrogate loss
        named = self.allowed_parameters(strategy.model, self.excluded_parameters)
        self._params = [p for _, p in named]
        self._trajectory = [self.syn_data["trajectory"][n].data for n, _ in named]
        # one flat trajectory whose slices are the per-parameter tensors Avalanche reads
        self._flat = None
        devices = {t.device for t in self._trajectory} | {p.device for p in self._params}
        if self._trajectory and len(devices) == 1:
            self._flat = torch.cat(self._trajectory)
            offset = 0
            for (n, _), t in zip(named, self._trajectory, strict=True):
                self.syn_data["trajectory"][n].data = self._flat[offset : offset + t.numel()]
                offset += t.numel()
            self._trajectory = [self.syn_data["trajectory"][n].data for n, _ in named]
        device = self.device(strategy)
        self._theta_star = torch.cat([self.ewc_data[0][n].data for n, _ in named]).to(device)
        self._importance = torch.cat([self.ewc_data[1][n].data for n, _ in named]).to(device)

    @torch.no_grad()
    def before_training_iteration(self, strategy, **kwargs):
        # θ before the update (Avalanche's ``pre_update``, as copies): one flat copy
        self._old = torch.cat([p.reshape(-1) for p in self._params])

    @torch.no_grad()
    def after_training_iteration(self, strategy, **kwargs):
        # Avalanche's ``post_update``: trajectory += grad · (θ_new − θ_old), per element.
        # (The surrogate loss reaches every parameter, so each has a gradient, as in
        # Avalanche; one without any adds nothing.)
        grads = [p.grad for p in self._params]
        if self._flat is not None and all(g is not None for g in grads):
            # the same three element-wise operations, each over all parameters at once
            step = torch.cat([p.reshape(-1) for p in self._params]).sub_(self._old)
            self._flat.add_(step.mul_(torch.cat([g.reshape(-1) for g in grads])))
            return
        old = self._old.split([p.numel() for p in self._params])
        live = [i for i, g in enumerate(grads) if g is not None]
        new = [self._params[i].detach().flatten() for i in live]
        grads = [grads[i].detach().flatten() for i in live]
        step = torch._foreach_mul(grads, torch._foreach_sub(new, [old[i] for i in live]))
        torch._foreach_add_([self._trajectory[i] for i in live], step)

    #: True: the surrogate loss through autograd's operations (for tests); False: the same
    #: value and gradients from one node (``_Surrogate``)
    autograd_penalty: bool = False

    def before_backward(self, strategy, **kwargs):
        """The surrogate loss λ/2 Σ Ω (θ − θ*)² (Avalanche's, as one dot product)."""
        exp_id = strategy.clock.train_exp_counter
        lam = self.si_lambda[min(exp_id, len(self.si_lambda) - 1)]
        if not self.autograd_penalty and self._importance.device == self._params[0].device:
            loss = _Surrogate.apply(self._importance, self._theta_star, lam / 2, *self._params)
        else:
            theta = torch.cat([p.reshape(-1) for p in self._params]).to(self._importance.device)
            loss = torch.dot(self._importance, (theta - self._theta_star) ** 2) * (lam / 2)
        strategy.loss += loss.to(strategy.device)

    def validation_penalty(self, strategy) -> float:
        """The surrogate loss ``before_backward`` adds, at the current weights."""
        return loss_added_by(self.before_backward, strategy)


class _Surrogate(torch.autograd.Function):
    """``dot(Ω, (cat(θ) − θ*)²) · scale`` as one autograd node: the forward computes it as
    ``SIPlugin`` writes it; the backward runs the kernels autograd runs for that expression
    (Mul, Dot, Pow, Sub, Cat and view backward), so every parameter gets the same gradient,
    summed with its other gradients by the engine as before (tested bit for bit)."""

    @staticmethod
    def forward(ctx, importance, star, scale, *params):
        d = torch.cat([p.reshape(-1) for p in params]) - star
        ctx.importance, ctx.d, ctx.scale = importance, d, scale
        ctx.shapes = [p.shape for p in params]
        return torch.dot(importance, d**2) * scale

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        g = grad * ctx.scale  # MulBackward0
        g = ctx.importance * g  # DotBackward0: self.conj() * grad
        g = g * (ctx.d.pow(1.0) * 2.0)  # PowBackward0: grad * (2 · d^1)
        sizes = [s.numel() for s in ctx.shapes]  # SubBackward0: grad; CatBackward0: split
        return (None, None, None,
                *[t.view(s) for t, s in zip(g.split(sizes), ctx.shapes, strict=True)])


class SynapticIntelligence(SupervisedTemplate):
    """SI as a strategy (keyword-only, like Avalanche's wrappers) using ``SIPlugin``."""

    def __init__(self, *, si_lambda: float, eps: float = 1e-7, plugins=None, **kwargs):
        plugins = [*(plugins or []), SIPlugin(si_lambda=si_lambda, eps=eps)]
        super().__init__(plugins=plugins, **kwargs)
