"""Multi-head task-incremental networks: a shared trunk and one linear head per task, and the
helpers the baselines share to work with them.

``MultiHeadNet`` is an Avalanche ``MultiTaskModule``: ``avalanche_forward(model, x, t)`` and
``forward_all_tasks`` work. Heads are added explicitly (``add_task``) or by Avalanche's model
adaptation when a training experience brings a new task label.

For the baselines: ``experience_task`` (the current experience's one task label),
``multihead_parts`` (a model's trunk and heads), ``freeze_all_but`` and ``FreezingPlugin``
(parameter isolation: frozen tensors lose their gradient and optimizer state, so no optimizer
touches them), and ``BaselineError`` for a stream or model a baseline cannot work with.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from avalanche.core import SupervisedPlugin
from avalanche.models import MultiTaskModule
from torch import nn


class TaskNotTrainedError(KeyError):
    """A task id the model has never seen (no head, no HAT embedding)."""

    def __init__(self, task: int, known: Sequence[int]):
        known_txt = ", ".join(map(str, sorted(known))) or "none"
        super().__init__(
            f"task {task} was never trained by this model (known tasks: {known_txt}); "
            "train on it first, or add it with model.add_task(task, n_classes)"
        )
        self.task = task

    def __str__(self) -> str:
        return str(self.args[0])


def single_task(task_labels: torch.Tensor) -> int | None:
    """The task label when every entry of ``task_labels`` has it, else None. A batch of one
    experience's task label (``TensorLoader`` hands it out as a stride-0 view) is read
    without a pass over it."""
    if task_labels.dim() == 1 and len(task_labels) > 0 and task_labels.stride(0) == 0:
        return int(task_labels[0])
    unique = torch.unique(task_labels)
    return int(unique.item()) if len(unique) == 1 else None


def add_head(heads: nn.ModuleDict, task: int, in_features: int, n_classes: int, device,
             dtype: torch.dtype | None = None) -> bool:
    """Add a linear head for ``task`` unless it exists; True when one was added."""
    key = str(int(task))
    if key in heads:
        return False
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1 for task {task}, got {n_classes}")
    # initialised on the CPU generator, as before, then moved (the same heads on any device)
    heads[key] = nn.Linear(in_features, int(n_classes), dtype=dtype).to(device)
    return True


def _stacked_heads(feats: torch.Tensor, task_labels: torch.Tensor, tasks: list[int],
                   heads: list[nn.Linear], width: int) -> torch.Tensor:
    """Each sample's head on ``feats`` for a mixed-task batch, as ``MultiHeadNet.forward``
    defines it (logits beyond a sample's head are -inf), in one product with the heads'
    weights stacked: a fixed number of operations however many tasks the batch holds (the
    per-task loop costs five indexing operations and a product per task, and as many
    backward nodes)."""
    n = len(feats)
    logits = torch.addmm(torch.cat([h.bias for h in heads]), feats,
                         torch.cat([h.weight for h in heads]).t())
    lookup = torch.zeros(max(tasks) + 1, dtype=torch.long, device=feats.device)
    lookup[torch.tensor(tasks, device=feats.device)] = torch.arange(len(tasks),
                                                                    device=feats.device)
    pos = lookup[task_labels]
    widths = [h.out_features for h in heads]
    if all(w == width for w in widths):
        cols = pos.view(n, 1, 1).expand(n, 1, width)
        return logits.view(n, len(tasks), width).gather(1, cols).squeeze(1)
    offsets = torch.tensor([sum(widths[:i]) for i in range(len(widths))], device=feats.device)
    sizes = torch.tensor(widths, device=feats.device)
    j = torch.arange(width, device=feats.device)
    cols = (offsets[pos].unsqueeze(1) + j).clamp_(max=logits.shape[1] - 1)
    return logits.gather(1, cols).masked_fill(j >= sizes[pos].unsqueeze(1), float("-inf"))


class MultiHeadNet(MultiTaskModule):
    """Trunk ``nn.Module`` producing ``feature_dim`` features, plus one head per task."""

    def __init__(self, trunk: nn.Module, feature_dim: int, head_sizes: Sequence[int] = ()):
        super().__init__()
        self.trunk = trunk
        self.feature_dim = int(feature_dim)
        self.heads = nn.ModuleDict()
        for task, n_classes in enumerate(head_sizes):
            self.add_task(task, n_classes)

    # ------------------------------------------------------------------ tasks
    @property
    def tasks(self) -> list[int]:
        return sorted(int(k) for k in self.heads)

    def add_task(self, task: int, n_classes: int) -> None:
        """Create the head (and, in subclasses, the task's state) for ``task``."""
        p = next(self.trunk.parameters())  # heads in the trunk's device and dtype
        if add_head(self.heads, task, self.feature_dim, n_classes, p.device, p.dtype):
            self.max_class_label = max(self.max_class_label, int(n_classes))

    def take_heads(self, model: MultiHeadNet) -> None:
        """``model``'s heads (the same modules) become this network's (a wrapper's)."""
        for key, head in model.heads.items():
            self.heads[key] = head
        self.max_class_label = model.max_class_label

    def adaptation(self, experience) -> None:  # Avalanche hook
        super().adaptation(experience)
        if self.training:
            n_classes = max(experience.classes_in_this_experience) + 1
            for task in experience.task_labels:
                self.add_task(task, n_classes)

    def check_task(self, task: int) -> None:
        if str(task) not in self.heads:
            raise TaskNotTrainedError(task, self.tasks)

    # ---------------------------------------------------------------- forward
    def features(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.trunk(x)

    def forward_single_task(self, x: torch.Tensor, task_label: int) -> torch.Tensor:
        task = int(task_label)
        self.check_task(task)
        return self.heads[str(task)](self.features(x, task))

    @property
    def shared_trunk(self) -> bool:
        """Whether one trunk pass serves every head (the trunk does not depend on the task):
        then mixed-task batches and ``forward_all_tasks`` run the trunk once, as the
        reference's multi-head networks do."""
        cls = type(self)
        return (cls.features is MultiHeadNet.features
                and cls.forward_single_task is MultiHeadNet.forward_single_task)

    def forward(self, x: torch.Tensor, task_labels) -> torch.Tensor:
        """Per-sample heads; in a mixed batch, logits outside a sample's head are -inf."""
        if task_labels is None:
            return self.forward_all_tasks(x)
        if isinstance(task_labels, int):
            return self.forward_single_task(x, task_labels)
        task = single_task(task_labels)
        if task is not None:
            return self.forward_single_task(x, task)
        tasks = torch.unique(task_labels).tolist()
        for task in tasks:
            self.check_task(task)
        heads = [self.heads[str(t)] for t in tasks]
        width = max(h.out_features for h in heads)
        feats = self.features(x, tasks[0]) if self.shared_trunk else None
        if feats is not None and all(type(h) is nn.Linear and h.bias is not None
                                     for h in heads):
            return _stacked_heads(feats, task_labels, tasks, heads, width)
        out = x.new_full((x.shape[0], width), float("-inf"))
        for task in tasks:
            sel = task_labels == task
            if feats is None:
                logits = self.forward_single_task(x[sel], task)
            else:
                logits = self.heads[str(task)](feats[sel])
            out[sel, : logits.shape[1]] = logits
        return out

    def forward_all_tasks(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Outputs of every known task's head (LwF-style code calls this)."""
        tasks = self.tasks
        if tasks and self.shared_trunk:
            feats = self.features(x, tasks[0])
            return {task: self.heads[str(task)](feats) for task in tasks}
        return {task: self.forward_single_task(x, task) for task in tasks}

    # ------------------------------------------------------------ checkpoints
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Recreate heads present in a checkpoint so that a fresh model can resume.
        head_prefix = prefix + "heads."
        for key, value in state_dict.items():
            if key.startswith(head_prefix) and key.endswith(".weight"):
                task = key[len(head_prefix) :].split(".")[0]
                if task not in self.heads:
                    self.add_task(int(task), value.shape[0])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# ------------------------------------------------------------------ baseline helpers
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
