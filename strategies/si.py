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
"""

from __future__ import annotations

from avalanche.training.plugins import SynapticIntelligencePlugin
from avalanche.training.templates import SupervisedTemplate

from .recipe import loss_added_by


def _own_copies(snapshots: dict, live: set[int]) -> None:
    """Clone the snapshots that share storage with a live parameter (all of them on CPU;
    none on GPU, where Avalanche's ``.cpu()`` already copied)."""
    for data in snapshots.values():
        if data.data.data_ptr() in live:
            data.data = data.data.clone()


class SIPlugin(SynapticIntelligencePlugin):
    """``SynapticIntelligencePlugin`` whose weight snapshots are real copies."""

    def before_training_exp(self, strategy, **kwargs):
        super().before_training_exp(strategy, **kwargs)
        self._live = {p.data_ptr() for p in strategy.model.parameters()}
        _own_copies(self.ewc_data[0], self._live)  # θ* of the surrogate loss

    def before_training_iteration(self, strategy, **kwargs):
        super().before_training_iteration(strategy, **kwargs)
        _own_copies(self.syn_data["old_theta"], self._live)  # θ before the update

    def validation_penalty(self, strategy) -> float:
        """The surrogate loss Avalanche adds in ``before_backward``, at the current weights."""
        return loss_added_by(super().before_backward, strategy)


class SynapticIntelligence(SupervisedTemplate):
    """SI as a strategy (keyword-only, like Avalanche's wrappers) using ``SIPlugin``."""

    def __init__(self, *, si_lambda: float, eps: float = 1e-7, plugins=None, **kwargs):
        plugins = [*(plugins or []), SIPlugin(si_lambda=si_lambda, eps=eps)]
        super().__init__(plugins=plugins, **kwargs)
