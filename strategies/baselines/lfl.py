"""Less-Forgetful Learning (Jung et al., 2016) for task-incremental multi-head models.

From the second task on, the loss adds lambda * sum((h - h_old)^2) / 2 (docs/hat-reference.md §2:
lambda = 0.05), where h are the features the current model computes for the current
mini-batch and h_old those of the model as it was after the previous task (a frozen copy), on
the same inputs. As in the HAT reference implementation the squared distance is summed over
the features and over the mini-batch (not averaged), and the features are the trunk's last
hidden activations before its trailing dropout (the reference's LFL network has no dropout
after its last hidden layer): for an ``nn.Sequential`` trunk the output of its last module that
is not a ``Dropout``, otherwise the trunk's output.

``features="eval"`` (default) computes h with dropout off, like h_old, in a second forward pass
of the trunk (gradients flow through it; the training mode is restored right after).
``features="train"`` takes h from the training forward pass itself (a forward hook), dropout of
the earlier layers included, which is what the reference does: the penalty then never reaches
0 (dropout noise against clean features) and, summed over the batch, it swamps the
cross-entropy. On split-digits (seed 0, 20 epochs, when this was written) "train" ended at 0.69
mean accuracy with 0.23 forgetting, "eval" at 0.93 and 0.03.

The penalty is part of the validation loss too (``validation_batch_penalty``), as the
reference's ``eval()`` includes it.

Own implementation, not Avalanche's ``LFL``/``LFLPlugin``: that one needs an Avalanche
``BaseModel`` with ``get_features``, averages the distance (``mse_loss``), switches the model to
evaluation mode inside the training loop without switching it back (dropout stays off for the
rest of the experience), and freezes the last linear layer of the model after each experience,
which on a multi-head model with all heads created up front is the head of the last task.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from ..common.config import ConfigError, check_range
from ..common.multihead import experience_task, multihead_parts

FeatureMode = Literal["eval", "train"]


@dataclass(frozen=True)
class LFLConfig:
    """LFL: weight of the feature-distance penalty (the paper's 0.05), feature mode."""

    lambda_: float = 0.05
    #: "eval": both models' features without dropout (a second forward pass of the trunk);
    #: "train": the current features of the training pass, dropout included (the reference)
    features: FeatureMode = "eval"

    def __post_init__(self):
        check_range("lfl.lambda", self.lambda_, 0)


def feature_end(trunk: nn.Module) -> int | None:
    """How many leading modules of an ``nn.Sequential`` trunk compute LFL's features (the
    trunk minus its trailing dropouts); ``None`` for other trunks (their whole output)."""
    if not isinstance(trunk, nn.Sequential):
        return None
    mods = list(trunk)
    end = len(mods)
    while end > 1 and isinstance(mods[end - 1], nn.modules.dropout._DropoutNd):
        end -= 1
    return end


class LFLPlugin(SupervisedPlugin):
    """Penalise the distance between current and previous features on the current data."""

    def __init__(self, lambda_: float = 0.05, features: FeatureMode = "eval"):
        super().__init__()
        if features not in ("eval", "train"):
            raise ConfigError(f"lfl.features must be 'eval' or 'train', got {features!r}")
        self.lambda_ = float(lambda_)
        self.features = features
        self.prev_features: nn.Module | None = None
        #: the last mini-batch's unweighted penalty (a detached tensor), for inspection
        self.last_penalty: torch.Tensor | None = None
        self._feat: torch.Tensor | None = None
        self._capturing = False
        self._hook = None
        self._trunk: nn.Module | None = None
        self._compute: nn.Module | None = None

    @staticmethod
    def _extractor(trunk: nn.Module) -> tuple[nn.Module, nn.Module]:
        """(module whose output the features are, module computing them from the input)."""
        end = feature_end(trunk)
        if end is None:
            return trunk, trunk
        return trunk[end - 1], trunk[:end]

    def _capture(self, module, inputs, output):
        if self._capturing:  # only the strategy's training forward pass
            self._feat = output

    def before_forward(self, strategy, **kwargs):
        self._capturing = True
        self._feat = None

    def after_forward(self, strategy, **kwargs):
        self._capturing = False

    def before_training_exp(self, strategy, **kwargs):
        experience_task(strategy)
        trunk, _ = multihead_parts(strategy.model)
        self._remove_hook()
        # once per experience: slicing a Sequential builds a new container each time
        self._trunk = trunk
        output_module, self._compute = self._extractor(trunk)
        if self.features == "train":
            self._hook = output_module.register_forward_hook(self._capture)

    def _current_features(self, strategy) -> torch.Tensor:
        if self.features == "train":
            feat, self._feat = self._feat, None
            if feat is None:
                raise RuntimeError("LFL: the training forward pass did not reach the trunk")
            return feat
        return self._eval_features(strategy.mb_x)

    def _eval_features(self, x: torch.Tensor) -> torch.Tensor:
        """The current features of ``x`` without dropout; the trunk's mode is restored."""
        # the mode comes from the trunk: a sliced container is always in training mode
        was = self._trunk.training
        self._compute.eval()
        try:
            return self._compute(x)
        finally:
            self._compute.train(was)

    def before_backward(self, strategy, **kwargs):
        if self.prev_features is None or self.lambda_ == 0:
            self._feat = None
            return
        feat = self._current_features(strategy)
        with torch.no_grad():
            old = self.prev_features(strategy.mb_x)
        penalty = ((feat - old) ** 2).sum() / 2
        self.last_penalty = penalty.detach()
        strategy.loss = strategy.loss + self.lambda_ * penalty

    @torch.no_grad()
    def validation_batch_penalty(self, strategy, x: torch.Tensor, t: torch.Tensor,
                                 output: torch.Tensor) -> torch.Tensor:
        """The feature-drift term on a validation batch, per mini-batch of training size.

        Training adds lambda * sum((h - h_old)^2) / 2 summed over the mini-batch; the
        reference's ``eval()`` adds the same on validation batches of the training size. Here
        it is lambda/2 * ``train_mb_size`` * the batch's mean squared distance: exactly the
        training formula for a batch of ``train_mb_size`` samples, whatever the size of the
        validation batches. Features without dropout in both feature modes (the reference
        evaluates in ``eval()`` mode).
        """
        if self.prev_features is None or self.lambda_ == 0 or len(x) == 0:
            return torch.zeros((), device=x.device)
        dist = ((self._eval_features(x) - self.prev_features(x)) ** 2).flatten(1).sum(1)
        return self.lambda_ * strategy.train_mb_size * dist.mean() / 2

    def after_training_exp(self, strategy, **kwargs):
        self._remove_hook()
        trunk, _ = multihead_parts(strategy.model)
        prev = copy.deepcopy(self._extractor(trunk)[1])
        prev.eval()
        for p in prev.parameters():
            p.requires_grad_(False)
        self.prev_features = prev

    def after_training(self, strategy, **kwargs):
        self._remove_hook()

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._feat = None


class LessForgetfulLearning(SupervisedTemplate):
    """LFL as a strategy (keyword-only, like Avalanche's wrappers)."""

    def __init__(self, *, lambda_: float = 0.05, features: FeatureMode = "eval", plugins=None,
                 **kwargs):
        self.lfl_plugin = LFLPlugin(lambda_, features)
        super().__init__(plugins=[*(plugins or []), self.lfl_plugin], **kwargs)
