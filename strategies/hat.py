"""HAT as an Avalanche plugin and strategy (Serrà et al., ICML 2018).

One training step (``../shared/docs/hat-reference.md`` §1):
forward at s (Eq. 3 annealing) → CE + c·R (Eq. 5) → backward → condition weight/bias
gradients with the cumulative mask (Eq. 2, 4) → compensate embedding gradients (Eq. 6, cosh
clamp) → clip the global gradient norm → optimizer step → restore protected entries → clamp
embeddings to ±thres_emb. After each experience the cumulative mask takes the max with the
task's mask (§2.3).

Exact protection under any optimizer: gradient conditioning alone only protects plain SGD.
Momentum buffers, Adam moments and (decoupled) weight decay move weights whose gradient is
zero, and Avalanche keeps optimizer state across experiences. So, besides conditioning the
gradient, the plugin clears the optimizer state of protected entries at the start of each
experience and restores protected entries (and every other task's embeddings and head) right
after each optimizer step. With binary masks (the default) earlier tasks' outputs stay
bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.templates import SupervisedTemplate
from torch import nn
from torch.nn import CrossEntropyLoss

from .config import ConfigError
from .hat_layers import EmbeddingInit, HATError, HATNet, find_hat_model

Anneal = Literal["reference", "paper"]


@dataclass(frozen=True)
class HATConfig:
    """HAT hyperparameters; defaults are the paper's (smax = 400, c = 0.75)."""

    smax: float = 400.0
    c: float = 0.75
    #: "reference": s from i/N (sample index of the batch start / samples);
    #: "paper": s from (b−1)/(B−1) (batch index / batches), Eq. 3.
    anneal: Anneal = "reference"
    #: False: binary masks (gate > 0.5) for evaluation and conditioning, exact protection.
    #: True: sigmoid(smax·e) masks as in the reference implementation.
    soft_masks: bool = False
    clipgrad: float = 10000.0
    thres_cosh: float = 50.0
    thres_emb: float = 6.0
    embedding_init: EmbeddingInit = "normal"
    #: on CPU, flush denormal floats to zero while training an experience
    #: (``torch.set_flush_denormal``; the previous mode is restored after it):
    #: gates σ(s·e) of unused units reach ~1e-40, and denormal activations and gradients
    #: make CPU matrix products 2–3× slower. No effect on GPU.
    flush_denormal: bool = True

    def __post_init__(self):
        if not (self.smax > 0 and math.isfinite(self.smax)):
            raise ConfigError(f"hat.smax must be > 0 (the paper uses 400), got {self.smax}")
        if not (self.c >= 0 and math.isfinite(self.c)):
            raise ConfigError(f"hat.c must be >= 0 (the paper uses 0.75), got {self.c}")
        for name in ("clipgrad", "thres_cosh", "thres_emb"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"hat.{name} must be > 0, got {getattr(self, name)}")
        if self.anneal not in ("reference", "paper"):
            raise ConfigError(f"hat.anneal must be 'reference' or 'paper', got {self.anneal!r}")
        if self.embedding_init not in ("normal", "uniform"):
            raise ConfigError(
                f"hat.embedding_init must be 'normal' or 'uniform', got {self.embedding_init!r}"
            )


# ------------------------------------------------------------------ formulas
def anneal_s(
    batch: int, n_batches: int, n_samples: int, batch_size: int, smax: float,
    mode: Anneal = "reference",
) -> float:
    """Eq. 3: s = 1/smax + (smax − 1/smax)·progress, ``batch`` 0-based within the epoch.

    progress = i/N with i = batch·batch_size the index of the batch's first sample
    ("reference"), or (b−1)/(B−1) with b = batch + 1 ("paper"; a single batch gives 0).
    """
    if mode == "paper":
        progress = batch / (n_batches - 1) if n_batches > 1 else 0.0
    else:
        progress = batch * batch_size / n_samples
    progress = min(max(progress, 0.0), 1.0)
    return 1.0 / smax + (smax - 1.0 / smax) * progress


