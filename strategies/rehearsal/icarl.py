"""iCaRL (Rebuffi et al., CVPR 2017) on the suite's multi-head task-incremental networks.

iCaRL learns a representation with a sigmoid loss plus distillation, on the new data and a
memory of exemplars, and classifies by the nearest mean of exemplars. How it maps onto
``MultiHeadNet`` (shared trunk, a head per task, labels 0..n-1 within each task, task labels
at train and test); a *class* is a (task, label) pair:

- features φ(x): the trunk's output (``model.features(x, task)``), L2-normalised (§2.1: every
  feature vector, and every average of them used as a class mean, is re-normalised);
- training (Algorithm 3, UpdateRepresentation): the outputs of all seen classes are the
  heads of all seen tasks, concatenated. Each training sample (the current task's training
  part plus every exemplar) gets the paper's targets: one-hot δ on the current task's
  classes (0 there for exemplars of older tasks), and on the older tasks' classes the
  sigmoid outputs of the network as it was before this task (distillation, computed in
  evaluation mode once per experience: the inputs and that network do not change during
  it). The loss is the paper's binary cross-entropy summed over those classes, averaged
  over the mini-batch (the paper writes the sum over the data set; the suite's losses are
  mini-batch means);
- memory (Algorithms 2, 4, 5): at most ``mem_size`` = K exemplars in total,
  m = ⌊K / number of classes seen⌋ per class. After each experience the older classes keep
  their first m exemplars (Algorithm 5, ReduceExemplarSet) and each new class gets m chosen
  by herding (Algorithm 4, ConstructExemplarSet: greedily the sample that brings the mean of
  the chosen normalised features closest to the class's mean of normalised features) from
  the experience's *training part*: the recipe's validation split (taken out of the dataset
  in ``after_train_dataset_adaptation``) and the test data never enter the memory. A class
  with fewer than m training samples keeps all of them;
- classification (Algorithm 1, nearest mean of exemplars): μ_y = the re-normalised mean of
  the normalised features of class y's exemplars, recomputed with the current network after
  each experience and before each evaluation; the prediction is argmin_y ‖φ(x) − μ_y‖.
  Task-aware protocol (the suite's primary result, ``strategy.eval``): the strategy's
  evaluation forward returns −‖φ(x) − μ_y‖ over the classes of the sample's task only.
  Task-agnostic protocol (``agnostic_scores``): the same scores over every class of the
  tasks asked for. A task not trained yet has no exemplars: its scores are its untrained
  head's logits (the upper triangle of the accuracy matrix, as for every strategy);
- validation (the recipe's early stopping): the criterion is the paper's loss on the task's
  own head (one-hot targets) and ``validation_batch_penalty`` adds the distillation term of
  the older heads, so the validation loss is iCaRL's training loss on held-out samples.

``mem_size`` defaults to 200 samples: the paper's K = 2000 is 4% of CIFAR-100's training
set and leaves 20 exemplars per class after its 100 classes; 200 leaves the same 20 per class
after the 10 classes of split-digits, and about 4% of permuted-digits' training data (4 per
class after its 50 classes). Give ``icarl.mem_size=2000`` for the paper's CIFAR-100 budget.

What is reused from Avalanche 0.6.0, and why the rest is not:

- ``HerdingSelectionStrategy.make_sorted_indices_from_features`` is Algorithm 4 (candidates
  restricted to the samples not chosen yet) and orders every sample of a class; it is used on
  the normalised features (it does not normalise them itself), in float64 so that the choice
  does not hinge on float32 rounding. Its constructor needs a named layer of the model
  (``FeatureExtractorBackbone``); the features are computed here instead.
- ``NCMClassifier`` gives −‖φ − μ_y‖ per class. Its defects, worked around: a class id below
  the largest one that has no mean gets a zero vector as its mean, which it can predict (its
  distance 1 to a unit vector beats any mean more than 60° away): such classes are scored −∞
  here; with ``normalize=True`` it divides by the raw feature norm (NaN for the all-zero
  features a ReLU trunk can output): the features are normalised here with an ε and it is
  built with ``normalize=False``.
- ``ICaRL`` / ``_ICaRLPlugin`` cannot run on these models and streams: they need a separate
  feature extractor and one single-head classifier over class-incremental labels
  (``benchmark.classes_order``, ``n_classes_per_exp``), while here every task numbers its
  classes from 0, so classes of different tasks collide. Their other defects, fixed here:
  exemplars are chosen from ``experience.dataset`` (the recipe's validation samples too);
  m = ⌈K / classes⌉ lets the memory exceed K (K = 2000 with 3 classes holds 2001); the herding
  loop stops after 1000 iterations and, when it draws an exemplar again, moves its target
  without adding one, so a class can end with fewer than m exemplars; the class means average
  the features of horizontally flipped inputs for every 4-d batch (CIFAR's augmentation in
  the original code), which changes the identity of digits.
- ``ICaRLLossPlugin`` distils a single head over global class ids (``old_classes`` from the
  experience's targets: with per-task labels these are the new task's ids, whose one-hot
  targets it overwrites), its teacher is a copy of the model in training mode (the targets
  change with every dropout draw), and ``BCELoss`` averages over classes as well (the paper
  sums over them).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.models import NCMClassifier
from avalanche.training.storage_policy import HerdingSelectionStrategy
from torch import nn

from ..common.config import ConfigError, config_of, split_config
from ..common.multihead import (
    BaselineError,
    MultiHeadNet,
    TaskNotTrainedError,
    experience_task,
    single_task,
)
from ..training.lean_loop import set_training
from ..training.tensor_data import TensorLoader, training_part
from .base import RehearsalStrategy

#: ε of the feature normalisation (an all-zero feature vector stays zero)
NORM_EPS = 1e-12


@dataclass(frozen=True)
class ICaRLConfig:
    """iCaRL's memory budget K in samples (module docstring: 200 for the digits; the paper's
    2000 on CIFAR-100)."""

    mem_size: int = 200

    def __post_init__(self):
        k = self.mem_size
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(
                f"icarl.mem_size must be an integer >= 1 (exemplars in total), got {k!r}")


def normalise(features: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (§2.1); an all-zero row stays zero."""
    return F.normalize(features, dim=1, eps=NORM_EPS)


