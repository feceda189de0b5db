"""Scenario registry: task-incremental streams (task labels given), seed-controlled.

INTERFACE STUB — to be completed (see docs/record-schema.md and the issue #3 text).
The runner relies on exactly these names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass(frozen=True)
class TaskData:
    """One task: tensors already preprocessed; labels remapped to 0..n_classes-1."""

    name: str
    n_classes: int
    train_x: torch.Tensor  # float32, shape (N, *input_shape)
    train_y: torch.Tensor  # int64, values in [0, n_classes)
    test_x: torch.Tensor
    test_y: torch.Tensor


@dataclass(frozen=True)
class Scenario:
    """A built scenario: tasks in training order for one seed."""

    name: str
    seed: int
    input_shape: tuple[int, ...]
    tasks: list[TaskData]
    valid_fraction: float  # fraction of each task's training data held out for validation

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def classes_per_task(self) -> list[int]:
        return [t.n_classes for t in self.tasks]


@dataclass(frozen=True)
class ScenarioSpec:
    """Registry entry."""

    name: str
    description: str
    n_tasks: int
    embedded: bool  # True when the data ship with the suite's dependencies (no download)
    network: str  # default network family: "mlp" or "alexnet"
    builder: Callable[[int, Path], Scenario] = field(repr=False)

    def check_available(self, data_root: Path, download: bool = False) -> None:
        """Raise DatasetMissingError (before any training) when data are missing."""
        raise NotImplementedError

    def build(self, seed: int, data_root: Path = Path("data")) -> Scenario:
        return self.builder(seed, Path(data_root))


SCENARIOS: dict[str, ScenarioSpec] = {}


def get_scenario(name: str) -> ScenarioSpec:
    """Registry lookup; raises UnknownNameError listing the valid names."""
    raise NotImplementedError


def to_benchmark(scenario: Scenario):
    """Avalanche benchmark with train_stream/test_stream; experience i has task label i."""
    raise NotImplementedError
