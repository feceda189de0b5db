"""GDumb (Prabhu, Torr & Dokania, ECCV 2020, "GDumb: a simple approach that questions our
progress in continual learning"), with the semantics of Avalanche's ``GDumbPlugin``.

GDumb keeps a class-balanced memory of at most ``k`` samples (its greedy sampler: a new
sample enters while the memory has room or its class holds less than ``k / |classes|``,
evicting one of the largest class) and, at every experience, retrains the model from its
initialisation on the memory alone; at test time it predicts among the given task's classes
(here: the task's head). As Avalanche's plugin: the memory (``mem_size`` samples in all,
equal shares per class seen, a uniform random subset within each class) takes the
experience's samples before training, the model is reset to its initial weights at the start
of every experience, and the training data are replaced by the memory. A class with fewer
samples than its share keeps them all and leaves the spare share to the others, as GDumb's
sampler fills the memory (Avalanche leaves it empty).

The recipe still holds out the current task's validation split and early-stops on it (as
for every strategy of the suite); the memory never holds a validation sample.

Avalanche defects fixed here:

- ``ClassBalancedBuffer`` balances by label only, and every task of this suite labels its
  classes 0..n-1: the classes of different tasks merge (split-digits' 10 classes become 2
  groups, each a uniform sample over five tasks), so the memory is not balanced over the
  real classes. Balanced by (task label, label) here.
- The memory takes ``strategy.experience.dataset``, which includes the recipe's validation
  split, and then replaces the training data: the current task's validation samples would be
  trained on and the tuner's validation accuracy contaminated. Filled from the training part
  here (``after_train_dataset_adaptation`` of the recipe has run; the memory is updated in
  ``before_training_exp``).
- Reset by replacing ``strategy.model`` with a deep copy of a model kept aside; here the
  initial state is kept (tensors) and loaded into the same model object (the optimizer, the
  recipe and the runner keep referring to it), and the optimizer's state (momenta) is
  cleared, so that every experience really starts from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from avalanche.training.plugins import GDumbPlugin as AvalancheGDumbPlugin
from torch import Tensor

from ..common.config import check_count, config_of
from ..training.tensor_data import TensorLoader, training_part
from .base import RehearsalPlugin, RehearsalStrategy
from .memory import ClassBalancedMemory


@dataclass(frozen=True)
class GDumbConfig:
    """GDumb: memory size in samples, balanced over the (task, label) classes seen (default
    200, Avalanche's and the other rehearsal baselines' budget here; the paper takes each
    benchmark's budget from the methods it is compared with)."""

    mem_size: int = 200

    def __post_init__(self):
        check_count("gdumb.mem_size", self.mem_size)


class GDumbPlugin(RehearsalPlugin, AvalancheGDumbPlugin):
    """Avalanche's ``GDumbPlugin`` with a (task, label)-balanced tensor memory filled from
    the training part and an in-place reset to the initial weights."""

    counts_experiences = False

    def __init__(self, config: GDumbConfig | None = None, **overrides):
        config = config_of(GDumbConfig, config, overrides)
        super().__init__(config, ClassBalancedMemory(config.mem_size), config.mem_size)
        self.storage_policy = None  # replaced by ``memory``
        #: the model's state before its first experience (entries created later: as created)
        self.init_state: dict[str, Tensor] | None = None

    def before_train_dataset_adaptation(self, strategy, **kwargs):
        pass  # (Avalanche's deep copy of the model: replaced by ``reset``)

    def before_eval_dataset_adaptation(self, strategy, **kwargs):
        pass

    def after_train_dataset_adaptation(self, strategy, **kwargs):
        """Back to the initial weights (recorded on the first call), before any plugin's
        ``before_training_exp`` (the recipe's best-weights snapshot starts from them)."""
        self.reset(strategy.model)

    @torch.no_grad()
    def reset(self, model: torch.nn.Module) -> None:
        """Load the initial state into ``model`` (the first call records it)."""
        if self.init_state is None:
            self.init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return
        self._record_new(model)
        model.load_state_dict(self.init_state)

    def _record_new(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if k not in self.init_state:  # e.g. a head created by model adaptation
                self.init_state[k] = v.detach().clone()

    def before_training_exp(self, strategy, **kwargs):
        """Update the memory with the training part; train on the memory alone."""
        self._record_new(strategy.model)
        strategy.optimizer.state.clear()
        x, y, t = training_part(strategy)
        self.memory.add(x, y, t)
        strategy.dataloader = TensorLoader(self.memory.tensors, strategy.train_mb_size,
                                           shuffle=True)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "init_state": self.init_state}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.init_state = state["init_state"]


class GDumb(RehearsalStrategy):
    """GDumb as a strategy (keyword-only, like Avalanche's wrappers) using ``GDumbPlugin``:
    ``config=GDumbConfig(...)`` or ``mem_size=`` as a keyword."""

    config_class = GDumbConfig
    plugin_class = GDumbPlugin
    plugin_attribute = "gdumb_plugin"
