"""The suite's extensions of Avalanche's plugin protocol, declared in one place.

Avalanche calls a plugin's ``before_*``/``after_*`` callbacks (``avalanche.core``). The suite
looks for a few more attributes on the plugins of a strategy; each is optional, and a plugin
that lacks one is skipped. They are declared here as ``typing.Protocol`` classes (one per
hook, so a plugin implements any subset) and found through the helpers below, never by a bare
``getattr`` in the caller:

- ``validation_penalty`` / ``validation_batch_penalty``: terms of the validation loss
  (``training.recipe``);
- ``epoch_metrics``: values logged per training epoch (the benchmark's run loop);
- ``memory_samples``: the size of a rehearsal memory (the run record);
- ``agnostic_scores`` / ``task_agnostic``: the task-agnostic prediction
  (``training.agnostic``);
- ``checkpoint_transient``: attributes a checkpoint leaves out (the benchmark's checkpoints);
- ``state_dict`` / ``load_state_dict``: the plugin's own state, as in ``torch``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

HOOKS = ("validation_penalty", "validation_batch_penalty", "epoch_metrics", "memory_samples",
         "agnostic_scores", "task_agnostic", "checkpoint_transient", "state_dict",
         "load_state_dict")


@runtime_checkable
class ValidationPenalty(Protocol):
    def validation_penalty(self, strategy: Any) -> float:
        """A term of the parameters alone added once to the validation loss (HAT's c·R, EWC's,
        SI's and IMM's penalties), as the reference's ``eval()`` uses its training criterion.
        Called with the model in evaluation mode."""


@runtime_checkable
class ValidationBatchPenalty(Protocol):
    def validation_batch_penalty(self, strategy: Any, x: torch.Tensor, t: torch.Tensor,
                                 output: torch.Tensor) -> torch.Tensor:
        """A term of the data (LwF's distillation, LFL's feature drift, iCaRL's), a batch mean
        like the cross-entropy, added to every validation batch's loss; ``output`` is the
        model's output on ``x`` with task labels ``t``."""


@runtime_checkable
class EpochMetrics(Protocol):
    def epoch_metrics(self) -> dict[str, float | list[float]]:
        """Values logged with every training epoch's entry (HAT: s, R and per-layer mask
        use); keys must not clash with the run loop's own (epoch, losses, accuracy, lr)."""


@runtime_checkable
class MemorySamples(Protocol):
    def memory_samples(self) -> int:
        """The samples the plugin's rehearsal memory holds now (the record's
        ``memory_samples`` sums them over the plugins; null when no plugin has the hook)."""


@runtime_checkable
class AgnosticScores(Protocol):
    def agnostic_scores(self, strategy: Any, x: torch.Tensor, tasks: list[int]) -> torch.Tensor:
        """Scores (N, Σ classes of ``tasks``) of one prediction over every class of ``tasks``
        without the task label, columns task by task (iCaRL: nearest mean of exemplars)."""


@runtime_checkable
class TaskAgnostic(Protocol):
    #: False: the strategy has no task-agnostic prediction (it chooses its weights by the task
    #: label: PackNet), even when its network would offer one; absent counts as True
    task_agnostic: bool


@runtime_checkable
class CheckpointTransient(Protocol):
    #: names of the plugin's attributes a checkpoint leaves out: state rebuilt before it is
    #: read again (a teacher copy, caches, loaders), or that cannot be pickled
    checkpoint_transient: Sequence[str]


@runtime_checkable
class PluginState(Protocol):
    def state_dict(self) -> dict:
        """The plugin's state, as plain values and tensors (a rehearsal memory, HAT's trained
        tasks)."""

    def load_state_dict(self, state: dict) -> None:
        """Restores what ``state_dict`` returned."""


def plugins_of(strategy: Any) -> list:
    """The plugins of a strategy (its ``plugins``; none when it has none)."""
    return list(getattr(strategy, "plugins", None) or [])


def plugins_with(strategy: Any, hook: str, exclude: Iterable[Any] = ()) -> list:
    """The plugins that define ``hook`` (one of ``HOOKS``) with a value other than None, in
    the strategy's order, leaving out those in ``exclude`` (by identity)."""
    if hook not in HOOKS:
        raise ValueError(f"unknown plugin hook '{hook}'; the suite's hooks: {', '.join(HOOKS)}")
    skip = {id(p) for p in exclude}
    return [p for p in plugins_of(strategy)
            if id(p) not in skip and getattr(p, hook, None) is not None]


def hooks(strategy: Any, hook: str, exclude: Iterable[Any] = ()) -> list:
    """The bound method (or value) ``hook`` of every plugin in ``plugins_with``."""
    return [getattr(p, hook) for p in plugins_with(strategy, hook, exclude)]


def is_task_agnostic(strategy: Any) -> bool:
    """False when a plugin declares ``task_agnostic = False``."""
    return not any(getattr(p, "task_agnostic", True) is False
                   for p in plugins_of(strategy))


def memory_samples(strategy: Any) -> int | None:
    """The samples the rehearsal memories hold (the sum of every plugin's
    ``memory_samples()``), or None when no plugin keeps one."""
    counts = [h() for h in hooks(strategy, "memory_samples")]
    return int(sum(counts)) if counts else None


def epoch_metrics(strategy: Any) -> dict[str, float | list[float]]:
    """Every plugin's ``epoch_metrics()``, merged in the plugins' order."""
    out: dict[str, float | list[float]] = {}
    for h in hooks(strategy, "epoch_metrics"):
        out.update(h())
    return out


def checkpoint_transient(plugin: Any) -> frozenset[str]:
    """The attribute names ``plugin`` declares transient (empty without the hook)."""
    return frozenset(getattr(plugin, "checkpoint_transient", ()) or ())
