"""Per-strategy gradient clipping, as in the HAT reference implementation.

Every approach of the reference (joansj/hat, ``src/approaches/*.py``) clips the global gradient
norm of the model's parameters (``torch.nn.utils.clip_grad_norm``) between ``loss.backward()``
and ``optimizer.step()``, with its own bound ``clipgrad`` (``StrategySpec.clipgrad``). In
Avalanche's ``SGDUpdate.training_epoch`` that place is ``before_update``: it runs after
``backward`` and every plugin's ``after_backward`` (e.g. HAT's gradient conditioning) and
right before ``optimizer_step``.

SI is not in the reference; it gets plain SGD's 10000. HAT clips inside its own plugin
(``HATConfig.clipgrad``, after conditioning and compensation, as the reference orders it).
"""

from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin

from .lean_loop import clip_grad_norm


class GradientClipPlugin(SupervisedPlugin):
    """Clip the global L2 norm of the model's gradients to ``max_norm`` before each step.

    ``clip_grad_norm_`` multiplies every gradient by ``min(1, max_norm / (norm + 1e-6))``:
    gradients below the bound are multiplied by exactly 1.0 (unchanged bit for bit), a pass
    that ``lean_loop.clip_grad_norm`` skips on CPU.
    """

    def __init__(self, max_norm: float):
        super().__init__()
        if not max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.max_norm = float(max_norm)
        #: the global gradient norm of the last step, before clipping (a tensor)
        self.last_norm: torch.Tensor | None = None
        self._params: list[torch.Tensor] | None = None

    def before_training_exp(self, strategy, **kwargs):
        # the model's parameters, listed once per experience (after Avalanche's adaptation)
        self._params = list(strategy.model.parameters())

    def after_training_exp(self, strategy, **kwargs):
        self._params = None

    def before_update(self, strategy, **kwargs):
        params = self._params if self._params is not None else strategy.model.parameters()
        self.last_norm = clip_grad_norm(params, self.max_norm)
