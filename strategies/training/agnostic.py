"""Task-agnostic evaluation: one prediction over every class seen, without the task label.

The suite's primary protocol is task-incremental (a head per task, the task label given at
test). The task-agnostic protocol asks the same trained model for one label among the classes
of all tasks seen so far (a class is a (task, label) pair), with no task label:

- a plugin of the strategy that defines ``agnostic_scores(strategy, x, tasks)`` gives the
  scores itself (iCaRL: nearest mean of exemplars over every seen class);
- otherwise a ``MultiHeadNet`` whose trunk does not depend on the task (``shared_trunk``)
  scores with its seen heads concatenated: one trunk pass, the argmax over all their logits
  (the "expanding single head" reading of a multi-head network);
- otherwise there is no task-agnostic prediction: HAT, PackNet, PNN and PathNet choose their
  weights by the task label and implement no task-inference rule, so they report n/a (None).
  A plugin can declare ``task_agnostic = False`` to say the same of its strategy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..common.expanding import ExpandingHeadNet
from ..common.hooks import hooks, is_task_agnostic
from ..common.multihead import MultiHeadNet
from .lean_loop import set_training

Scorer = Callable[[torch.Tensor, list[int]], torch.Tensor]


def agnostic_scorer(strategy) -> Scorer | None:
    """``scores(x, tasks)`` -> (N, Σ classes of ``tasks``) for ``strategy``, columns task by
    task in the order of ``tasks``; None when the strategy has no task-agnostic prediction."""
    if not is_task_agnostic(strategy):
        return None
    own = next(iter(hooks(strategy, "agnostic_scores")), None)
    if own is not None:
        return lambda x, tasks: own(strategy, x, list(tasks))
    model = strategy.model
    if not (isinstance(model, MultiHeadNet) and model.shared_trunk):
        return None

    def concatenated_heads(x: torch.Tensor, tasks: list[int]) -> torch.Tensor:
        feats = model.features(x, tasks[0])
        return torch.cat([model.heads[str(t)](feats) for t in tasks], dim=1)

    return concatenated_heads


@torch.no_grad()
def agnostic_accuracy(strategy, test_sets: Sequence[tuple[torch.Tensor, torch.Tensor]],
                      n_classes: Sequence[int], seen: int, batch_size: int = 256
                      ) -> list[float] | None:
    """Task-agnostic accuracy on each of the first ``seen`` tasks' ``(x, y)`` test sets, the
    prediction ranging over the classes of tasks ``0..seen-1`` (``n_classes[u]`` each);
    None without a scorer.

    A sample of task u with label y is correct when the argmax column is
    ``Σ_{v<u} n_classes[v] + y``. The model is evaluated in evaluation mode; its mode is
    restored."""
    scorer = agnostic_scorer(strategy)
    if scorer is None:
        return None
    tasks = list(range(seen))
    model = strategy.model
    was_training = model.training
    set_training(model, False)
    try:
        offset, row = 0, []
        for (x, y), width in zip(test_sets[:seen], n_classes[:seen], strict=True):
            correct = 0
            for i in range(0, len(y), batch_size):
                xb = x[i:i + batch_size].to(strategy.device)
                yb = y[i:i + batch_size].to(strategy.device)
                pred = scorer(xb, tasks).argmax(1)
                correct += int((pred == yb + offset).sum())
            row.append(correct / max(len(y), 1))
            offset += int(width)
        return row
    finally:
        set_training(model, was_training)


@torch.no_grad()
def expanding_head_accuracy(model: ExpandingHeadNet,
                            sets: Sequence[tuple[torch.Tensor, torch.Tensor]],
                            device: torch.device | str, batch_size: int = 256
                            ) -> tuple[list[float], list[float]]:
    """``(task_il, class_il)`` of an expanding head on each task's ``(x, y)`` set, global
    labels, every set read once: ``task_il[u]`` the accuracy of the argmax over task u's own
    columns (its task label given; every task, trained or not), ``class_il[u]`` the accuracy
    of the argmax over every class of the tasks seen (``model.seen`` of them; no task label),
    for the tasks seen. The model is evaluated in evaluation mode; its mode is restored."""
    offsets = model.offsets
    widths = [model.heads[str(t)].out_features for t in model.tasks]
    seen_width = offsets[model.seen - 1] + widths[model.seen - 1]
    was_training = model.training
    set_training(model, False)
    try:
        task_il, class_il = [], []
        for u, (x, y) in enumerate(sets):
            lo = offsets[u]
            own = every = 0
            for i in range(0, len(y), batch_size):
                xb = x[i:i + batch_size].to(device)
                yb = y[i:i + batch_size].to(device)
                feats = model.features(xb, u)
                if u < model.seen:  # (task u's head is columns lo.. of the seen ones)
                    logits = model.seen_logits(feats)[:, :seen_width]
                    own += int((logits[:, lo:lo + widths[u]].argmax(1) + lo == yb).sum())
                    every += int((logits.argmax(1) == yb).sum())
                else:
                    own += int((model.heads[str(u)](feats).argmax(1) + lo == yb).sum())
            n = max(len(y), 1)
            task_il.append(own / n)
            if u < model.seen:
                class_il.append(every / n)
        return task_il, class_il
    finally:
        set_training(model, was_training)