class _Herding(HerdingSelectionStrategy):
    """Avalanche's herding order on features given by the caller (no layer lookup)."""

    def __init__(self):  # the base class would wrap a named layer of a model
        pass


def herding_order(features: torch.Tensor) -> torch.Tensor:
    """Algorithm 4 on one class: all sample indices in herding order.

    With φ the L2-normalised rows of ``features`` and μ their mean, the k-th index is
    argmin over the samples not chosen yet of ‖μ − (φ(x) + Σ_{j<k} φ(p_j)) / k‖ (in float64).
    The first m indices are the class's m exemplars; keeping a prefix is Algorithm 5.
    """
    if len(features) == 0:
        return torch.zeros(0, dtype=torch.long)
    phi = normalise(features.detach().flatten(1).double())
    return torch.tensor(_Herding().make_sorted_indices_from_features(phi), dtype=torch.long)


def icarl_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The paper's loss per sample: Σ over classes of the binary cross-entropy between
    sigmoid(logits) and targets, averaged over the batch. Columns with a −∞ logit (beyond a
    sample's head in a mixed-task batch) add nothing."""
    finite = torch.isfinite(logits)
    safe = torch.where(finite, logits, torch.zeros_like(logits))
    per = F.binary_cross_entropy_with_logits(safe, targets, reduction="none")
    return torch.where(finite, per, torch.zeros_like(per)).sum(1).mean()


class ICaRLClassificationLoss(nn.Module):
    """``criterion(logits, y)``: :func:`icarl_bce` with one-hot targets over the given head's
    classes (the new-class term of the paper's loss). The recipe's validation loss uses it."""

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return icarl_bce(logits, F.one_hot(y.long(), logits.shape[1]).to(logits.dtype))


def _features(model: MultiHeadNet, x: torch.Tensor, task: int) -> torch.Tensor:
    return normalise(model.features(x, task).flatten(1))


def _chunks(x: torch.Tensor, size: int):
    for i in range(0, len(x), size):
        yield x[i:i + size]


class ICaRLPlugin(SupervisedPlugin):
    """iCaRL's memory, targets, nearest-mean-of-exemplars scores and validation penalty.

    State (plain tensors and modules): ``exemplars`` maps (task, label) to that class's
    exemplar inputs in herding order; ``ncm`` maps a task to the ``NCMClassifier`` holding its
    class means and ``has_mean`` to a boolean per class of its head; ``seen_tasks`` lists the
    trained tasks in training order. The teacher and the experience's data live only during
    an experience.
    """

    #: per-experience scratch (None between experiences), left out of checkpoints
    checkpoint_transient = ("teacher", "_current", "_loader", "_logits")

    def __init__(self, config: ICaRLConfig | None = None, **overrides):
        super().__init__()
        self.config = config_of(ICaRLConfig, config, overrides)
        self.mem_size = int(self.config.mem_size)
        self.exemplars: dict[tuple[int, int], torch.Tensor] = {}
        self.ncm: dict[int, NCMClassifier] = {}
        self.has_mean: dict[int, torch.Tensor] = {}
        self.seen_tasks: list[int] = []
        #: the network as it was before the current experience (eval mode, frozen)
        self.teacher: nn.Module | None = None
        self.task: int | None = None
        #: (task, first column, width) of every seen task in the training loss's columns
        self.columns: list[tuple[int, int, int]] = []
        self._current: tuple[torch.Tensor, torch.Tensor] | None = None
        self._loader: TensorLoader | None = None
        self._logits: torch.Tensor | None = None

    # ------------------------------------------------------------------ memory
    def memory_samples(self) -> int:
        """Exemplars held now (all classes)."""
        return sum(len(x) for x in self.exemplars.values())

    def per_class(self, n_classes: int) -> int:
        """m = ⌊K / classes seen⌋ (Algorithm 2)."""
        return self.mem_size // max(n_classes, 1)

    @staticmethod
    def _model(strategy) -> MultiHeadNet:
        model = strategy.model
        if not isinstance(model, MultiHeadNet):
            raise BaselineError(
                f"iCaRL needs a strategies.MultiHeadNet (a trunk giving the features, a head "
                f"per task), got {type(model).__name__}")
        return model

    def _memory_set(self, skip_task: int) -> tuple[torch.Tensor, ...] | None:
        """(x, y, t) of every exemplar of the tasks other than ``skip_task``."""
        keys = [k for k in self.exemplars if k[0] != skip_task and len(self.exemplars[k])]
        if not keys:
            return None
        x = torch.cat([self.exemplars[k] for k in keys])
        sizes = torch.tensor([len(self.exemplars[k]) for k in keys])
        t, y = torch.tensor(keys, dtype=torch.long).repeat_interleave(sizes, dim=0).unbind(1)
        return x, y.to(x.device), t.to(x.device)

    # -------------------------------------------------------------- training
    def before_training_exp(self, strategy, **kwargs):
        model = self._model(strategy)
        task = experience_task(strategy)
        x, y, _ = training_part(strategy)
        y = y.long()
        new_classes = torch.unique(y).tolist()
        old = {k for k in self.exemplars if k[0] != task}
        n_classes = len(old) + len(new_classes)
        if self.per_class(n_classes) < 1:
            raise ConfigError(
                f"icarl.mem_size={self.mem_size} cannot hold one exemplar for each of "
                f"the {n_classes} classes seen after task {task}; give icarl.mem_size >= "
                f"{n_classes}")
        self.task = task
        self._current = (x, y)
        order = [u for u in self.seen_tasks if u != task] + [task]
        self.columns, offset = [], 0
        for u in order:
            model.check_task(u)
            width = model.heads[str(u)].out_features
            self.columns.append((u, offset, width))
            offset += width
        # the training set: the current training part, then the older tasks' exemplars
        t = torch.full((len(y),), task, dtype=torch.long, device=y.device)
        memory = self._memory_set(task)
        if memory is not None:
            x = torch.cat([x, memory[0]])
            y = torch.cat([y, memory[1].to(y.device)])
            t = torch.cat([t, memory[2].to(y.device)])
        new_width = self.columns[-1][2]
        onehot = F.one_hot(y, max(new_width, int(y.max()) + 1))[:, :new_width]
        onehot = onehot * (t == task).unsqueeze(1)
        targets = [self._teacher_outputs(strategy, x), onehot.to(torch.float32)]
        targets = torch.cat([q for q in targets if q is not None], dim=1)
        self._loader = TensorLoader((x, y, targets, t), strategy.train_mb_size, shuffle=True)
        strategy.dataloader = self._loader

    @torch.no_grad()
    def _teacher_outputs(self, strategy, x: torch.Tensor) -> torch.Tensor | None:
        """sigmoid of the previous network's heads of the older tasks on ``x`` (the
        distillation targets q), in evaluation mode; None on the first task. Keeps that
        network as ``teacher`` for the validation penalty."""
        self.teacher = None
        old = self.columns[:-1]
        if not old:
            return None
        teacher = copy.deepcopy(strategy.model)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher
        size = strategy.eval_mb_size or 256
        return torch.cat([torch.sigmoid(self._logits_of(teacher, xb, old))
                          for xb in _chunks(x, size)])

    @staticmethod
    def _logits_of(model: MultiHeadNet, x: torch.Tensor,
                   columns: list[tuple[int, int, int]]) -> torch.Tensor:
        """The heads of ``columns``' tasks on ``x``, concatenated in that order."""
        if model.shared_trunk:
            feats = model.features(x, columns[0][0])
            return torch.cat([model.heads[str(u)](feats) for u, _, _ in columns], dim=1)
        return torch.cat([model.forward_single_task(x, u) for u, _, _ in columns], dim=1)

    def before_training_epoch(self, strategy, **kwargs):
        if self._loader is not None:  # whatever the order of the data plugins
            strategy.dataloader = self._loader

    def training_forward(self, strategy) -> torch.Tensor:
        """Every seen head on the mini-batch (kept for the loss); returns each sample's own
        head, −∞ beyond it (``MultiHeadNet``'s mixed-batch layout)."""
        x, t = strategy.mb_x, strategy.mb_task_id
        logits = self._logits_of(strategy.model, x, self.columns)
        self._logits = logits
        task = single_task(t)
        if task is not None:
            _, off, width = next(c for c in self.columns if c[0] == task)
            return logits[:, off:off + width]
        width = max(w for _, _, w in self.columns)
        out = logits.new_full((len(x), width), float("-inf"))
        for u, off, w in self.columns:
            sel = t == u
            out[sel, :w] = logits[sel, off:off + w]
        return out

    def training_loss(self, strategy) -> torch.Tensor:
        """The paper's loss on the mini-batch: :func:`icarl_bce` of all seen classes' outputs
        against the targets the loader carries (one-hot new classes, distilled old ones)."""
        logits, self._logits = self._logits, None
        if logits is None or len(strategy.mbatch) != 4:
            raise RuntimeError("iCaRL: the mini-batch does not come from ICaRLPlugin's loader "
                               "(x, y, targets, t) or the training forward pass did not run")
        return icarl_bce(logits, strategy.mbatch[2].to(logits.dtype))

    @torch.no_grad()
    def validation_batch_penalty(self, strategy, x: torch.Tensor, t: torch.Tensor,
                                 output: torch.Tensor) -> torch.Tensor:
        """The distillation term of the older tasks' classes on a validation batch (the
        criterion gives the current task's term), batch mean like the training loss."""
        old = self.columns[:-1]
        if self.teacher is None or not old or len(x) == 0:
            return torch.zeros((), device=x.device)
        q = torch.sigmoid(self._logits_of(self.teacher, x, old))
        return icarl_bce(self._logits_of(strategy.model, x, old), q)

    def after_training_exp(self, strategy, **kwargs):
        model = self._model(strategy)
        task = self.task
        x, y = self._current
        self.teacher, self._loader, self._current, self._logits = None, None, None, None
        new_classes = torch.unique(y).tolist()
        for key in [k for k in self.exemplars if k[0] == task]:  # a task trained again
            del self.exemplars[key]
        m = self.per_class(len(self.exemplars) + len(new_classes))
        for key in self.exemplars:  # Algorithm 5
            self.exemplars[key] = self.exemplars[key][:m]
        was = model.training
        set_training(model, False)
        try:
            with torch.no_grad():
                size = strategy.eval_mb_size or 256
                for c in new_classes:  # Algorithm 4
                    xc = x[y == c]
                    feats = torch.cat([model.features(xb, task).flatten(1)
                                       for xb in _chunks(xc, size)])
                    keep = herding_order(feats)[:m].to(xc.device)
                    self.exemplars[(task, int(c))] = xc.index_select(0, keep)
        finally:
            set_training(model, was)
        if task not in self.seen_tasks:
            self.seen_tasks.append(task)
        self.update_means(strategy)

    # ----------------------------------------------------------- classifying
    @torch.no_grad()
    def update_means(self, strategy) -> None:
        """Algorithm 1's class means from the exemplars with the current network."""
        model = self._model(strategy)
        was = model.training
        set_training(model, False)
        try:
            size = strategy.eval_mb_size or 256
            self.ncm, self.has_mean = {}, {}
            for u in self.seen_tasks:
                width = model.heads[str(u)].out_features
                means = {}
                for (v, c), xs in self.exemplars.items():
                    if v == u and len(xs) and c < width:
                        phi = torch.cat([_features(model, xb, u) for xb in _chunks(xs, size)])
                        means[c] = normalise(phi.mean(0, keepdim=True))[0]
                has = torch.zeros(width, dtype=torch.bool, device=strategy.device)
                has[list(means)] = True
                ncm = NCMClassifier(normalize=False)
                if means:
                    ncm.replace_class_means_dict(means)
                self.ncm[u], self.has_mean[u] = ncm, has
        finally:
            set_training(model, was)

    def before_eval(self, strategy, **kwargs):
        if self.seen_tasks:
            self.update_means(strategy)

    def _ncm(self, feats: torch.Tensor, task: int) -> torch.Tensor:
        """−‖φ − μ_y‖ for the classes of ``task`` (−∞ for a class without exemplars)."""
        has = self.has_mean[task]
        out = feats.new_full((len(feats), len(has)), float("-inf"))
        if has.any():
            scores = self.ncm[task](feats)
            out[:, : scores.shape[1]] = scores
            out[:, ~has] = float("-inf")
        return out

    @torch.no_grad()
    def task_aware_scores(self, strategy, x: torch.Tensor, task_labels) -> torch.Tensor:
        """NCM scores over the classes of each sample's task; a task without exemplars (not
        trained yet) gets its head's logits. Mixed-task batches: −∞ beyond a task's classes."""
        model = self._model(strategy)
        if isinstance(task_labels, int):
            task_labels = torch.full((len(x),), task_labels, dtype=torch.long,
                                     device=x.device)
        task = single_task(task_labels)
        tasks = [task] if task is not None else torch.unique(task_labels).tolist()
        parts = {}
        for u in tasks:
            xs = x if task is not None else x[task_labels == u]
            if u in self.ncm:
                parts[u] = self._ncm(_features(model, xs, u), u)
            else:
                parts[u] = model.forward_single_task(xs, u)
        if task is not None:
            return parts[task]
        width = max(p.shape[1] for p in parts.values())
        out = x.new_full((len(x), width), float("-inf"))
        for u, p in parts.items():
            out[task_labels == u, : p.shape[1]] = p
        return out

    @torch.no_grad()
    def agnostic_scores(self, strategy, x: torch.Tensor, tasks: list[int]) -> torch.Tensor:
        """NCM over every class of ``tasks``: (N, Σ classes), columns task by task in the
        order of ``tasks``, each task's classes 0..n-1 (the task-agnostic protocol)."""
        model = self._model(strategy)
        missing = [u for u in tasks if u not in self.ncm]
        if missing:
            raise TaskNotTrainedError(missing[0], self.seen_tasks)
        shared = normalise(model.features(x, tasks[0]).flatten(1)) if (
            model.shared_trunk and tasks) else None
        cols = [self._ncm(shared if shared is not None else _features(model, x, u), u)
                for u in tasks]
        return torch.cat(cols, dim=1) if cols else x.new_zeros((len(x), 0))


class ICaRL(RehearsalStrategy):
    """iCaRL as a strategy (keyword-only, like Avalanche's wrappers) using ``ICaRLPlugin``
    (``config=ICaRLConfig(...)`` or ``mem_size=``): its training pass computes every seen
    head and the paper's loss; its evaluation pass returns the task-aware
    nearest-mean-of-exemplars scores."""

    config_class = ICaRLConfig
    plugin_class = ICaRLPlugin
    plugin_attribute = "icarl_plugin"

    def __init__(self, *, config: ICaRLConfig | None = None, **kwargs):
        kwargs["criterion"] = ICaRLClassificationLoss()  # the paper's loss, not the caller's
        super().__init__(config=split_config(ICaRLConfig, config, kwargs), **kwargs)

    def forward(self):
        if self.is_training:
            return self.icarl_plugin.training_forward(self)
        return self.icarl_plugin.task_aware_scores(self, self.mb_x, self.mb_task_id)

    def criterion(self):
        if self.is_training:
            return self.icarl_plugin.training_loss(self)
        # evaluation (Avalanche's loss metrics only): cross-entropy of the NCM scores
        return F.cross_entropy(self.mb_output, self.mb_y)
