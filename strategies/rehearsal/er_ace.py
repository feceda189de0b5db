"""ER with asymmetric cross-entropy (ER-ACE; Caccia et al., ICLR 2022, "New insights on
reducing abrupt representation change in online continual learning"), with the semantics of
Avalanche's ``ER_ACE`` (its offline variant).

The loss of a step (the paper's ACE loss, the mean of its two terms as Avalanche's
``ACECriterion`` computes it) is

    L = ½ · [ CE_{C_in}(f(x_in), y_in) + CE(f(x_M), y_M) ],

the current batch's cross-entropy over ``C_in``, the classes present in that batch, only
(the logits of every other class are left out of its softmax, so the incoming data never
push them down), and the memory batch's cross-entropy over all classes. As Avalanche's
``ER_ACE``: the memory holds ``mem_size`` samples balanced over the classes seen (reservoir
per class), it takes the current experience's samples at the start of the experience (the
offline variant: the online one inserts them as they stream), and the asymmetric loss is
used from the second experience on (plain cross-entropy before), with a memory batch as large
as the training batch.

With per-task heads (this suite's task-incremental protocol) the asymmetry has little left
to do. In class-incremental learning all classes share one softmax, and ACE keeps the new
classes' data from pushing the old classes' logits down, the main cause of the abrupt
representation change it addresses. Here a sample's logits are its own task's head only, so
the current batch never competes with earlier tasks' classes anyway: ``C_in`` only drops the
current task's classes that happen to be missing from a batch (rare with 64-sample batches
over 2 or 10 classes), and ER-ACE reduces to ER whose memory (which includes the current
task) and current batch each weigh one half. The asymmetry would matter for the
task-agnostic evaluation (heads concatenated), but training never compares heads. A class is
a (task label, label) pair: for the current batch's mask and the memory's balance.

Avalanche defects fixed here:

- The memory takes ``strategy.experience.dataset`` at the start of each experience, the
  recipe's validation split included: the current task's validation samples would be
  trained on directly, and earlier tasks' later. Filled from the training part here.
- ``ClassBalancedBuffer`` balances by label only: classes of different tasks (all labelled
  0..n-1 here) merge into one group. Balanced by (task, label) here.
- ``ACECriterion`` takes the log of a softmax (``stable_softmax(...).log()``) and multiplies
  by one-hot targets: a probability that underflows to 0 gives ``0 · −inf = NaN`` (with the
  runner's flushed denormals, from a logit gap of about 87). Computed with ``log_softmax``
  (``F.cross_entropy``) on the masked logits here: the same value otherwise.
- Its own ``training_epoch`` bypasses the suite's lean loop; the memory loader is an iterator
  over a ``DataLoader`` (per-sample reads). Here ``ERACE.criterion`` computes the loss in the
  standard loop and memory batches are drawn by indexing (uniformly without replacement).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from avalanche.models import avalanche_forward
from torch import Tensor

from ..common.config import config_of
from ..common.multihead import single_task
from ..training.tensor_data import training_part
from .base import MemoryBatchConfig, RehearsalPlugin, RehearsalStrategy, memory_batch_size
from .memory import ClassBalancedMemory


@dataclass(frozen=True)
class ERACEConfig(MemoryBatchConfig):
    """ER-ACE: memory size (samples, balanced over classes), memory batch size as a multiple
    of ``train.batch_size`` (defaults: Avalanche's 200, the paper's equal batch sizes)."""

    section = "er-ace"


def present_class_ce(out: Tensor, y: Tensor, t: Tensor) -> Tensor:
    """Cross-entropy of each sample over the classes present in the batch only: column ``c``
    of sample ``i`` stays in its softmax iff some sample of the batch has task ``t[i]`` and
    label ``c``; the others are masked to −inf."""
    width = out.shape[1]
    if single_task(t) is not None:  # one task (the usual batch): one column mask
        keep = torch.bincount(y, minlength=width)[:width] > 0
        return F.cross_entropy(out.masked_fill(~keep, float("-inf")), y)
    t = t.expand(len(y))
    present = torch.unique(t * width + y)
    codes = t.unsqueeze(1) * width + torch.arange(width, device=out.device)
    masked = out.masked_fill(~torch.isin(codes, present), float("-inf"))
    return F.cross_entropy(masked, y)


class ERACEPlugin(RehearsalPlugin):
    """ER-ACE's class-balanced memory (filled from the training part at the start of every
    experience) and asymmetric loss (``ace_loss``; ``ERACE.criterion`` uses it)."""

    def __init__(self, config: ERACEConfig | None = None, **overrides):
        config = config_of(ERACEConfig, config, overrides)
        super().__init__(config, ClassBalancedMemory(config.mem_size))
        self.mem_batch_ratio = float(config.mem_batch_ratio)
        #: the last step's two terms, for inspection: {"current": ..., "memory": ...}
        self.last_terms: dict[str, Tensor] = {}

    @property
    def active(self) -> bool:
        """Whether the memory holds an earlier experience (the asymmetric loss is used)."""
        return self.n_experiences > 1 and len(self.memory) > 0

    def before_training_exp(self, strategy, **kwargs):
        x, y, t = training_part(strategy)
        self.memory.add(x, y, t)
        self.n_experiences += 1

    def ace_loss(self, strategy) -> Tensor:
        """½ (present-class CE of the current batch + CE of a memory batch)."""
        current = present_class_ce(strategy.mb_output, strategy.mb_y, strategy.mb_task_id)
        size = memory_batch_size(self.mem_batch_ratio, strategy.train_mb_size)
        x, y, t = self.memory.memory.sample(size)
        memory = F.cross_entropy(avalanche_forward(strategy.model, x, t), y)
        self.last_terms = {"current": current.detach(), "memory": memory.detach()}
        return (current + memory) / 2


class ERACE(RehearsalStrategy):
    """ER-ACE as a strategy (keyword-only, like Avalanche's wrappers) using
    ``ERACEPlugin`` (``config=ERACEConfig(...)`` or its fields as keywords): its training
    criterion is the asymmetric loss once the memory holds an earlier experience (evaluation
    and the recipe's validation use the plain one)."""

    config_class = ERACEConfig
    plugin_class = ERACEPlugin
    plugin_attribute = "ace_plugin"

    def criterion(self):
        if self.is_training and self.ace_plugin.active:
            return self.ace_plugin.ace_loss(self)
        return super().criterion()