def attention_regulariser(
    gates: list[torch.Tensor], cumulative: list[torch.Tensor]
) -> torch.Tensor:
    """Eq. 5, normalised jointly over layers: Σ a^t(1 − a^{<t}) / Σ (1 − a^{<t}).

    With a^{<t} = 0 (first task) this is the mean gate. Returns 0 when no unit is free.
    """
    free = [1 - m for m in cumulative]
    return _regulariser(gates, free, float(sum(f.sum() for f in free)))


def _regulariser(gates: list[torch.Tensor], free: list[torch.Tensor], n_free: float):
    """Eq. 5 with the free capacity 1 − a^{<t} and its total precomputed (per experience)."""
    if n_free == 0.0:
        return gates[0].sum() * 0.0
    num = torch.dot(gates[0], free[0])
    for g, f in zip(gates[1:], free[1:], strict=True):
        num = num + torch.dot(g, f)
    return num / n_free


def compensation_factor(
    e: torch.Tensor, s: float, smax: float, thres_cosh: float = 50.0
) -> torch.Tensor:
    """Eq. 6 factor for embedding gradients: smax/s · (cosh(clamp(s·e)) + 1) / (cosh(e) + 1)."""
    num = (s * e).clamp_(-thres_cosh, thres_cosh).cosh_().add_(1)
    return num.div_(torch.cosh(e).add_(1)).mul_(smax / s)


def clip_grad_norm(parameters, max_norm: float) -> None:
    """Scale gradients so that their global L2 norm is at most ``max_norm``.

    Same result as ``torch.nn.utils.clip_grad_norm_``; on CPU the scaling pass is skipped
    when the norm is already below ``max_norm`` (always, with the reference's 10000).
    """
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return
    if params[0].grad.device.type != "cpu":  # no host sync on accelerators
        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        return
    grads = [p.grad for p in params]
    norm = math.sqrt(sum(float(n) ** 2 for n in torch._foreach_norm(grads)))
    if norm > max_norm:
        torch._foreach_mul_(grads, max_norm / (norm + 1e-6))


def flushing_denormals() -> bool:
    """Whether denormal floats are flushed to zero now (``torch.set_flush_denormal``)."""
    return bool((torch.tensor([1e-39], dtype=torch.float32) * 2.0 == 0).item())


def _is_plain_sgd(optimizer: torch.optim.Optimizer) -> bool:
    """Plain SGD leaves an entry with zero gradient exactly unchanged."""
    return type(optimizer) is torch.optim.SGD and all(
        g.get("momentum", 0) == 0 and g.get("weight_decay", 0) == 0 for g in optimizer.param_groups
    )


