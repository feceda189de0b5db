"""Incremental Moment Matching (Lee et al., NeurIPS 2017): IMM-mean and IMM-mode.

Own implementation (Avalanche has no IMM). Per task t, on a multi-head model:

1. Train with L2-transfer: loss = CE + lambda * sum((theta - theta_anchor)^2) / 2 over the
   trunk, where theta_anchor is the trunk the task starts from (the merged model of tasks
   < t; no penalty on the first task). Training continues from that merged model, as in the
   reference implementation (whose "old model" is the merged one).
2. After the task (and after the recipe restored its best-validation weights) take the
   trained trunk theta_t and merge all tasks' trunks, element-wise:

   - mean: theta* = (1/t) sum_tau theta_tau  (equal weights; the running average
     (theta_t + (t-1) theta*_{t-1}) / t of the reference implementation is the same thing)
   - mode: theta* = sum_tau (F_tau + eps) theta_tau / sum_tau (F_tau + eps), F_tau the
     diagonal empirical Fisher of task tau at theta_tau. ``eps`` keeps the quotient defined
     where every Fisher entry is 0 (it then falls back to the mean).

   The merged trunk is written into the model: it is the model that is evaluated and the
   starting point of the next task. Heads are never merged nor penalised: each task keeps its
   own head as trained.

Differences from the reference implementation (joansj/hat, approaches/imm_*.py), on purpose:
- its IMM-mode computes the Fisher-weighted merge into a local variable that never reaches the
  model (the model stays the plain L2-transfer model); here the merge is written back;
- it penalises and averages every parameter, heads included (the current head was averaged
  with its untrained initial value); here only the shared trunk is;
- its Fisher divides by the summed Fisher with a ``(F == 0)`` guard, which sends parameters
  without Fisher information to 0; here ``eps`` is added to every Fisher term instead.

Hyperparameters (docs/hat-reference.md §2): IMM-mean lambda = 1e-4 (the reference's best of
its grid). IMM-mode: docs/hat-reference.md gives "0.01/1": 0.01 is the reference
implementation's default and 1 is what its grid-search comment reports as best; the default
here is 0.01 (set
``imm-mode.lambda=1`` for the other reading).

The L2-transfer term is part of the validation loss (``validation_penalty``), as in the
reference, whose ``eval()`` uses the same criterion as training.

Fisher as in the reference: mini-batches of ``fisher_batch`` training samples of the task, the
model in training mode, F = sum_b |b| * grad_b^2 / N with grad_b the gradient of the batch's
mean cross-entropy (CE only, without the L2 term).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from avalanche.core import SupervisedPlugin
from avalanche.models import avalanche_forward
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from ..common.config import ConfigError, check_range
from ..common.multihead import experience_task, multihead_parts
from ..training.tensor_data import TensorLoader, training_part

MergeMode = Literal["mean", "mode"]


@dataclass(frozen=True)
class IMMMeanConfig:
    """IMM-mean: L2-transfer strength (the paper's 1e-4)."""

    lambda_: float = 1e-4

    def __post_init__(self):
        check_range("imm-mean.lambda", self.lambda_, 0)


@dataclass(frozen=True)
class IMMModeConfig:
    """IMM-mode: L2-transfer strength, Fisher epsilon, Fisher mini-batch size."""

    lambda_: float = 0.01
    eps: float = 1e-8
    fisher_batch: int = 20

    def __post_init__(self):
        check_range("imm-mode.lambda", self.lambda_, 0)
        check_range("imm-mode.eps", self.eps, 0, low_open=True)
        if self.fisher_batch < 1:
            raise ConfigError(f"imm-mode.fisher_batch must be >= 1, got {self.fisher_batch}")


def diagonal_fisher(
    model: nn.Module, params: dict[str, nn.Parameter], data: tuple[torch.Tensor, ...],
    batch_size: int, criterion=None,
) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher of ``params``: sum over batches of |b| * grad_b^2 / N.

    ``data`` is ``(x, y, t)``; the model is run in training mode (as the reference does) and
    left in the mode it was in. ``.grad`` of the parameters is not touched.
    """
    criterion = criterion or nn.CrossEntropyLoss()
    names = list(params)
    tensors = [params[n] for n in names]
    fisher = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    n_total = len(data[0])
    was = model.training
    model.train()
    try:
        for xb, yb, tb in TensorLoader(data, batch_size, shuffle=False):
            loss = criterion(avalanche_forward(model, xb, tb), yb)
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            for n, g in zip(names, grads, strict=True):
                if g is not None:
                    fisher[n] += len(yb) * g.detach().double() ** 2
    finally:
        model.train(was)
    return {n: (f / n_total).to(params[n].dtype) for n, f in fisher.items()}


class IMMPlugin(SupervisedPlugin):
    """L2-transfer while training, then the IMM merge of the trunk after every experience."""

    def __init__(self, mode: MergeMode = "mean", lambda_: float = 1e-4, eps: float = 1e-8,
                 fisher_batch: int = 20):
        super().__init__()
        if mode not in ("mean", "mode"):
            raise ConfigError(f"IMM mode must be 'mean' or 'mode', got {mode!r}")
        self.mode = mode
        self.lambda_ = float(lambda_)
        self.eps = float(eps)
        self.fisher_batch = int(fisher_batch)
        self.merged_tasks: list[int] = []
        self.last_fisher: dict[str, torch.Tensor] | None = None
        self._anchor: list[tuple[nn.Parameter, torch.Tensor]] | None = None
        # running sums in float64: sum_tau w_tau * theta_tau and sum_tau w_tau
        self._num: dict[str, torch.Tensor] = {}
        self._den: dict[str, torch.Tensor] = {}

    @staticmethod
    def _trunk(model) -> dict[str, nn.Parameter]:
        trunk, _ = multihead_parts(model)
        return dict(trunk.named_parameters())

    def before_training_exp(self, strategy, **kwargs):
        experience_task(strategy)
        params = self._trunk(strategy.model)
        self._anchor = None
        if self.merged_tasks and self.lambda_ > 0:
            # (parameter, anchor) pairs once per experience, in the trunk's order
            self._anchor = [(p, p.detach().clone()) for p in params.values()]

    def _l2_transfer(self) -> torch.Tensor | None:
        """lambda * sum((theta - theta_anchor)^2) / 2 over the trunk; None without anchor."""
        if self._anchor is None:
            return None
        reg = sum(((p - a) ** 2).sum() for p, a in self._anchor)
        return self.lambda_ * reg / 2

    def before_backward(self, strategy, **kwargs):
        penalty = self._l2_transfer()
        if penalty is not None:
            strategy.loss = strategy.loss + penalty

    @torch.no_grad()
    def validation_penalty(self, strategy) -> float:
        """The L2-transfer term at the current weights (the reference's ``eval()`` includes
        it: its criterion adds it)."""
        penalty = self._l2_transfer()
        return 0.0 if penalty is None else float(penalty)

    @torch.no_grad()
    def _accumulate(self, params: dict[str, nn.Parameter], fisher) -> None:
        for n, p in params.items():
            theta = p.detach().double()
            w = torch.ones_like(theta) if fisher is None else fisher[n].double() + self.eps
            self._num[n] = self._num[n] + w * theta if n in self._num else w * theta
            self._den[n] = self._den[n] + w if n in self._den else w

    def after_training_exp(self, strategy, **kwargs):
        task = experience_task(strategy)
        params = self._trunk(strategy.model)
        fisher = None
        if self.mode == "mode":
            data = training_part(strategy)
            fisher = diagonal_fisher(strategy.model, params, data, self.fisher_batch,
                                     strategy._criterion)
            self.last_fisher = fisher
        self._accumulate(params, fisher)
        self.merged_tasks.append(task)
        with torch.no_grad():
            for n, p in params.items():
                p.copy_((self._num[n] / self._den[n]).to(p.dtype))
        self._anchor = None

    def state_dict(self) -> dict:
        return {"merged_tasks": list(self.merged_tasks), "num": dict(self._num),
                "den": dict(self._den)}

    def load_state_dict(self, state: dict) -> None:
        self.merged_tasks = [int(t) for t in state["merged_tasks"]]
        self._num = dict(state["num"])
        self._den = dict(state["den"])


class IMM(SupervisedTemplate):
    """IMM-mean or IMM-mode as a strategy (keyword-only, like Avalanche's wrappers)."""

    def __init__(self, *, mode: MergeMode = "mean", lambda_: float = 1e-4, eps: float = 1e-8,
                 fisher_batch: int = 20, plugins=None, **kwargs):
        self.imm_plugin = IMMPlugin(mode, lambda_, eps, fisher_batch)
        super().__init__(plugins=[*(plugins or []), self.imm_plugin], **kwargs)
