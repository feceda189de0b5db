"""Rehearsal in the class-incremental protocol: the memory's samples enter a loss over every
class seen, where they compete with the current task's classes (with per-task heads, the
task-incremental protocol, they never do)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmark.experiment import Experiment
from benchmark.run.runner import run_experiment
from strategies.common.expanding import ExpandingHeadNet
from strategies.rehearsal import icarl

#: split-digits: two classes a task
WIDTH = 2


def _spy_cross_entropy(monkeypatch) -> list[tuple[int, int, torch.Tensor]]:
    """Every training cross-entropy from now on: (tasks seen by the expanding head, logit
    columns, targets); tasks seen is 0 without an expanding head."""
    seen = {"n": 0}
    real_see = ExpandingHeadNet.see

    def see(self, tasks):
        real_see(self, tasks)
        seen["n"] = self.seen

    calls: list[tuple[int, int, torch.Tensor]] = []
    real = F.cross_entropy

    def spy(input, target, *args, **kwargs):
        if input.requires_grad:  # a training loss (validation runs without gradients)
            calls.append((seen["n"], input.shape[1], target.detach().clone()))
        return real(input, target, *args, **kwargs)

    monkeypatch.setattr(ExpandingHeadNet, "see", see)
    monkeypatch.setattr(F, "cross_entropy", spy)
    return calls


def _run(strategy: str, protocol: str) -> dict:
    return run_experiment(Experiment("split-digits", strategy, 0, {
        "train": {"epochs": 2}, "scenario": {"protocol": protocol}}))


@pytest.mark.parametrize("strategy", ["replay", "agem", "der", "er-ace", "gdumb"])
def test_memory_samples_enter_one_cross_entropy_over_every_class_seen(strategy, monkeypatch):
    calls = _spy_cross_entropy(monkeypatch)
    _run(strategy, "class")
    # a loss holding an earlier task's class (global labels: below the current task's first)
    memory = [(n, w) for n, w, y in calls if n >= 2 and int(y.min()) < WIDTH * (n - 1)]
    assert memory, "no training loss on the memory's samples"
    assert {n for n, _ in memory} >= {2, 3, 4, 5}  # every task after the first
    assert all(w == WIDTH * n for n, w in memory)  # over every class seen, no fewer


@pytest.mark.parametrize("strategy", ["replay", "der"])
def test_with_task_heads_memory_samples_only_meet_their_own_tasks_classes(strategy,
                                                                           monkeypatch):
    calls = _spy_cross_entropy(monkeypatch)
    _run(strategy, "task")
    assert calls and {w for _, w, _ in calls} == {WIDTH}


def test_icarl_scores_its_exemplars_over_every_class_seen(monkeypatch):
    seen: list[tuple[int, set[int]]] = []
    real = icarl.ICaRLPlugin.training_loss

    def spy(self, strategy):
        seen.append((self._logits.shape[1], set(strategy.mbatch[3].tolist())))
        return real(self, strategy)

    monkeypatch.setattr(icarl.ICaRLPlugin, "training_loss", spy)
    _run("icarl", "class")
    with_memory = [(w, tasks) for w, tasks in seen if len(tasks) > 1]
    assert with_memory
    assert all(w == WIDTH * (max(tasks) + 1) for w, tasks in with_memory)
