"""A lean training loop, plain SGD's step and gradient clipping without Python bookkeeping.

For small networks the per-step machinery, not the arithmetic, is the cost of an epoch:
Avalanche's ``trigger_plugins`` asks every plugin ``hasattr`` for every callback and calls its
inherited no-op, ``SupervisedProblem.forward`` looks up ``experience.task_labels`` through
the experience's proxy, ``Optimizer.step`` and ``clip_grad_norm_`` group tensors by device in
Python. Nothing here changes a number:

- ``lean_training_epoch`` runs ``SGDUpdate.training_epoch`` step for step, firing every
  callback a plugin overrides, in the same order with the same arguments; it only skips the
  base classes' empty callbacks (the plugin list and callbacks are read once per epoch).
  ``use_lean_loop`` gives a built strategy this loop (the registry's strategies have it).
- ``SGD`` is ``torch.optim.SGD``; without momentum, weight decay, ``maximize`` and step
  hooks its step is the same ``param.add_(grad, alpha=-lr)`` torch performs, in one call.
- ``clip_grad_norm`` computes the norm as ``torch.nn.utils.clip_grad_norm_`` does and skips
  the scaling pass when it would multiply by exactly 1.0.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import MethodType

import torch
import torch.optim.optimizer as _optim
from avalanche.core import BasePlugin, BaseSGDPlugin, SupervisedPlugin
from avalanche.models import avalanche_forward
from avalanche.training.templates.base_sgd import BaseSGDTemplate
from avalanche.training.templates.problem_type.supervised_problem import SupervisedProblem
from avalanche.training.templates.update_type.sgd_update import SGDUpdate

#: the callbacks of one training iteration, in the order ``SGDUpdate.training_epoch`` fires
ITERATION_EVENTS = (
    "before_training_iteration", "before_forward", "after_forward", "before_backward",
    "after_backward", "before_update", "after_update", "after_training_iteration",
)

_EMPTY = {
    cls.__dict__[event]
    for cls in (BasePlugin, BaseSGDPlugin, SupervisedPlugin)
    for event in ITERATION_EVENTS
    if event in cls.__dict__
}


def plugin_callbacks(plugins: Iterable, event: str) -> list:
    """The bound ``event`` methods of ``plugins`` that ``trigger_plugins`` would call, in
    order, less the base classes' empty ones."""
    calls = []
    for p in plugins:
        if not hasattr(p, event):
            continue
        own = event in getattr(p, "__dict__", {})
        if not own and getattr(type(p), event, None) in _EMPTY:
            continue
        calls.append(getattr(p, event))
    return calls


def _iteration_callbacks(strategy) -> list[list]:
    """Per iteration event: the callables to fire. A template method (``_before_forward`` …)
    that the strategy's class or the instance overrides is called itself, as Avalanche would."""
    out = []
    for event in ITERATION_EVENTS:
        name = "_" + event
        if name in vars(strategy) or getattr(type(strategy), name) is not getattr(
                BaseSGDTemplate, name):
            method = getattr(strategy, name)
            out.append([lambda _strategy, _m=method, **kw: _m(**kw)])
        else:
            out.append(plugin_callbacks(strategy.plugins, event))
    return out


def _forward(strategy):
    """``strategy.forward``; Avalanche's own with the experience's task labels looked up once."""
    if type(strategy).forward is not SupervisedProblem.forward or "forward" in vars(strategy):
        return strategy.forward
    if not hasattr(strategy.experience, "task_labels"):
        return lambda: strategy.model(strategy.mb_x)
    return lambda: avalanche_forward(strategy.model, strategy.mb_x, strategy.mb_task_id)


def lean_training_epoch(self, **kwargs):
    """``SGDUpdate.training_epoch``, step for step, without the empty callbacks."""
    b_it, b_fw, a_fw, b_bw, a_bw, b_up, a_up, a_it = _iteration_callbacks(self)
    forward = _forward(self)
    for self.mbatch in self.dataloader:  # noqa: B020 (Avalanche's own loop)
        if self._stop_training:
            break
        self._unpack_minibatch()
        for call in b_it:
            call(self, **kwargs)
        self.optimizer.zero_grad()
        self.loss = self._make_empty_loss()
        for call in b_fw:
            call(self, **kwargs)
        self.mb_output = forward()
        for call in a_fw:
            call(self, **kwargs)
        self.loss += self.criterion()
        for call in b_bw:
            call(self, **kwargs)
        self.backward()
        for call in a_bw:
            call(self, **kwargs)
        for call in b_up:
            call(self, **kwargs)
        self.optimizer_step()
        for call in a_up:
            call(self, **kwargs)
        for call in a_it:
            call(self, **kwargs)


