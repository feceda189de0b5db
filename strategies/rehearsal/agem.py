"""Averaged GEM (A-GEM; Chaudhry et al., ICLR 2019, "Efficient lifelong learning with
A-GEM"), with the semantics of Avalanche's ``AGEMPlugin``.

Before each step a reference gradient ``g_ref`` is computed on a sample of the episodic
memory; after the backward pass, when the current gradient ``g`` has ``gᵀg_ref < 0`` it is
replaced by its projection (the paper's Eq. 11)

    g̃ = g − (gᵀg_ref / g_refᵀg_ref) · g_ref,

for which ``g̃ᵀg_ref = 0``: to first order the step does not increase the average loss on
the memory. As Avalanche's plugin: at the end of each experience ``patterns_per_experience``
of its samples, drawn uniformly, join the memory (which grows by that much per experience),
and ``g_ref`` is the gradient of the mean loss on ``sample_size // n`` samples of each of the
``n`` experiences in memory (``GroupBalancedInfiniteDataLoader``), computed in training mode.

Defaults, scaled from the A-GEM reference code (facebookresearch/agem, permuted MNIST: 25
samples per class and task, i.e. 250 of a task's 1000 training examples, and ``g_ref`` on
256 memory samples): ``patterns_per_experience = 50``, about a quarter of a split-digits
task's ~227 training samples (the memory holds 200 samples while the fifth task trains, the
budget of the other rehearsal methods here), and ``sample_size = 64``, the suite's batch
size, which like the reference's 256 >= 250 covers one experience's memory.

Avalanche defects fixed here:

- The memory is filled from ``strategy.experience.dataset``, which includes the recipe's
  validation split (validation samples would be rehearsed; the tuner's validation accuracy
  contaminated): filled from the training part here.
- The projected gradient is copied only into parameters that already have a gradient. On a
  multi-head model the earlier tasks' heads get no gradient from the current batch but do
  from the memory sample, so their share of ``g̃`` (``−α·g_ref`` there) is dropped, and the
  update actually applied has ``update · g_ref < 0`` whenever a projection happens: the
  constraint A-GEM exists for is violated. Here the whole of ``g̃`` is applied (parameters
  the memory sample reaches get a gradient).
- ``g_refᵀg_ref`` underflows to 0 for a small reference gradient (entries below ~1e-19 in
  float32 with denormals flushed, as the runner runs; a memory the model fits well gets
  there), and the projection then divides by 0: inf/NaN gradients. ``agem_projection``
  scales ``g_ref`` by its largest entry first (the same projection).
- The memory's loader iterator (``buffer_dliter``) lives across experiences; here the
  per-step sample is drawn afresh from the global torch generator (no iterator to
  checkpoint), as is the per-experience subset (Avalanche: Python's ``random.shuffle``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from avalanche.models import avalanche_forward
from avalanche.training.plugins import AGEMPlugin as AvalancheAGEMPlugin
from torch import Tensor

from ..common.config import check_count, config_of
from ..training.tensor_data import training_part
from .base import RehearsalPlugin, RehearsalStrategy
from .memory import GroupMemory, random_subset


@dataclass(frozen=True)
class AGEMConfig:
    """A-GEM: memory samples stored per experience; memory samples of the reference
    gradient (defaults: the reference code's, scaled; see the module docstring)."""

    patterns_per_experience: int = 50
    sample_size: int = 64

    def __post_init__(self):
        check_count("agem.patterns_per_experience", self.patterns_per_experience)
        check_count("agem.sample_size", self.sample_size)


def agem_projection(g: Tensor, g_ref: Tensor) -> Tensor:
    """A-GEM's Eq. 11: ``g`` itself when ``gᵀg_ref >= 0`` (or NaN, or ``g_ref = 0``), else
    ``g − (gᵀg_ref / ‖g_ref‖²) g_ref``.

    Computed with ``g_ref`` divided by its largest entry (the same projection): ``‖g_ref‖²``
    of a small reference gradient underflows otherwise (below ~1e-19 per entry in float32,
    denormals flushed, as the runner has them), and Avalanche's formula then divides by 0
    and writes inf/NaN gradients."""
    scale = g_ref.abs().max()
    if not scale > 0:
        return g
    unit = g_ref / scale  # entries at most 1 in size, the largest exactly 1
    dot = torch.dot(g, unit)
    if not dot < 0:
        return g
    return g - (dot / torch.dot(unit, unit)) * unit


def _flat(grads, params) -> Tensor:
    return torch.cat([(p.new_zeros(p.shape) if g is None else g).reshape(-1)
                      for g, p in zip(grads, params, strict=True)])


class AGEMPlugin(RehearsalPlugin, AvalancheAGEMPlugin):
    """Avalanche's ``AGEMPlugin`` on a tensor memory filled from the training part, applying
    the whole projected gradient."""

    def __init__(self, config: AGEMConfig | None = None, **overrides):
        config = config_of(AGEMConfig, config, overrides)
        # groups: experiences, in training order
        super().__init__(config, GroupMemory(), config.patterns_per_experience,
                         config.sample_size)
        #: g_ref of the current step (flat, over ``model.parameters()``), or None
        self.reference_gradients: Tensor | None = None
        #: how many steps projected their gradient (a diagnostic)
        self.projections = 0
        self._reached: list[bool] = []

    def _params(self, strategy) -> list[torch.nn.Parameter]:
        return [p for p in strategy.model.parameters() if p.requires_grad]

    def before_training_iteration(self, strategy, **kwargs):
        """``g_ref``: the gradient of the mean loss on a memory sample balanced over the
        experiences (``.grad`` is left untouched)."""
        self.reference_gradients = None
        if len(self.memory) == 0:
            return
        per_experience = max(1, self.sample_size // self.n_experiences)
        x, y, t = self.memory.sample_per_group(per_experience)
        params = self._params(strategy)
        loss = strategy._criterion(avalanche_forward(strategy.model, x, t), y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        self._reached = [g is not None for g in grads]
        self.reference_gradients = _flat(grads, params).detach()

    @torch.no_grad()
    def after_backward(self, strategy, **kwargs):
        """Replace the gradient by its projection when it conflicts with ``g_ref``."""
        g_ref = self.reference_gradients
        if g_ref is None:
            return
        params = self._params(strategy)
        g = _flat([p.grad for p in params], params)
        projected = agem_projection(g, g_ref)
        if projected is g:  # no conflict: the gradient stays as it is
            return
        self.projections += 1
        offset = 0
        for p, reached in zip(params, self._reached, strict=True):
            piece = projected[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
            if p.grad is not None:
                p.grad.copy_(piece)
            elif reached:  # no current gradient, but the memory's: −α·g_ref here
                p.grad = piece.clone()

    def after_training_exp(self, strategy, **kwargs):
        """``patterns_per_experience`` training samples of the experience, uniformly, join
        the memory as a new group."""
        x, y, t = training_part(strategy)
        idx = random_subset(len(y), self.patterns_per_experience, y.device)
        self.memory.add(x[idx], y[idx], t[idx], self.n_experiences)
        self.n_experiences += 1
        self.reference_gradients = None


class AGEM(RehearsalStrategy):
    """A-GEM as a strategy (keyword-only, like Avalanche's wrappers) using ``AGEMPlugin``:
    ``config=AGEMConfig(...)`` or its fields as keywords."""

    config_class = AGEMConfig
    plugin_class = AGEMPlugin
    plugin_attribute = "agem_plugin"
