"""SGD-F: plain fine-tuning on the first task, then only each new task's head trains.

The HAT paper's "SGD with frozen layers" baseline (docs/hat-reference.md §2). Own implementation:
Avalanche has no such strategy.

After the first experience the trunk is frozen with ``requires_grad = False``; during every
experience the heads of all other tasks are frozen the same way. A frozen parameter also loses
its ``.grad`` and its optimizer state (and any gradient another plugin gives it is dropped
before the optimizer step). PyTorch's SGD, Adam and AdamW skip a parameter whose ``.grad`` is
``None`` entirely: no momentum step, no weight decay. So the
protection holds with the optimizer state carried across experiences (stock Avalanche) and with
optimizers rebuilt over ``model.parameters()`` (the training recipe), and the trunk and old
heads stay bit-identical.

The freezing helpers (``experience_task``, ``freeze_all_but``, ``FreezingPlugin``) are in
``strategies.common.multihead``, shared with the other parameter-isolation baselines.
"""

from __future__ import annotations

from avalanche.training.templates import SupervisedTemplate

from ..common.multihead import (
    BaselineError,
    FreezingPlugin,
    experience_task,
    freeze_all_but,
    multihead_parts,
)


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
