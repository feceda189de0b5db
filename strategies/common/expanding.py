"""One expanding head over every class seen: the class-incremental protocol's network.

``ExpandingHeadNet`` is a ``MultiHeadNet`` read as one classifier: task u's head holds the
rows of its classes, and the output is every seen task's head concatenated in task order,
whatever task label comes with the batch. Class ``c`` of task ``u`` is column
``offsets[u] + c`` (``offsets[u]`` = the classes of the tasks before u): the stream's labels
are those global indices (``benchmark.data.scenarios.class_incremental``). The head grows
when a training experience brings a new task (``adaptation``), so the cross-entropy of any
strategy ranges over every class seen so far: a rehearsal method's memory samples compete
with the current task's in one softmax.

The Task-IL reading of the same network is task u's own head (``task_logits``): the output
restricted to task u's columns.
"""

from __future__ import annotations

import torch

from .multihead import MultiHeadNet


class ExpandingHeadNet(MultiHeadNet):
    """A ``MultiHeadNet`` whose output is the concatenation of the seen tasks' heads."""

    #: strategies read this to take the class-incremental path (e.g. LwF's distillation)
    class_incremental = True

    def __init__(self, trunk: torch.nn.Module, feature_dim: int, head_sizes=()):
        super().__init__(trunk, feature_dim, head_sizes)
        #: tasks whose classes are in the output: 0..seen-1 (set when training a task)
        self.seen = 0

    @classmethod
    def from_multihead(cls, net: MultiHeadNet) -> ExpandingHeadNet:
        """The same trunk and heads (the same modules, so the same initialisation)."""
        if type(net) is not MultiHeadNet:
            raise TypeError(f"an expanding head takes a plain MultiHeadNet, not "
                            f"{type(net).__name__}: its weights must not depend on the task")
        out = cls(net.trunk, net.feature_dim)
        out.take_heads(net)
        return out

    @property
    def offsets(self) -> list[int]:
        """Column of each task's first class (task order)."""
        widths = [self.heads[str(t)].out_features for t in self.tasks]
        return [sum(widths[:i]) for i in range(len(widths))]

    def see(self, tasks) -> None:
        """The classes of ``tasks`` (and of every task before them) join the output."""
        for task in tasks:
            self.check_task(int(task))
            self.seen = max(self.seen, int(task) + 1)

    def adaptation(self, experience) -> None:  # Avalanche hook
        # (the heads exist: MultiHeadNet's would size a new one by the global labels)
        super(MultiHeadNet, self).adaptation(experience)
        if self.training:
            self.see(experience.task_labels)

    def seen_logits(self, feats: torch.Tensor) -> torch.Tensor:
        if self.seen < 1:
            raise RuntimeError("the expanding head has no class yet: train a task first")
        return torch.cat([self.heads[str(t)](feats) for t in range(self.seen)], dim=1)

    def forward(self, x: torch.Tensor, task_labels=None) -> torch.Tensor:
        """Logits over every class seen so far; the task label is not used."""
        return self.seen_logits(self.trunk(x))

    def task_logits(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """Task ``task``'s head alone (its columns of the expanding head)."""
        return self.forward_single_task(x, task)
