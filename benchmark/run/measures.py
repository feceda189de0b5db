"""What a run measures besides accuracy, as Avalanche plugins and helpers: test accuracy per
experience (``_Accuracy``), peak memory (``_PeakMemory``), the tensors a strategy holds
(``held_tensors_mb``), its rehearsal memories (``memory_samples``) and per-epoch training
statistics (``_History``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from types import FunctionType, MethodType, ModuleType
from typing import Any

import torch
from avalanche.core import SupervisedPlugin

from strategies import TrainingRecipePlugin
from strategies.common.hooks import epoch_metrics
from strategies.common.hooks import memory_samples as memory_samples


class _Accuracy(SupervisedPlugin):
    """Collects test accuracy per evaluated experience."""

    def __init__(self):
        super().__init__()
        self.correct = 0
        self.total = 0
        self.results: list[float] = []

    def before_eval(self, strategy, **kwargs):
        self.results = []

    def before_eval_exp(self, strategy, **kwargs):
        self.correct = self.total = 0

    def after_eval_iteration(self, strategy, **kwargs):
        # summed on the device: one host synchronisation per experience, not per batch
        self.correct = self.correct + (strategy.mb_output.argmax(1) == strategy.mb_y).sum()
        self.total += len(strategy.mb_y)

    def after_eval_exp(self, strategy, **kwargs):
        self.results.append(int(self.correct) / max(self.total, 1))


def resident_mb() -> float:
    """This process's resident set size now, in MB (``/proc/self/statm``; elsewhere the
    peak so far from ``getrusage``)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        import resource  # (lazy: a Unix module)

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class _PeakMemory(SupervisedPlugin):
    """Peak memory of each experience's training, in MB: on CUDA the allocator's peak
    (``torch.cuda.max_memory_allocated``, reset when the experience starts); on the CPU the
    growth of the process's resident set size over its size when the run started, sampled
    when the experience starts and after every epoch (a sample per epoch misses peaks inside
    a step, and memory an earlier run of the same process freed is reused unseen: the same
    rule for every strategy, a rough figure; ``state_mb`` is the exact one)."""

    def __init__(self):
        super().__init__()
        self.base = resident_mb()
        self.peak = 0.0

    def _cuda(self, strategy) -> bool:
        return torch.device(strategy.device).type == "cuda"

    def before_training_exp(self, strategy, **kwargs):
        if self._cuda(strategy):
            torch.cuda.reset_peak_memory_stats(strategy.device)
            self.peak = 0.0
        else:
            self.peak = max(0.0, resident_mb() - self.base)

    def after_training_epoch(self, strategy, **kwargs):
        if not self._cuda(strategy):
            self.peak = max(self.peak, resident_mb() - self.base)

    def after_training_exp(self, strategy, **kwargs):
        if self._cuda(strategy):
            self.peak = torch.cuda.max_memory_allocated(strategy.device) / 2**20
        else:
            self.peak = max(self.peak, resident_mb() - self.base)


def held_tensors_mb(strategy, skip: Sequence[object] = ()) -> float:
    """MB of the distinct tensor storages ``strategy`` holds between experiences: the model's
    parameters and buffers, the optimizer's state, and every tensor the plugins keep (EWC's
    Fisher and anchors, SI's importances, LwF's teacher, rehearsal memories, ...), each
    storage counted once; the plugins in ``skip`` (the runner's own) are left out. Exact and
    the same on every machine: what a method keeps, not what a step needs."""
    seen: set[int] = set()
    alive: list[Any] = []  # the temporary dicts visited stay alive: ids are not reused
    storages: dict[int, int] = {}

    def visit(obj: Any, depth: int) -> None:
        if depth > 6 or id(obj) in seen:
            return
        seen.add(id(obj))
        alive.append(obj)
        if isinstance(obj, torch.Tensor):
            st = obj.untyped_storage()
            storages[st.data_ptr()] = st.nbytes()
        elif isinstance(obj, torch.nn.Module):
            for v in obj.state_dict(keep_vars=True).values():
                visit(v, depth + 1)
            visit({k: v for k, v in vars(obj).items() if not k.startswith("_")}, depth + 1)
        elif isinstance(obj, Mapping):
            for v in obj.values():
                visit(v, depth + 1)
        elif isinstance(obj, list | tuple | set):
            for v in obj:
                visit(v, depth + 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type | FunctionType | MethodType
                                                          | ModuleType):
            visit(vars(obj), depth + 1)

    visit(strategy.model, 0)
    visit(dict(strategy.optimizer.state), 0)
    for plugin in strategy.plugins:
        if not any(plugin is s for s in skip):
            visit(plugin, 0)
    return sum(storages.values()) / 2**20


class _History(SupervisedPlugin):
    """Per-epoch training statistics, forwarded to ``on_epoch`` (progress bar, tracker).

    Each step only keeps references to its loss, outputs and targets; the epoch's mean loss
    and accuracy are reduced once at its end (a few operations per epoch, not per step)."""

    def __init__(self, recipe: TrainingRecipePlugin, on_epoch: Callable[[dict], None]):
        super().__init__()
        self.recipe = recipe
        self.on_epoch = on_epoch
        self.entries: list[dict] = []
        self._steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def before_training_exp(self, strategy, **kwargs):
        self.entries = []

    def before_training_epoch(self, strategy, **kwargs):
        self._steps = []

    def after_training_iteration(self, strategy, **kwargs):
        self._steps.append((strategy.loss.detach(), strategy.mb_output.detach(), strategy.mb_y))

    def _epoch_means(self) -> tuple[float, float]:
        if not self._steps:
            return 0.0, 0.0
        losses, outputs, targets = zip(*self._steps, strict=True)
        sizes = torch.tensor([len(y) for y in targets], dtype=losses[0].dtype,
                             device=losses[0].device)
        n = int(sizes.sum())
        loss = torch.dot(torch.cat([v.reshape(1) for v in losses]), sizes)
        correct = (torch.cat(outputs).argmax(1) == torch.cat(targets)).sum()
        self._steps = []
        return float(loss) / n, int(correct) / n

    def after_training_epoch(self, strategy, **kwargs):
        # the recipe plugin runs before this one: its validation loss is for this epoch
        train_loss, train_acc = self._epoch_means()
        entry = {
            "epoch": len(self.entries) + 1,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "valid_loss": self.recipe.last_valid_loss,
            "lr": self.recipe.lr if self.recipe.active else
            float(strategy.optimizer.param_groups[0]["lr"]),
        }
        entry.update(epoch_metrics(strategy))
        self.entries.append(entry)
        self.on_epoch(entry)