# -------------------------------------------------------------------- plugin
class HATPlugin(SupervisedPlugin):
    """Hard Attention to the Task for any Avalanche ``SupervisedTemplate``.

    The strategy's model must be (or contain) a ``HATNet``; the stream must be
    task-incremental (one new task label per experience).
    """

    def __init__(self, config: HATConfig | None = None, **overrides):
        super().__init__()
        if config is not None and overrides:
            raise ConfigError("pass either a HATConfig or keyword overrides, not both")
        self.config = config if config is not None else HATConfig(**overrides)
        self.task: int | None = None
        self.trained_tasks: list[int] = []
        self.last_s: float = self.config.smax
        self._reg: torch.Tensor | None = None
        self._n_samples = 0
        self._free: list[torch.Tensor] = []
        self._n_free = 0.0
        self._pairs: list[tuple[nn.Parameter, torch.Tensor]] = []
        self._keep: list[tuple[nn.Parameter, torch.Tensor]] = []
        self._frozen: list[nn.Parameter] = []
        self._saved: list[torch.Tensor] = []

    # ----------------------------------------------------------- lifecycle
    def _hat(self, strategy) -> HATNet:
        hat = find_hat_model(strategy.model)
        hat.smax = self.config.smax
        hat.binary_masks = not self.config.soft_masks
        return hat

    def before_training(self, strategy, **kwargs):
        hat = self._hat(strategy)
        hat.embedding_init = self.config.embedding_init

    def before_eval(self, strategy, **kwargs):
        # evaluate with this strategy's smax and mask mode even before it trains (a model
        # loaded from a checkpoint has HATNet's defaults)
        self._hat(strategy)

    def _experience_task(self, strategy) -> int:
        """The experience's single, new task label, or a clear error."""
        labels = getattr(strategy.experience, "task_labels", None)
        exp_id = getattr(strategy.experience, "current_experience", "?")
        if labels is None or len(labels) != 1:
            raise HATError(
                f"HAT needs a task-incremental stream with one task label per experience; "
                f"experience {exp_id} has task labels {labels}: build the benchmark with task "
                "labels (e.g. nc_benchmark(..., task_labels=True))"
            )
        task = int(labels[0])
        if task in self.trained_tasks:
            raise HATError(
                f"experience {exp_id} has task label {task}, which HAT already trained; HAT "
                "needs a new task label per experience (a task-incremental stream)"
            )
        return task

    def before_train_dataset_adaptation(self, strategy, **kwargs):
        # check the stream here, before Avalanche's model adaptation, which fails with an
        # AttributeError on experiences without task labels
        self._experience_task(strategy)

    def before_training_exp(self, strategy, **kwargs):
        hat = self._hat(strategy)
        task = self._experience_task(strategy)
        self.task = task
        hat.check_task(task)  # added by the model adaptation, before the optimizer update
        # precompute once per experience: gradient factors, update masks, frozen tensors
        pairs = [(p, f) for p, f in hat.conditioning_factors() if not bool((f == 1).all())]
        self._pairs = pairs
        self._keep = [(p, f != 0) for p, f in pairs if bool((f == 0).any())]
        own = {id(p) for p in hat.task_parameters(task)}
        self._frozen = [
            p for t in hat.tasks if t != task for p in hat.task_parameters(t) if id(p) not in own
        ]
        self._free = [1 - m for m in hat.cumulative_masks()]
        self._n_free = float(sum(f.sum() for f in self._free))
        self._clear_optimizer_state(strategy.optimizer)
        self._unflush = False
        if self.config.flush_denormal and torch.device(strategy.device).type == "cpu":
            self._unflush = not flushing_denormals()
            torch.set_flush_denormal(True)

    def _clear_optimizer_state(self, optimizer) -> None:
        """Zero the optimizer state (momentum, moments) of protected entries."""
        for p, keep in self._keep:
            for v in optimizer.state.get(p, {}).values():
                if torch.is_tensor(v) and v.shape == p.shape:
                    v.mul_(keep)
        for p in self._frozen:
            for v in optimizer.state.get(p, {}).values():
                if torch.is_tensor(v) and v.shape == p.shape:
                    v.zero_()

    def before_training_epoch(self, strategy, **kwargs):
        self._n_samples = len(strategy.adapted_dataset)

    def before_forward(self, strategy, **kwargs):
        hat = find_hat_model(strategy.model)
        n = self._n_samples
        bs = strategy.train_mb_size
        cfg = self.config
        s = anneal_s(
            strategy.clock.train_epoch_iterations, math.ceil(n / bs), n, bs, cfg.smax, cfg.anneal
        )
        hat.s = s
        self.last_s = s

    def before_backward(self, strategy, **kwargs):
        hat = find_hat_model(strategy.model)
        reg = _regulariser(hat.last_gates, self._free, self._n_free)
        self._reg = reg.detach()  # kept on the device: no host sync per step
        strategy.loss = strategy.loss + self.config.c * reg

    @property
    def last_reg(self) -> float:
        """The regulariser R of the last training step (without the factor c)."""
        return float(self._reg) if self._reg is not None else 0.0

    @torch.no_grad()
    def after_backward(self, strategy, **kwargs):
        hat = find_hat_model(strategy.model)
        cfg = self.config
        pairs = [(p.grad, f) for p, f in self._pairs if p.grad is not None]
        if pairs:  # Eq. 2 / 4
            torch._foreach_mul_([g for g, _ in pairs], [f for _, f in pairs])
        for layer in hat.gated_layers:  # Eq. 6
            e = layer.embedding(self.task)
            if e.grad is not None:
                e.grad.mul_(compensation_factor(e, hat.s, cfg.smax, cfg.thres_cosh))
        clip_grad_norm(strategy.model.parameters(), cfg.clipgrad)

    @torch.no_grad()
    def before_update(self, strategy, **kwargs):
        if _is_plain_sgd(strategy.optimizer):
            self._saved = []
            return
        self._saved = [p.detach().clone() for p, _ in self._keep] + [
            p.detach().clone() for p in self._frozen
        ]

    @torch.no_grad()
    def after_update(self, strategy, **kwargs):
        if self._saved:
            n = len(self._keep)
            for (p, keep), saved in zip(self._keep, self._saved[:n], strict=True):
                p.copy_(torch.where(keep, p, saved))
            for p, saved in zip(self._frozen, self._saved[n:], strict=True):
                p.copy_(saved)
            self._saved = []
        hat = find_hat_model(strategy.model)
        t = self.config.thres_emb
        for layer in hat.gated_layers:
            layer.embedding(self.task).clamp_(-t, t)

    def after_training_exp(self, strategy, **kwargs):
        # restore the caller's floating-point mode: a library must not leave it changed
        # (later code that needs subnormal floats, e.g. hypothesis, would break)
        if getattr(self, "_unflush", False):
            torch.set_flush_denormal(False)
            self._unflush = False
        hat = find_hat_model(strategy.model)
        hat.update_cumulative(self.task)
        hat.s = self.config.smax
        self.trained_tasks.append(self.task)
        self._pairs, self._keep, self._frozen = [], [], []

    # ---------------------------------------------------- recipe protocol
    @torch.no_grad()
    def validation_penalty(self, strategy) -> float:
        """c·R at s = smax with evaluation masks (the reference adds it to validation loss)."""
        hat = find_hat_model(strategy.model)
        if self.task is None:
            return 0.0
        reg = attention_regulariser(hat.masks(self.task), hat.cumulative_masks())
        return self.config.c * float(reg)

    def epoch_metrics(self) -> dict[str, float]:
        """Values the runner logs per epoch."""
        return {"hat_s": self.last_s, "hat_reg": self.last_reg}

    # ------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {"trained_tasks": list(self.trained_tasks)}

    def load_state_dict(self, state: dict) -> None:
        self.trained_tasks = [int(t) for t in state["trained_tasks"]]


