"""Task-score calibration on a memory: the fit, a decision it must flip, and a memory that
leaves training's random stream alone."""

from __future__ import annotations

import pytest
import torch

from strategies.training.calibration import CalibrationMemory, calibrated, fit_calibration
from strategies.training.task_inference import infer


def test_calibration_flips_the_decisions_a_task_offset_gets_wrong():
    """Task 0's head is over-confident: its raw score beats task 1's by 2 on every input, so
    raw inference always answers task 0. On a memory of both tasks the fitted offsets undo
    it: every task-1 sample is then inferred as task 1, every task-0 sample stays task 0."""
    g = torch.Generator().manual_seed(0)
    n = 50
    fit = torch.rand(2 * n, generator=g)  # how well a sample fits its own task
    task = torch.cat([torch.zeros(n), torch.ones(n)]).long()
    own = torch.stack([torch.where(task == 0, 1 + fit, fit),
                       torch.where(task == 1, 1 + fit, fit)], dim=1)
    raw = own + torch.tensor([2.0, 0.0])
    assert (raw.argmax(1) == 0).all()
    params = fit_calibration(raw, task)
    assert torch.equal(calibrated(raw, params).argmax(1), task)
    # through infer: logits whose max_logit is the raw score
    logits = [raw[:, :1].repeat(1, 2), raw[:, 1:].repeat(1, 3)]
    assert (infer(logits, "max_logit").task == 0).all()
    out = infer(logits, "max_logit", lambda s: calibrated(s, params))
    assert torch.equal(out.task, task)


def test_the_fit_is_deterministic_and_the_identity_is_kept_when_it_is_best():
    s = torch.tensor([[3.0, 0.0], [0.0, 3.0], [2.5, 0.1], [0.2, 2.8]])
    t = torch.tensor([0, 1, 0, 1])
    a1, b1 = fit_calibration(s, t)
    a2, b2 = fit_calibration(s, t)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert torch.equal(calibrated(s, (a1, b1)).argmax(1), t)
    assert calibrated(s, None) is s


class _Exp:
    def __init__(self, x, y, t):
        self.x, self.y, self.t = x, y, t


def test_the_memory_is_balanced_over_tasks_and_keeps_the_training_rng(monkeypatch):
    from strategies.training import calibration as cal

    memory = CalibrationMemory(10, seed=3)
    batches = [(torch.randn(n, 2), torch.zeros(n).long(), torch.full((n,), u))
               for u, n in enumerate((20, 3, 20))]
    it = iter(batches)
    monkeypatch.setattr(cal, "training_part", lambda strategy: next(it))
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    for _ in batches:
        memory.after_training_exp(None)
    assert torch.equal(torch.rand(3), want)  # training's random stream untouched
    _, _, t = memory.samples()
    assert torch.bincount(t).tolist() == [4, 3, 3]  # 10 over three tasks, the rest to the first
    assert memory.memory_samples() == 10
    state = memory.state_dict()
    other = CalibrationMemory(10)
    other.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(other.samples(), memory.samples(),
                                                 strict=True))
    with pytest.raises(ValueError, match="capacity"):
        CalibrationMemory(0)
