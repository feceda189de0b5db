"""Dark Experience Replay++ (DER++; Buzzega et al., NeurIPS 2020, "Dark experience for
general continual learning: a strong, simple baseline").

The loss of each step is the paper's DER++ objective (Sec. 3, Alg. 1):

    L = CE(f(x), y) + α · MSE(h(x′), z′) + β · CE(f(x″), y″),

``(x, y)`` the current mini-batch, ``(x′, z′)`` and ``(x″, y″)`` two mini-batches drawn
independently and uniformly from the memory, ``h`` the logits. ``z′`` are the logits a sample
had when it entered the memory: after every step the current batch is offered to the memory
by reservoir sampling with the logits of that step's forward pass (training mode, before the
update: logits sampled along the optimisation trajectory, as the paper's code stores
``outputs.data``). Each term has its own forward pass, as in the paper's code; the memory
terms start as soon as the memory holds a sample (during the first experience too). β = 0 is
DER. The validation loss of the recipe stays the current task's cross-entropy: the memory
terms are on training samples, not held-out ones.

Multi-head models: a memory sample is scored by its own task's head; its stored logits
span that head's classes only, and the squared error is the mean over those entries (the
−inf padding ``MultiHeadNet`` gives a mixed batch beyond a sample's head never enters it),
which is ``F.mse_loss`` when every head has the same width.

Defaults: α = 0.2, β = 1.0, the paper's best for Seq-MNIST with a 200-sample buffer (its
hyperparameter table, mammoth ``utils/best_args.py``); Avalanche's defaults (0.1, 0.5) are the
Seq-CIFAR-10 ones. Memory batches as large as the training batch (Avalanche's default).

Not Avalanche's ``DER`` (``avalanche.training.supervised.der``), which cannot run here and
departs from the paper:

- ``compute_dataset_logits`` calls ``model(x)`` without task labels: a multi-task model
  (``MultiHeadNet``) raises a TypeError at the end of the first experience.
- Its logits are computed after the experience, in evaluation mode, for the experience's
  whole dataset, not at insertion; that dataset (``strategy.experience.dataset``) includes
  the recipe's validation split, which would then be rehearsed.
- Its memory is class-balanced by label (``ClassBalancedBufferWithLogits``), so classes of
  different tasks (all labelled 0..n-1 here) share a group; the paper's is a reservoir over
  the stream.
- One memory batch serves both terms and is concatenated into the training batch (one
  forward pass: BatchNorm statistics mixed, memory samples counted in the training
  accuracy); the paper draws two batches and runs separate passes.
- Its own ``training_epoch`` bypasses the suite's lean loop; its memory loader is an
  iterator over a ``DataLoader`` (per-sample reads).

Here the memory is ``strategies.rehearsal.memory.ReservoirMemory`` (tensors; draws from the
global torch generator).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from avalanche.models import avalanche_forward
from torch import Tensor

from ..common.config import check_count, check_range, config_of
from ..common.multihead import single_task
from .base import RehearsalPlugin, RehearsalStrategy, memory_batch_size
from .memory import ReservoirMemory


@dataclass(frozen=True)
class DERConfig:
    """DER++: memory size (samples, reservoir over the stream), the weights α (logit
    matching) and β (memory labels), memory batch size as a multiple of ``train.batch_size``."""

    mem_size: int = 200
    alpha: float = 0.2
    beta: float = 1.0
    mem_batch_ratio: float = 1.0

    def __post_init__(self):
        check_count("der.mem_size", self.mem_size)
        check_range("der.alpha", self.alpha, 0)
        check_range("der.beta", self.beta, 0)
        check_range("der.mem_batch_ratio", self.mem_batch_ratio, 0, low_open=True,
                    hint=" (each memory batch is this times train.batch_size)")


def logit_mse(out: Tensor, stored: Tensor, widths: Tensor | None) -> Tensor:
    """Mean squared error between ``out`` and the stored logits over each sample's own
    ``widths[i]`` leading columns (all the columns both have when ``widths`` is None)."""
    # the leading columns both have (an expanding head has grown since the logits were
    # stored: the stored classes are its first columns)
    width = min(out.shape[1], stored.shape[1])
    out, stored = out[:, :width], stored[:, :width]
    if widths is None:
        return F.mse_loss(out, stored)
    inside = torch.arange(out.shape[1], device=out.device) < widths.unsqueeze(1)
    diff = torch.where(inside, out - stored, torch.zeros((), dtype=out.dtype,
                                                         device=out.device))
    return diff.pow(2).sum() / inside.sum()


class DERPlugin(RehearsalPlugin):
    """DER++'s memory terms (added to the loss before the backward pass) and reservoir
    memory of (x, y, t, logits at insertion), filled over the stream (no experience count)."""

    counts_experiences = False

    def __init__(self, config: DERConfig | None = None, **overrides):
        config = config_of(DERConfig, config, overrides)
        super().__init__(config, ReservoirMemory(config.mem_size))
        self.alpha = float(config.alpha)
        self.beta = float(config.beta)
        self.mem_batch_ratio = float(config.mem_batch_ratio)
        #: the last step's terms (tensors), for inspection: {"mse": ..., "ce": ...}
        self.last_terms: dict[str, Tensor] = {}

    def memory_terms(self, strategy) -> tuple[Tensor, Tensor] | None:
        """``(MSE(h(x′), z′), CE(f(x″), y″))`` on two fresh memory batches; None while the
        memory is empty."""
        if len(self.memory) == 0:
            return None
        size = memory_batch_size(self.mem_batch_ratio, strategy.train_mb_size)
        model = strategy.model
        x, _, t, z, widths = self.memory.sample(size)
        uniform = len(self.memory.width_set) == 1
        mse = logit_mse(avalanche_forward(model, x, t), z, None if uniform else widths)
        x, y, t, _, _ = self.memory.sample(size)
        ce = strategy._criterion(avalanche_forward(model, x, t), y)
        return mse, ce

    def before_backward(self, strategy, **kwargs):
        terms = self.memory_terms(strategy)
        if terms is None:
            return
        mse, ce = terms
        self.last_terms = {"mse": mse.detach(), "ce": ce.detach()}
        strategy.loss = strategy.loss + self.alpha * mse + self.beta * ce

    @torch.no_grad()
    def after_training_iteration(self, strategy, **kwargs):
        """Offer the step's batch to the memory with the logits of its forward pass."""
        out, t = strategy.mb_output, strategy.mb_task_id
        widths = None
        if single_task(t) is None:  # a mixed batch: each row's own head only
            widths = (out != float("-inf")).sum(1)
        self.memory.add(strategy.mb_x, strategy.mb_y, t, out, widths)


class DER(RehearsalStrategy):
    """DER++ (DER with ``beta=0``) as a strategy (keyword-only, like Avalanche's wrappers)
    using ``DERPlugin``: ``config=DERConfig(...)`` or its fields as keywords."""

    config_class = DERConfig
    plugin_class = DERPlugin
    plugin_attribute = "der_plugin"
