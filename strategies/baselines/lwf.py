"""Learning without Forgetting: Avalanche's distillation with the teacher in evaluation mode.

Avalanche's ``LwFPlugin`` keeps ``copy.deepcopy(strategy.model)`` as the teacher at the end of
each experience, while the model is in training mode: the distillation targets are then
computed with dropout on, a different random target for every step. The reference (joansj/hat,
``approaches/lwf.py``) calls ``model_old.eval()`` (and freezes it): its targets are
deterministic. ``LwFPlugin`` here does the same.

The distillation formula is Avalanche's (``LearningWithoutForgetting``: α times the sum over
earlier tasks' heads of ``KL(softmax(teacher/T) ‖ softmax(student/T))``, batch mean, on the
classes seen). The reference uses a cross-entropy against the teacher's softmax with a small
``eps`` smoothing: the same gradients up to that smoothing, a value larger by the teacher's
entropy. On a multi-head model Avalanche computes the student's outputs of the earlier heads in
a second forward pass (a second dropout draw); the reference takes them from the training pass,
and so does ``LwF`` here when the network's trunk is shared by its heads (``MultiHeadNet``):
one trunk pass per step gives every head's output, for the loss and the distillation.

The student's outputs of the earlier heads are computed in training mode, as in the reference
(dropout on in the student only): with the suite's MLPs (dropout 0.2 input, 0.5 hidden) this
makes LwF forget more than fine-tuning on the digits scenarios at alpha >= 1 (the reference's
own loop does the same on these data; without dropout LwF forgets little). Kept on purpose.

In the class-incremental protocol (an expanding head, ``strategies.common.expanding``) the
distillation covers every old class at once: one softmax over the logits of the classes the
teacher saw, as LwF is run in class-incremental comparisons (e.g. mammoth's), instead of one
per earlier head.

The penalty is also part of the validation loss (``validation_batch_penalty``), as the
reference's ``eval()`` includes it: teacher and current model on the validation inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from avalanche.models import avalanche_forward
from avalanche.training.plugins import LwFPlugin as AvalancheLwFPlugin
from avalanche.training.regularization import LearningWithoutForgetting
from avalanche.training.templates import SupervisedTemplate

from ..common.config import check_range
from ..common.multihead import MultiHeadNet, single_task


@dataclass(frozen=True)
class LwFConfig:
    """LwF: the distillation's weight α and its temperature T."""

    alpha: float = 2.0
    temperature: float = 1.0

    def __post_init__(self):
        check_range("lwf.alpha", self.alpha, 0)
        check_range("lwf.temperature", self.temperature, 0, low_open=True,
                    hint=" (the distillation divides the logits by it)")


class _Distillation(LearningWithoutForgetting):
    """Avalanche's distillation term; the student's outputs of the earlier heads are taken
    from the training pass when ``student`` holds that pass's (input, outputs per head)."""

    student: tuple[torch.Tensor, dict[int, torch.Tensor]] | None = None

    def _distillation_loss(self, out, prev_out, active_units):
        """Avalanche's term; when the seen units are all of the head's, in order, without its
        two index copies (``out[:, au]`` is ``out`` then: the same numbers)."""
        au = list(active_units)
        if au != list(range(out.shape[1])):
            return super()._distillation_loss(out, prev_out, active_units)
        log_p = torch.log_softmax(out / self.temperature, dim=1)
        q = torch.softmax(prev_out / self.temperature, dim=1)
        return torch.nn.functional.kl_div(log_p, q, reduction="batchmean")

    def _lwf_penalty(self, out, x, curr_model):
        if getattr(curr_model, "class_incremental", False):
            return self._old_classes_penalty(out, x)
        if self.prev_model is None or self.student is None or self.student[0] is not x:
            return super()._lwf_penalty(out, x, curr_model)
        with torch.no_grad():
            y_prev = avalanche_forward(self.prev_model, x, None)
        y_curr = self.student[1]
        loss = 0
        for task in y_prev:  # Avalanche's order and terms
            if task in self.prev_classes_by_task:
                loss += self._distillation_loss(y_curr[task], y_prev[task],
                                                self.prev_classes_by_task[task])
        return loss


    def _old_classes_penalty(self, out, x):
        """Class-incremental (an expanding head, whose output ``out`` on ``x`` spans every
        class seen): the distillation of every old class's logit at once,
        ``KL(softmax(teacher/T) ‖ softmax(student/T))`` over the classes the teacher saw (its
        whole output), batch mean."""
        if self.prev_model is None:
            return 0
        with torch.no_grad():
            prev = self.prev_model(x)
        width = prev.shape[1]
        return self._distillation_loss(out[:, :width], prev, range(width))


class LwFPlugin(AvalancheLwFPlugin):
    """Avalanche's ``LwFPlugin`` whose teacher predicts in evaluation mode (frozen)."""

    def __init__(self, alpha: float | list[float] = 1, temperature: float = 2):
        super().__init__(alpha, temperature)
        self.lwf = _Distillation(alpha, temperature)

    @property
    def teacher(self) -> torch.nn.Module | None:
        """The model as it was after the previous experience (``None`` before)."""
        return self.lwf.prev_model

    def after_training_iteration(self, strategy, **kwargs):
        self.lwf.student = None

    def after_training_exp(self, strategy, **kwargs):
        super().after_training_exp(strategy, **kwargs)
        teacher = self.lwf.prev_model
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def validation_batch_penalty(self, strategy, x: torch.Tensor, t: torch.Tensor,
                                 output: torch.Tensor) -> torch.Tensor:
        """The training-time distillation term on a validation batch (a batch mean)."""
        penalty = self.lwf(x, output, strategy.model)
        return torch.as_tensor(penalty, dtype=torch.float32, device=x.device)


class LwF(SupervisedTemplate):
    """LwF as a strategy (keyword-only, like Avalanche's wrappers) using ``LwFPlugin``."""

    def __init__(self, *, alpha: float | list[float], temperature: float, plugins=None,
                 **kwargs):
        self.lwf_plugin = LwFPlugin(alpha, temperature)
        super().__init__(plugins=[*(plugins or []), self.lwf_plugin], **kwargs)

    def forward(self):
        """The training pass: with a teacher and a trunk shared by the heads, every head's
        output from one trunk pass (kept for the distillation term); else Avalanche's."""
        model, lwf = self.model, self.lwf_plugin.lwf
        if (self.is_training and lwf.prev_model is not None and isinstance(model, MultiHeadNet)
                and model.shared_trunk and not getattr(model, "class_incremental", False)):
            task = single_task(self.mb_task_id)
            if task is not None:
                outputs = model.forward_all_tasks(self.mb_x)
                lwf.student = (self.mb_x, outputs)
                return outputs[task]
        return super().forward()
