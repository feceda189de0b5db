"""Experience replay (ER; Chaudhry et al. 2019, "On tiny episodic memories in continual
learning"), with the semantics of Avalanche's ``ReplayPlugin``.

Every step trains on the current mini-batch ``B`` concatenated with a mini-batch ``B_M``
drawn from the episodic memory ``M``: one update on the mean loss over ``B ∪ B_M`` (the
paper's Alg. 1). As Avalanche's plugin: the memory holds ``mem_size`` samples in all,
balanced over the experiences seen (``mem_size // n`` each, the remainder to the first ones:
``ExperienceBalancedBuffer`` with adaptive size), filled at the end of each experience with
a uniform random subset of it and shrunk uniformly at random as experiences arrive; the
memory batch has the size of the training batch (``mem_batch_ratio`` = 1), and from the
second experience on every step carries one.

Avalanche defect fixed: its buffer is filled from ``strategy.experience.dataset``, which
includes the recipe's validation split: validation samples of earlier tasks would be
trained on and the validation accuracy matrix the tuner selects on would be contaminated.
``ReplayPlugin`` fills from the training part
(``strategies.training.tensor_data.training_part``).

Speed, not semantics: the memory is tensors (``strategies.rehearsal.memory.GroupMemory``) and each
step's memory batch is drawn by indexing, uniformly without replacement (the paper's
``Sample(M)``), instead of Avalanche's ``ReplayDataLoader`` (per-sample reads, a cycling
shuffled loader over the memory). An experience with fewer training samples than its share
keeps them all and leaves the spare share to the others (Avalanche leaves it empty); with
the multi-head model a mixed batch is scored by each sample's own head (``MultiHeadNet``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from avalanche.training.plugins import ReplayPlugin as AvalancheReplayPlugin

from ..common.config import config_of
from ..training.tensor_data import training_part
from .base import MemoryBatchConfig, RehearsalPlugin, RehearsalStrategy, memory_batch_size
from .memory import GroupMemory, balanced_quotas


@dataclass(frozen=True)
class ReplayConfig(MemoryBatchConfig):
    """ER: memory size in samples (in all, balanced over experiences); memory batch size
    as a multiple of ``train.batch_size``. Defaults: 200 samples (the tiny-memory regime of
    Chaudhry et al. 2019 and Avalanche's default ``mem_size``), a memory batch as large as
    the training batch (the paper's and Avalanche's)."""

    section = "replay"


class MemoryMixLoader:
    """Each batch ``[x, y, t]`` of ``loader`` followed by ``memory.sample(size)``."""

    def __init__(self, loader, memory: GroupMemory, size: int):
        self.loader = loader
        self.memory = memory
        self.size = int(size)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            x, y, t = batch[0], batch[1], batch[-1]
            mx, my, mt = self.memory.sample(self.size)
            yield [torch.cat((x, mx.to(x.device))), torch.cat((y, my.to(y.device))),
                   torch.cat((t.expand(len(y)), mt.to(t.device)))]


class ReplayPlugin(RehearsalPlugin, AvalancheReplayPlugin):
    """Avalanche's ``ReplayPlugin`` on a tensor memory filled from the training part."""

    def __init__(self, config: ReplayConfig | None = None, **overrides):
        config = config_of(ReplayConfig, config, overrides)
        # groups: experiences, in training order
        super().__init__(config, GroupMemory(), mem_size=config.mem_size)
        self.storage_policy = None  # replaced by ``memory``
        self.mem_batch_ratio = float(config.mem_batch_ratio)

    def before_training_exp(self, strategy, **kwargs):
        """From the second experience on, every batch carries a memory batch."""
        if len(self.memory) == 0:
            return
        size = memory_batch_size(self.mem_batch_ratio, strategy.train_mb_size)
        strategy.dataloader = MemoryMixLoader(strategy.dataloader, self.memory, size)

    def after_training_exp(self, strategy, **kwargs):
        """The experience's training part joins the memory as a new group; every group is
        cut to its share (uniformly at random)."""
        x, y, t = training_part(strategy)
        self.memory.add(x, y, t, self.n_experiences)
        self.n_experiences += 1
        counts = self.memory.counts(self.n_experiences)
        self.memory.shrink(balanced_quotas(counts, self.mem_size))


class Replay(RehearsalStrategy):
    """ER as a strategy (keyword-only, like Avalanche's wrappers) using ``ReplayPlugin``:
    ``config=ReplayConfig(...)`` or its fields as keywords."""

    config_class = ReplayConfig
    plugin_class = ReplayPlugin
    plugin_attribute = "replay_plugin"
