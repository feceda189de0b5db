"""PackNet (Mallya & Lazebnik, CVPR 2018) on Avalanche's PackNet modules, fixed for the suite.

The method (paper §3; reference code arunmallya/packnet): train a task on the weights still
free, prune a fraction ``prune_ratio`` of that task's weights per layer (the smallest |w|,
set to zero), retrain the kept ones for ``post_prune_epochs`` epochs, then freeze them for
good; the pruned ones are the next task's free weights. At test time task t uses exactly the
weights of tasks ≤ t (its binary mask "owner ≤ t"), so earlier tasks never change. Each task
keeps (1 − r) of what it was given: task t (from 0) owns a fraction r^t (1 − r) of every
layer (r = ``prune_ratio``). Reference code: ``src/prune.py`` (ranking, ``round``, zeroing,
gradients of frozen weights zeroed), ``src/main.py`` (``train_nobn``, post-prune retraining),
``src/scripts/run_sequence.sh`` (ratios, retraining epochs and learning rate).

Built on ``avalanche.models.packnet``: the layers are ``WeightAndBiasPackNetModule`` (its
per-weight ``task_index`` owner map, magnitude ranking ``_rank_prunable``, visible/unfrozen
masks, gradient hook and state machine) and the trunk is a ``PackNetModel`` (prune, freeze
and activate on every layer). Defects of Avalanche 0.6.0 with this suite, each fixed here:

1. ``PackNetModel`` cannot wrap a ``MultiHeadNet``: its ``forward(x, task_id)`` calls the
   wrapped model without the task labels, requires one task per batch (assert), and wraps
   the heads too, so every task's head would be pruned and frozen by earlier tasks.
   ``PackNetNet`` wraps the trunk only; each head belongs to its task: it trains during its
   task only (``requires_grad`` off otherwise) and is never pruned (the reference keeps one
   classifier per dataset outside the pruned network). Mixed-task batches work
   (``MultiHeadNet.forward`` runs each task's masked trunk).
2. ``WeightAndBiasPackNetModule.has_bias`` tests ``weight`` instead of ``bias``: freezing a
   bias-free conv (every ResNet conv) raises AttributeError. Fixed in ``PackNetLayer``.
3. BatchNorm is refused ("does not yet support norms"). ``PackNetBatchNorm`` does what the
   reference does by default (its 'nobias-nobn' runs: neither biases nor BatchNorm train
   after the first task, ``train_nobn``): BatchNorm trains with the first task, then its affine
   parameters and running statistics are fixed and it normalises with them (evaluation mode)
   while later tasks train. So the ResNets are supported with exact protection. Biases are
   fixed after the first task too (Avalanche's ``_freeze_pruned`` already does that).
4. ``PackNetPlugin`` prunes at the fixed epoch ``train_epochs − post_prune_epochs``. With the
   recipe's early stopping that epoch may never come (``freeze_pruned`` then raises
   StateError), and the recipe's best-weights restore (a ``state_dict`` load, PackNet's state
   buffers included) would undo a prune made mid-training. Here the schedule follows the
   paper around the recipe: the recipe trains the task (early stopping, lr schedule, best
   validation weights restored); then, in ``after_training_exp``, prune, retrain
   ``post_prune_epochs`` epochs on the same training part with a fresh optimizer of the
   same type at ``post_prune_lr_scale`` × the task's initial learning rate (the reference:
   10 epochs at 1e-4 after training at 1e-3) and keep the best of {pruned, each retraining
   epoch} by the recipe's validation loss (the reference keeps the best of them by its
   evaluation accuracy; without validation, ``train.recipe=fixed``, the last), then freeze.
   Retraining runs ``strategy.training_epoch`` (every per-iteration callback fires: gradient
   clipping, the protection below); epoch callbacks do not (the recipe does not count or
   early-stop these epochs: ``epochs`` in the record are the training epochs).
5. The gradient hook zeroes frozen weights' gradients, but momentum, Adam's moments and
   weight decay (L2 and AdamW's decoupled) still move them; the plugin's own optimizer
   reset rebuilds from ``optimizer.defaults`` (AdamW's holds ``decoupled_weight_decay``,
   which ``AdamW()`` refuses: TypeError). Here every optimizer step is followed by writing
   back, bit for bit, the frozen entries (and the pruned ones, zero, while retraining) from
   a copy taken when the experience starts; whole frozen tensors (earlier heads, biases and
   BatchNorm after the first task) have ``requires_grad`` off and no gradient. The optimizer
   is rebuilt per experience with ``recipe.same_optimizer`` (fresh state, as the reference).
   Cost: one pass over the trunk's weights per step (the masks themselves are skipped while a
   task trains on every visible weight, see ``PackNetLayer``). Avalanche's gradient hook is
   kept (frozen gradients are zero for clipping and Adam's moments, as the reference's
   ``make_grads_zero``); a deep copy of the model loses it, the write-back still protects.
6. Pruning counts ``int(n · r)`` (``0.29 · 100`` prunes 28) and leaves the pruned weights'
   values (invisible, but the next task starts from them); the reference prunes
   ``round(r · n)`` and sets them to zero. Both as the reference here.
7. The ``PackNet`` strategy wrapper passes ``plugins=[plugins, PackNetPlugin(...)]``: the
   caller's plugins become one nested list, which Avalanche silently never calls. ``PackNet``
   here appends its plugin to a flat list. The plugin's ``prune_proportion`` is a lambda
   (not picklable): the ratio is a plain number here.

Every task is pruned, the last one too (a continual learner does not know which task is
last; the reference leaves its last dataset unpruned). A task label trains once: a second
experience of a trained task is refused (its weights are frozen). Task labels map to PackNet
slots in training order (``PackNetNet.trained_labels``, a buffer); an untrained label uses
every weight trained so far plus the free ones. PackNet has no task-agnostic prediction
(``task_agnostic = False``) and no rehearsal memory (no ``memory_samples``: null in the
record, as for the other parameter-isolation methods). State: the owner maps and PackNet's
state are buffers, the trained labels a buffer, so ``state_dict`` checkpoints hold it all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from avalanche.models.packnet import PackNetModel, PackNetModule, WeightAndBiasPackNetModule
from avalanche.training.templates import SupervisedTemplate
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from ..common.config import ConfigError, check_range
from ..common.multihead import (
    BaselineError,
    FreezingPlugin,
    MultiHeadNet,
    experience_task,
    freeze_all_but,
)
from ..training.lean_loop import set_training
from ..training.recipe import ModelSnapshot, same_optimizer

#: Avalanche's owner map is uint8 with 255 marking pruned weights: at most 254 tasks
MAX_TASKS = 254


@dataclass(frozen=True)
class PackNetConfig:
    """PackNet's hyperparameters (defaults: the reference code's, arunmallya/packnet
    ``src/scripts/run_all_sequence.sh`` / ``run_sequence.sh``).

    ``prune_ratio``: fraction of each layer's weights of the task just trained that is
    released to later tasks (0.75: the reference's ratio for every dataset added after the
    first; it prunes the first, ImageNet, by 0.5). ``post_prune_epochs``: retraining epochs
    after the prune (10, the reference's). ``post_prune_lr_scale``: their learning rate, as a
    fraction of the task's initial one (0.1: the reference retrains at 1e-4 after training
    at 1e-3).
    """

    prune_ratio: float = 0.75
    post_prune_epochs: int = 10
    post_prune_lr_scale: float = 0.1

    def __post_init__(self):
        check_range("packnet.prune_ratio", self.prune_ratio, 0, 1, low_open=True,
                    high_open=True, hint=" (the fraction of a task's weights released to later "
                    "tasks; the paper uses 0.5 or 0.75)")
        if (isinstance(self.post_prune_epochs, bool) or not isinstance(self.post_prune_epochs, int)
                or self.post_prune_epochs < 0):
            raise ConfigError(
                f"packnet.post_prune_epochs must be an integer >= 0 (retraining epochs after "
                f"pruning; 0 skips retraining), got {self.post_prune_epochs!r}")
        check_range("packnet.post_prune_lr_scale", self.post_prune_lr_scale, 0, low_open=True,
                    hint=" (retraining learning rate = this × train.lr)")


class PackNetLayer(WeightAndBiasPackNetModule):
    """Avalanche's PackNet layer for ``nn.Linear`` and ``nn.Conv1d/2d/3d``, with the bias
    test fixed (defect 2) and the reference's pruning (defect 6): ``round(r · n_free)`` of
    the task's weights with the smallest magnitude are marked pruned and set to zero.

    When every weight is visible (a task training on all the weights trained so far plus
    the free ones) the weight is used unmasked: ``w · 1`` is ``w``, the same numbers
    without two passes over the weight per step."""

    def __init__(self, wrappee: nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
        super().__init__(wrappee)
        self.has_bias = getattr(wrappee, "bias", None) is not None
        self._all_visible: bool | None = None

    @torch.no_grad()
    def _prune(self, prune_proportion: float) -> None:
        ranked = self._rank_prunable()  # Avalanche's: the task's weights, smallest |w| first
        self._prune_weights(ranked[: round(len(ranked) * prune_proportion)])
        self.unfrozen_mask = self.task_index.eq(self._task_count)
        self.wrappee.weight.masked_fill_(self.pruned_mask, 0.0)
        self._all_visible = None

    def _activate_task(self, task_id: int) -> None:
        super()._activate_task(task_id)
        self._all_visible = None

    def _freeze_pruned(self) -> None:
        super()._freeze_pruned()
        self._all_visible = None

    def _load_from_state_dict(self, *args, **kwargs):
        self._all_visible = None
        super()._load_from_state_dict(*args, **kwargs)

    def available_weights(self) -> torch.Tensor:
        if self._all_visible is None:
            self._all_visible = bool(self.visible_mask.all())
        return self.wrappee.weight if self._all_visible else super().available_weights()

    @property
    def owner(self) -> torch.Tensor:
        """Per weight: the PackNet slot (task in training order) that owns it; the slot being
        trained for free weights, 255 for weights pruned and not yet handed on."""
        return self.task_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.available_weights()
        if isinstance(self.wrappee, nn.Linear):
            return F.linear(x, weight, self.wrappee.bias)
        return self.wrappee._conv_forward(x, weight, self.wrappee.bias)


class PackNetBatchNorm(PackNetModule):
    """A BatchNorm trained with the first task, then fixed (defect 3): after the first
    ``freeze_pruned`` its affine parameters stop training and it normalises with its running
    statistics in training mode too (the reference's ``train_nobn``)."""

    def __init__(self, wrappee: _BatchNorm):
        super().__init__()
        if not wrappee.track_running_stats:
            raise ConfigError(
                f"PackNet fixes BatchNorm after the first task with its running statistics, "
                f"but {wrappee} has track_running_stats=False; build it with running stats")
        self.wrappee = wrappee
        self.frozen = False

    def _prune(self, prune_proportion: float) -> None:
        pass  # the reference prunes conv and linear weights only

    def _activate_task(self, task_id: int) -> None:
        pass  # one BatchNorm for every task

    def _freeze_pruned(self) -> None:
        self.frozen = True
        for p in self.wrappee.parameters():
            p.requires_grad_(False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.frozen = self.task_count > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.wrappee
        if not (self.frozen and self.training):
            return norm(x)
        norm._check_input_dim(x)
        return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                            False, 0.0, norm.eps)


_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _packnet_layer(module: nn.Module) -> nn.Module:
    if isinstance(module, PackNetModule):
        return module
    if isinstance(module, _LAYERS):
        return PackNetLayer(module)
    if isinstance(module, _BatchNorm):
        return PackNetBatchNorm(module)
    return module


def _replace_layers(module: nn.Module) -> None:
    for name, child in module.named_children():
        new = _packnet_layer(child)
        if new is not child:
            setattr(module, name, new)
        else:
            _replace_layers(child)


def wrap_trunk(trunk: nn.Module) -> PackNetModel:
    """``trunk`` (modified in place) inside Avalanche's ``PackNetModel``: every Linear/ConvNd
    becomes a ``PackNetLayer`` and every BatchNorm a ``PackNetBatchNorm``; one ConfigError for
    another module with parameters of its own."""
    trunk = _packnet_layer(trunk)
    _replace_layers(trunk)
    try:
        return PackNetModel(trunk)
    except ValueError as err:
        raise ConfigError(
            f"PackNet cannot take this trunk: {err} (it prunes Linear and Conv weights and "
            "fixes BatchNorm after the first task); use model.family mlp, alexnet, resnet18 "
            "or resnet32") from None


class PackNetNet(MultiHeadNet):
    """A ``MultiHeadNet`` whose trunk is PackNet's (``wrap_trunk``) and whose heads are one
    per task, outside the pruned network. ``features(x, t)`` runs the trunk with the weights
    of PackNet slots ≤ slot(t) (the mask "owner ≤ slot"), every other weight zero."""

    def __init__(self, trunk: nn.Module, feature_dim: int, head_sizes=()):
        super().__init__(wrap_trunk(trunk), feature_dim, head_sizes)
        #: the task labels trained, in training order: label ``trained_labels[i]`` is slot i
        self.register_buffer("trained_labels", torch.zeros(0, dtype=torch.long,
                                                           device=self._device()))
        self._slots: dict[int, int] | None = None
        self._active: int | None = None

    def _device(self) -> torch.device:
        return next(self.trunk.parameters()).device

    @classmethod
    def from_multihead(cls, model: MultiHeadNet) -> PackNetNet:
        """PackNet over ``model``'s trunk (wrapped in place: do not use ``model`` afterwards)
        and heads (the same modules)."""
        if not isinstance(model, MultiHeadNet) or not model.shared_trunk:
            raise ConfigError(
                f"packnet needs a plain MultiHeadNet (a shared trunk and one head per task), "
                f"got {type(model).__name__}")
        net = cls(model.trunk, model.feature_dim)
        net.take_heads(model)
        return net

    # ------------------------------------------------------------------ slots
    @property
    def task_count(self) -> int:
        """Tasks trained and frozen so far."""
        return len(self.trained_labels)

    def slot(self, task: int) -> int:
        """The PackNet slot of task label ``task``; an untrained label gets the next slot
        (every weight trained so far plus the free ones)."""
        if self._slots is None:
            self._slots = {int(t): i for i, t in enumerate(self.trained_labels.tolist())}
        return self._slots.get(int(task), len(self._slots))

    def _activate(self, slot: int) -> None:
        if slot != self._active:  # (Avalanche's check reads three buffers: skip it)
            self.trunk.activate_task(slot)
            self._active = slot

    def packnet_layers(self) -> Iterator[PackNetLayer]:
        return (m for m in self.trunk.modules() if isinstance(m, PackNetLayer))

    def prune(self, ratio: float) -> None:
        """Prune ``ratio`` of the current task's weights per layer (PackNet's POST_PRUNE)."""
        self._activate(self.task_count)
        self.trunk.prune(ratio)

    def commit(self, task: int) -> None:
        """Freeze the current task's kept weights as task ``task``'s; hand on the pruned."""
        if self.task_count >= MAX_TASKS:
            raise BaselineError(f"PackNet's owner map holds at most {MAX_TASKS} tasks")
        self._activate(self.task_count)
        self.trunk.freeze_pruned()
        label = torch.tensor([int(task)], dtype=torch.long, device=self.trained_labels.device)
        self.trained_labels = torch.cat([self.trained_labels, label])
        self._slots = None
        self._active = None

    # ---------------------------------------------------------------- forward
    def features(self, x: torch.Tensor, task: int) -> torch.Tensor:
        self._activate(self.slot(task))
        return self.trunk.wrappee(x)

    # ------------------------------------------------------------ checkpoints
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "trained_labels"
        if key in state_dict and state_dict[key].shape != self.trained_labels.shape:
            self.trained_labels = torch.zeros_like(state_dict[key],
                                                   device=self.trained_labels.device)
        self._slots = None
        self._active = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def packnet_model(model: nn.Module) -> PackNetNet:
    if not isinstance(model, PackNetNet):
        raise BaselineError(
            f"the PackNet plugin needs a PackNetNet model, got {type(model).__name__}; "
            "build it with PackNetNet.from_multihead(model)")
    return model


class PackNetPlugin(FreezingPlugin):
    """PackNet's schedule around the training recipe (see the module docstring): freeze what
    is not the task's before it trains, write back frozen entries after every step, and
    prune, retrain and freeze after it."""

    #: the weights used depend on the task label; no task-inference rule
    task_agnostic = False

    def __init__(self, prune_ratio: float = 0.75, post_prune_epochs: int = 10,
                 post_prune_lr_scale: float = 0.1):
        super().__init__()
        self.config = PackNetConfig(prune_ratio, post_prune_epochs, post_prune_lr_scale)
        #: validation loss of the pruned model and after each retraining epoch (last task)
        self.post_prune_losses: list[float] = []
        self._lr: float | None = None
        #: (weight, frozen-entry mask, copy): what ``after_update`` writes back
        self._keep: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def before_training_exp(self, strategy, **kwargs):
        model = packnet_model(strategy.model)
        task = experience_task(strategy)
        if model.slot(task) < model.task_count:
            raise BaselineError(
                f"task {task} was already trained and its PackNet weights are frozen; PackNet "
                "trains each task label once")
        if str(task) not in model.heads:
            raise BaselineError(f"the model has no head for task {task}")
        trainable = [layer.wrappee.weight for layer in model.packnet_layers()]
        trainable += list(model.heads[str(task)].parameters())
        if model.task_count == 0:  # biases and BatchNorm train with the first task only
            trainable += list(model.trunk.parameters())
        self._frozen = freeze_all_but(model, trainable, strategy.optimizer)
        strategy.optimizer = same_optimizer(strategy.optimizer, model)  # fresh state
        self._lr = float(strategy.optimizer.param_groups[0]["lr"])
        self._protect(model)

    def _protect(self, model: PackNetNet) -> None:
        """Copy every weight entry the current task does not own (earlier tasks', pruned)."""
        current = model.task_count
        self._keep = []
        for layer in model.packnet_layers():
            keep = layer.owner.ne(current)
            if bool(keep.any()):
                weight = layer.wrappee.weight
                self._keep.append((weight, keep, weight.detach().clone()))

    @torch.no_grad()
    def after_update(self, strategy, **kwargs):
        for weight, keep, saved in self._keep:
            torch.where(keep, saved, weight, out=weight)

    def after_training_exp(self, strategy, **kwargs):
        model = packnet_model(strategy.model)
        task = experience_task(strategy)
        model.prune(self.config.prune_ratio)
        self._protect(model)  # the pruned entries stay zero while retraining
        self.post_prune_losses = []
        self._retrain(strategy, model)
        model.commit(task)
        self._keep = []
        super().after_training_exp(strategy, **kwargs)

    def _retrain(self, strategy, model: PackNetNet) -> None:
        """``post_prune_epochs`` epochs on the kept weights; the best of {pruned, each epoch}
        by the recipe's validation loss when it holds validation data, else the last."""
        if self.config.post_prune_epochs == 0:
            return
        recipe = next((p for p in strategy.plugins if getattr(p, "valid_data", None) is not None
                       and hasattr(p, "validation_loss")), None)
        best = None
        if recipe is not None:
            best_loss = recipe.validation_loss(strategy)
            self.post_prune_losses.append(best_loss)
            best = ModelSnapshot(model)
        optimizer = strategy.optimizer
        lr = (self._lr if self._lr is not None else optimizer.param_groups[0]["lr"])
        strategy.optimizer = same_optimizer(optimizer, model, lr * self.config.post_prune_lr_scale)
        was_training = model.training
        try:
            for _ in range(self.config.post_prune_epochs):
                set_training(model, True)
                strategy.training_epoch()
                if recipe is not None:
                    loss = recipe.validation_loss(strategy)
                    self.post_prune_losses.append(loss)
                    if loss < best_loss:
                        best_loss = loss
                        best.refresh()
            if best is not None:
                model.load_state_dict(best.state)
        finally:
            strategy.optimizer = optimizer
            set_training(model, was_training)


class PackNet(SupervisedTemplate):
    """PackNet as a strategy (keyword-only, like Avalanche's wrappers) on a ``PackNetNet``."""

    def __init__(self, *, prune_ratio: float = 0.75, post_prune_epochs: int = 10,
                 post_prune_lr_scale: float = 0.1, plugins=None, **kwargs):
        self.packnet_plugin = PackNetPlugin(prune_ratio, post_prune_epochs, post_prune_lr_scale)
        packnet_model(kwargs.get("model"))
        super().__init__(plugins=[*(plugins or []), self.packnet_plugin], **kwargs)
