"""Task-score calibration on a memory: the optional, memory-using step of task inference.

The raw task scores of different tasks are not on one scale (a task whose head is confident
on everything wins too often). With a small memory of training samples of every task seen,
a per-task affine map ``s'_t = a_t · s_t + b_t`` of the scores is fitted so that the softmax
over tasks of the mapped scores predicts each memory sample's task (cross-entropy, as the
calibration of CLOM, Kim et al. 2022); the task is then ``argmax_t s'_t``. It uses memory:
``CalibrationMemory`` keeps at most ``capacity`` training-part samples, balanced over the
tasks seen (uniform within a task), and says so through ``memory_samples``.
"""

from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin

from ..rehearsal.memory import GroupMemory, balanced_quotas
from .tensor_data import training_part

#: LBFGS iterations of a fit (float64; the fit is convex in (a, b) for fixed scores)
FIT_STEPS = 100


def fit_calibration(scores: torch.Tensor, task: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` (T each) minimising the mean cross-entropy of ``softmax_t(a_t s_t + b_t)``
    against ``task`` (the position of each sample's task among the T columns of ``scores``,
    N × T); starts from the identity (a = 1, b = 0). Deterministic."""
    s = scores.detach().double()
    y = task.long().to(s.device)
    # scores of different rules have different scales: fit on standardised scores
    mu, sd = s.mean(), s.std().clamp_min(1e-12)
    z = (s - mu) / sd
    a = torch.ones(s.shape[1], dtype=torch.float64, device=s.device, requires_grad=True)
    b = torch.zeros(s.shape[1], dtype=torch.float64, device=s.device, requires_grad=True)
    opt = torch.optim.LBFGS([a, b], max_iter=FIT_STEPS, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z * a + b, y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    a, b = a.detach(), b.detach()
    # back to the raw scale: a (s - mu) / sd + b = (a / sd) s + (b - a mu / sd)
    return (a / sd).float(), (b - a * mu / sd).float()


def calibrated(scores: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor] | None
               ) -> torch.Tensor:
    """``a_t s_t + b_t`` per column (``scores`` unchanged for None)."""
    if params is None:
        return scores
    a, b = params
    t = scores.shape[1]
    return scores * a[:t].to(scores) + b[:t].to(scores)


class CalibrationMemory(SupervisedPlugin):
    """A memory of at most ``capacity`` training-part samples, balanced over the tasks seen,
    for the calibration of task scores. Filled after each experience (uniform within the
    task, from a generator of its own: training's random stream is untouched)."""

    def __init__(self, capacity: int, seed: int = 0):
        super().__init__()
        if capacity < 1:
            raise ValueError(f"a calibration memory needs capacity >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.seed = int(seed)
        self.memory = GroupMemory()
        self.n_experiences = 0

    def after_training_exp(self, strategy, **kwargs):
        x, y, t = training_part(strategy)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + self.n_experiences)
            self.memory.add(x, y, t, self.n_experiences)
            self.n_experiences += 1
            counts = self.memory.counts(self.n_experiences)
            self.memory.shrink(balanced_quotas(counts, self.capacity))

    def memory_samples(self) -> int:
        return len(self.memory)

    def samples(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x, y, t)`` of every sample held."""
        return self.memory.tensors

    def state_dict(self) -> dict:
        return {"memory": self.memory.state_dict(), "n_experiences": self.n_experiences}

    def load_state_dict(self, state: dict) -> None:
        self.memory.load_state_dict(state["memory"])
        self.n_experiences = int(state["n_experiences"])
