"""The class-incremental reading of a scenario: global labels and its random reference.

A scenario's tasks label their classes 0..n-1 (the task-incremental protocol, the task label
given at test). In the class-incremental protocol a class is a (task, label) pair with one
global index in training order: label ``c`` of task ``u`` becomes ``offsets[u] + c``, where
``offsets[u]`` counts the classes of the tasks before u. The class order is the scenario's
(seeded where the scenario shuffles its classes or tasks).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from reports.metrics import random_stratified_accuracy

from .scenarios import Scenario


def class_offsets(n_classes: list[int]) -> list[int]:
    """The global index of each task's first class, in training order."""
    return [sum(n_classes[:u]) for u in range(len(n_classes))]


def class_incremental(scenario: Scenario) -> Scenario:
    """``scenario`` with global labels (train and test): task u's label c -> offsets[u] + c."""
    offsets = class_offsets(scenario.classes_per_task)
    tasks = [replace(task, train_y=task.train_y + off, test_y=task.test_y + off)
             for task, off in zip(scenario.tasks, offsets, strict=True)]
    return replace(scenario, tasks=tasks)


def class_random_accuracy(scenario: Scenario) -> list[list[float]]:
    """Row t, entry u <= t: expected accuracy on task u's test set of the stratified random
    classifier over every class of tasks 0..t (it guesses class c with c's share of those
    tasks' training samples: Σ_c p_train(c)·p_test(c), 0 outside task u's classes).
    ``scenario``'s labels are per task (0..n-1)."""
    train = [torch.bincount(t.train_y, minlength=t.n_classes).double() for t in scenario.tasks]
    test = [torch.bincount(t.test_y, minlength=t.n_classes).double() for t in scenario.tasks]
    rows = []
    for t in range(scenario.n_tasks):
        seen = float(sum(c.sum() for c in train[: t + 1]))
        # task u's classes hold a share train[u].sum() / seen of the guesses
        rows.append([random_stratified_accuracy(train[u].numpy(), test[u].numpy())
                     * float(train[u].sum()) / seen for u in range(t + 1)])
    return rows