def use_lean_loop(strategy):
    """Give ``strategy`` (an Avalanche SGD strategy) ``lean_training_epoch`` as its training
    epoch (bound on the instance); returns it. Strategies whose class defines its own
    ``training_epoch`` keep it."""
    if getattr(type(strategy), "training_epoch", None) is SGDUpdate.training_epoch:
        strategy.training_epoch = MethodType(lean_training_epoch, strategy)
    return strategy


def set_training(model: torch.nn.Module, mode: bool) -> None:
    """``model.train(mode)``, the same flags on every submodule, without
    ``Module.__setattr__`` per module (about 20x cheaper: the recipe switches modes twice per
    epoch). When a module overrides ``train`` its own runs: ``model.train(mode)``."""
    modules = list(model.modules())
    if any(type(m).train is not _MODULE_TRAIN for m in modules):
        model.train(mode)
        return
    for m in modules:
        m.__dict__["training"] = mode


_MODULE_TRAIN = torch.nn.Module.train
_WIDE = (torch.float32, torch.float64)


#: torch's SGD step without the hook wrapper torch adds to ``step`` (``SGD.step`` has it)
_TORCH_SGD_STEP = (torch.optim.SGD.step.__wrapped__ if getattr(torch.optim.SGD.step, "hooked",
                                                               False)
                   else torch.optim.SGD.step)


class SGD(torch.optim.SGD):
    """``torch.optim.SGD`` whose plain step (no momentum, weight decay, ``maximize``, closure
    or step hooks) skips the optimizer's Python bookkeeping; the same numbers. Otherwise
    torch's step runs, with its hooks and profiler label."""

    def _plain(self) -> bool:
        return all(
            g["momentum"] == 0 and g["weight_decay"] == 0 and not g["maximize"]
            and not torch.is_tensor(g["lr"]) for g in self.param_groups
        )

    def _hooked(self) -> bool:
        return bool(self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                    or _optim._global_optimizer_pre_hooks
                    or _optim._global_optimizer_post_hooks)

    def step(self, closure=None):
        if closure is not None or self._hooked() or not self._plain():
            return _TORCH_STEP_WITH_HOOKS(self, closure)
        with torch.no_grad():
            for group in self.param_groups:
                params = [p for p in group["params"] if p.grad is not None]
                grads = [p.grad for p in params]
                if any(g.is_sparse for g in grads):
                    return _TORCH_STEP_WITH_HOOKS(self, closure)
                if params:
                    torch._foreach_add_(params, grads, alpha=-group["lr"])
        return None

    step.hooked = True  # torch's Optimizer wraps ``step`` unless this is set

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not set_to_none:
            return super().zero_grad(set_to_none)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


#: torch's SGD step as ``torch.optim.SGD().step`` runs it: hooks, profiler label
_TORCH_STEP_WITH_HOOKS = torch.optim.Optimizer.profile_hook_step(_TORCH_SGD_STEP)


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor | None:
    """``torch.nn.utils.clip_grad_norm_(parameters, max_norm)``, the same numbers; returns
    the total norm (None without gradients).

    On CPU the norm is computed as torch computes it there (per-tensor norms, here in one
    ``_foreach_norm`` call, then the norm of their stack), read on the host, and the scaling
    pass is skipped when the factor ``min(1, max_norm / (norm + 1e-6))`` is 1.0 (a multiply
    by 1.0 changes nothing). On accelerators torch's own function runs (no host
    synchronisation per step).
    """
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return None
    if params[0].grad.device.type != "cpu":
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    grads = [p.grad for p in params]
    # one call for the per-tensor norms: on CPU ``_foreach_norm`` runs ``linalg_vector_norm``
    # on each tensor (the same numbers) without a Python round trip per tensor
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    # torch's factor max_norm / (norm + 1e-6) in float32/64, clearly above 1 by the host's
    # double arithmetic (the margin covers their rounding, not half precision's): torch would
    # multiply by exactly 1.0
    if total.dtype in _WIDE and float(total) + 1e-6 < max_norm * (1 - 1e-5):
        return total
    coef = max_norm / (total + 1e-6)
    if not float(coef) >= 1.0:  # NaN too: torch scales by NaN then
        coef = torch.clamp(coef, max=1.0)
        for g in grads:
            g.mul_(coef)
    return total
