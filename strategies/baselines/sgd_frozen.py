"""SGD-F: plain fine-tuning on the first task, then only each new task's head trains.

The HAT paper's "SGD with frozen layers" baseline (hat-reference §2). Own implementation:
Avalanche has no such strategy.

After the first experience the trunk is frozen with ``requires_grad = False``; during every
experience the heads of all other tasks are frozen the same way. A frozen parameter also loses
its ``.grad`` and its optimizer state (and any gradient another plugin gives it is dropped
before the optimizer step). PyTorch's SGD, Adam and AdamW skip a parameter whose ``.grad`` is
``None`` entirely: no momentum step, no weight decay. So the
protection holds with the optimizer state carried across experiences (stock Avalanche) and with
optimizers rebuilt over ``model.parameters()`` (the training recipe), and the trunk and old
heads stay bit-identical.

The helpers here (``experience_task``, ``freeze_all_but``) are shared by the other
parameter-isolation baselines (PNN, PathNet).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.templates import SupervisedTemplate
from torch import nn


class BaselineError(ValueError):
    """A stream or model that a baseline cannot work with; the message says what to change."""


def experience_task(strategy) -> int:
    """The single task label of the strategy's current experience, or a clear error."""
    exp = strategy.experience
    labels = getattr(exp, "task_labels", None)
    if labels is None or len(labels) != 1:
        raise BaselineError(
            f"experience {getattr(exp, 'current_experience', '?')} has task labels {labels}; "
            "this baseline needs a task-incremental stream with one task label per experience"
        )
    return int(labels[0])


def multihead_parts(model: nn.Module) -> tuple[nn.Module, nn.ModuleDict]:
    """``(trunk, heads)`` of a ``MultiHeadNet``-like model, or a clear error."""
    trunk = getattr(model, "trunk", None)
    heads = getattr(model, "heads", None)
    if not isinstance(trunk, nn.Module) or not isinstance(heads, nn.ModuleDict):
        raise BaselineError(
            f"{type(model).__name__} has no 'trunk' module and 'heads' ModuleDict; this "
            "baseline needs a multi-head model such as strategies.MultiHeadNet"
        )
    return trunk, heads


def drop_optimizer_state(optimizer: torch.optim.Optimizer | None, params) -> None:
    """Forget the optimizer state (momentum, moments) of ``params``."""
    if optimizer is None:
        return
    for p in params:
        optimizer.state.pop(p, None)


def freeze_all_but(
    model: nn.Module, trainable: Iterable[nn.Parameter],
    optimizer: torch.optim.Optimizer | None = None,
) -> list[nn.Parameter]:
    """Only ``trainable`` keeps ``requires_grad``; the rest lose grad and optimizer state.

    Returns the frozen parameters.
    """
    keep = {id(p) for p in trainable}
    frozen = []
    for p in model.parameters():
        train = id(p) in keep
        p.requires_grad_(train)
        if not train:
            p.grad = None
            frozen.append(p)
    drop_optimizer_state(optimizer, frozen)
    return frozen


class FreezingPlugin(SupervisedPlugin):
    """Base of the parameter-isolation baselines: frozen tensors never reach the optimizer.

    Subclasses set ``self._frozen`` in ``before_training_exp`` (see ``freeze_all_but``);
    the trained task labels are checkpointed with ``state_dict``.
    """

    def __init__(self):
        super().__init__()
        self.trained_tasks: list[int] = []
        self._frozen: list[nn.Parameter] = []

    def before_update(self, strategy, **kwargs):
        # another plugin may have produced gradients for frozen tensors: drop them so that no
        # optimizer touches these tensors (momentum and weight decay included)
        for p in self._frozen:
            p.grad = None

    def after_training_exp(self, strategy, **kwargs):
        self.trained_tasks.append(experience_task(strategy))
        self._frozen = []

    def state_dict(self) -> dict:
        return {"trained_tasks": list(self.trained_tasks)}

    def load_state_dict(self, state: dict) -> None:
        self.trained_tasks = [int(t) for t in state["trained_tasks"]]


class FreezeTrunkPlugin(FreezingPlugin):
    """SGD-F as a plugin: the whole network learns the first experience, then heads only."""

    def before_training_exp(self, strategy, **kwargs):
        task = experience_task(strategy)
        trunk, heads = multihead_parts(strategy.model)
        if str(task) not in heads:
            raise BaselineError(f"the model has no head for task {task}")
        trainable = list(heads[str(task)].parameters())
        if not self.trained_tasks:
            trainable += list(trunk.parameters())
        self._frozen = freeze_all_but(strategy.model, trainable, strategy.optimizer)


class SGDFrozen(SupervisedTemplate):
    """SGD-F as a strategy (keyword-only, like Avalanche's wrappers)."""

    def __init__(self, *, plugins=None, **kwargs):
        self.freeze_plugin = FreezeTrunkPlugin()
        super().__init__(plugins=[*(plugins or []), self.freeze_plugin], **kwargs)
