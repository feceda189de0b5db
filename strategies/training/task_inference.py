"""Task inference: a class-incremental prediction from a network whose weights depend on the
task (HAT, PackNet, PNN, PathNet).

Such a network answers "which class, given task t?" (its task-aware forward: task t's masked
path or column, then task t's head). Without the task label, the class-incremental prediction
factors into a task prediction and a within-task prediction (Kim et al., NeurIPS 2022): run
every learned task's path and head on the input, giving logits ``z_t``; score how well the
input fits each task from ``z_t`` alone; take the best task ``t* = argmax_t score(z_t)``, then
its class ``argmax z_{t*}``. The scores (one function each, :data:`SCORES`):

- ``max_softmax``: ``max_c softmax(z_t)_c`` (the maximum softmax probability; TPL's
  "HAT_CIL" baseline, Lin et al., ICLR 2024);
- ``max_logit``: ``max_c z_t,c``;
- ``energy``: ``logsumexp_c z_t,c`` (the negative free energy);
- ``neg_entropy``: ``Σ_c p_c log p_c`` with ``p = softmax(z_t)``.

Higher means "more likely this task". Inference only reads the network: it runs in evaluation
mode (HAT: binary masks at s = smax) under ``torch.no_grad`` and writes nothing, so HAT's
earlier tasks stay bit-identical. Usable from any Avalanche script:
``infer(task_logits(model, x, tasks), "energy")``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .lean_loop import set_training

Score = Callable[[torch.Tensor], torch.Tensor]


def max_softmax(z: torch.Tensor) -> torch.Tensor:
    """``max_c softmax(z)_c`` per row."""
    return torch.softmax(z, dim=1).amax(dim=1)


def max_logit(z: torch.Tensor) -> torch.Tensor:
    """``max_c z_c`` per row."""
    return z.amax(dim=1)


def energy(z: torch.Tensor) -> torch.Tensor:
    """``logsumexp_c z_c`` per row (the negative free energy at temperature 1)."""
    return torch.logsumexp(z, dim=1)


def neg_entropy(z: torch.Tensor) -> torch.Tensor:
    """``Σ_c p_c log p_c`` per row, ``p = softmax(z)`` (0 for a one-hot p; -log C at most
    uncertain)."""
    log_p = torch.log_softmax(z, dim=1)
    return (log_p.exp() * log_p).sum(dim=1)


#: the task scores by name, in the order they are reported
SCORES: dict[str, Score] = {
    "max_softmax": max_softmax,
    "max_logit": max_logit,
    "energy": energy,
    "neg_entropy": neg_entropy,
}


@torch.no_grad()
def task_logits(model: torch.nn.Module, x: torch.Tensor, tasks: Sequence[int]
                ) -> list[torch.Tensor]:
    """``z_t`` for each task of ``tasks``: the model's task-aware forward
    (``forward_single_task``: task t's path and head) in evaluation mode, one pass per task,
    or every task in one pass where the model has ``all_task_logits`` (HAT: the masks
    stacked, the same values); the model's mode is restored."""
    was_training = model.training
    set_training(model, False)
    try:
        all_tasks = getattr(model, "all_task_logits", None)
        if all_tasks is not None:
            return all_tasks(x, [int(t) for t in tasks])
        return [model.forward_single_task(x, int(t)) for t in tasks]
    finally:
        set_training(model, was_training)


@dataclass(frozen=True)
class Inference:
    """What task inference decides for a batch: per sample, the position in ``tasks`` of the
    task chosen, the class chosen within it, and every task's score (N × T)."""

    task: torch.Tensor
    label: torch.Tensor
    scores: torch.Tensor


def infer(logits: Sequence[torch.Tensor], score: str | Score,
          calibrate: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Inference:
    """Task inference from the per-task logits ``logits`` (one N × C_t tensor per task):
    ``t* = argmax_t score(z_t)`` (the first task on ties), then ``argmax z_{t*}``;
    ``calibrate`` maps the N × T scores first (``strategies.training.calibration``)."""
    fn = SCORES[score] if isinstance(score, str) else score
    scores = torch.stack([fn(z.float()) for z in logits], dim=1)
    if calibrate is not None:
        scores = calibrate(scores)
    task = scores.argmax(dim=1)
    labels = torch.stack([z.argmax(dim=1) for z in logits], dim=1)
    return Inference(task, labels.gather(1, task.unsqueeze(1)).squeeze(1), scores)


@dataclass
class TaskInferenceRows:
    """One score's task inference on the first ``seen`` tasks' sets: per task, the Class-IL
    accuracy (task and class inferred right), the task-prediction accuracy, and every sample's
    score of each task (for the AUROC of a task's score)."""

    class_il: list[float]
    task_prediction: list[float]
    scores: list[torch.Tensor]


@torch.no_grad()
def task_inference_rows(model: torch.nn.Module,
                        sets: Sequence[tuple[torch.Tensor, torch.Tensor]], seen: int,
                        device: torch.device | str, batch_size: int = 256,
                        scores: Sequence[str] = tuple(SCORES),
                        calibration: Mapping[str, Callable[[torch.Tensor], torch.Tensor]]
                        | None = None) -> dict[str, TaskInferenceRows]:
    """Task inference among tasks 0..seen-1 on the first ``seen`` tasks' ``(x, y)`` sets
    (labels per task), for every score of ``scores`` from one pass per task and batch: a
    sample of task u is right in Class-IL when the task inferred is u and the class inferred
    within it is y; the task-prediction accuracy of u is the share of its samples whose task
    is inferred right. ``calibration``: per score, the map of its N × T scores (none: raw)."""
    tasks = list(range(seen))
    calibration = calibration or {}
    counts = {s: ([0] * seen, [0] * seen, [[] for _ in tasks]) for s in scores}
    for u, (x, y) in enumerate(sets[:seen]):
        for i in range(0, len(y), batch_size):
            xb = x[i:i + batch_size].to(device)
            yb = y[i:i + batch_size].to(device)
            z = task_logits(model, xb, tasks)
            for s in scores:
                out = infer(z, s, calibration.get(s))
                on_task = out.task == u
                right, task_right, kept = counts[s]
                task_right[u] += int(on_task.sum())
                right[u] += int((on_task & (out.label == yb)).sum())
                kept[u].append(out.scores.cpu())
    n = [max(len(y), 1) for _, y in sets[:seen]]
    return {s: TaskInferenceRows([r / k for r, k in zip(right, n, strict=True)],
                                 [r / k for r, k in zip(task_right, n, strict=True)],
                                 [torch.cat(k) if k else torch.zeros(0, seen) for k in kept])
            for s, (right, task_right, kept) in counts.items()}


def task_inference_accuracy(model: torch.nn.Module,
                            sets: Sequence[tuple[torch.Tensor, torch.Tensor]], seen: int,
                            score: str, device: torch.device | str,
                            batch_size: int = 256) -> tuple[list[float], list[float]]:
    """``(class_il, task_prediction)`` of one score (:func:`task_inference_rows`)."""
    rows = task_inference_rows(model, sets, seen, device, batch_size, (score,))[score]
    return rows.class_il, rows.task_prediction