# ------------------------------------------------------------------ strategy
class HAT(SupervisedTemplate):
    """Hard Attention to the Task: a ``SupervisedTemplate`` with ``HATPlugin``.

    ``model`` must be a ``HATNet`` (see ``HATNet.wrap``).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion=None,
        smax: float = 400.0,
        c: float = 0.75,
        anneal: Anneal = "reference",
        soft_masks: bool = False,
        clipgrad: float = 10000.0,
        thres_cosh: float = 50.0,
        thres_emb: float = 6.0,
        embedding_init: EmbeddingInit = "normal",
        flush_denormal: bool = True,
        train_mb_size: int = 64,
        train_epochs: int = 1,
        eval_mb_size: int | None = None,
        device: str | torch.device = "cpu",
        plugins: list | None = None,
        **base_kwargs,
    ):
        find_hat_model(model)
        self.hat_plugin = HATPlugin(
            HATConfig(
                smax=smax, c=c, anneal=anneal, soft_masks=soft_masks, clipgrad=clipgrad,
                thres_cosh=thres_cosh, thres_emb=thres_emb, embedding_init=embedding_init,
                flush_denormal=flush_denormal,
            )
        )
        plugins = [*(plugins or []), self.hat_plugin]
        super().__init__(
            model=model,
            optimizer=optimizer,
            criterion=criterion if criterion is not None else CrossEntropyLoss(),
            train_mb_size=train_mb_size,
            train_epochs=train_epochs,
            eval_mb_size=eval_mb_size or train_mb_size,
            device=device,
            plugins=plugins,
            **base_kwargs,
        )
