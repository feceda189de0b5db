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

from .config import ConfigError, check_range
from .hat_layers import EmbeddingInit, HATError, HATLinear, HATNet, _HATMixin, find_hat_model
from .loop import SGD, clip_grad_norm

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
            check_range(f"hat.{name}", getattr(self, name), 0, low_open=True)
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
    return compensation_factors([e], s, smax, thres_cosh)[0]


@torch.no_grad()
def compensation_factors(
    embeddings: list[torch.Tensor], s: float, smax: float, thres_cosh: float = 50.0
) -> list[torch.Tensor]:
    """``compensation_factor`` of several embeddings, one multi-tensor operation per step
    of the formula (one kernel each on accelerators; the same numbers as one at a time)."""
    num = torch._foreach_mul(embeddings, s)
    torch._foreach_clamp_min_(num, -thres_cosh)
    torch._foreach_clamp_max_(num, thres_cosh)
    torch._foreach_cosh_(num)
    torch._foreach_add_(num, 1)
    den = torch._foreach_cosh(embeddings)
    torch._foreach_add_(den, 1)
    torch._foreach_div_(num, den)
    torch._foreach_mul_(num, smax / s)
    return num


def weights_used_once(loss: torch.Tensor, weights: list[torch.Tensor]) -> bool:
    """Whether each of ``weights`` reaches ``loss`` through exactly one graph edge.

    Then a gated layer's weight gradient is (∂L/∂z)ᵀx from its own forward alone, which
    HATPlugin's shortcuts rely on.
    """
    if loss.grad_fn is None:
        return False
    want = {id(w): 0 for w in weights}
    seen, stack = {loss.grad_fn}, [loss.grad_fn]
    while stack:
        for child, _ in stack.pop().next_functions:
            if child is None:
                continue
            var = getattr(child, "variable", None)
            if var is not None and id(var) in want:
                want[id(var)] += 1
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return all(n == 1 for n in want.values())


def flushing_denormals() -> bool:
    """Whether denormal floats are flushed to zero now (``torch.set_flush_denormal``)."""
    return bool((torch.tensor([1e-39], dtype=torch.float32) * 2.0 == 0).item())


def _row_factor(layer: _HATMixin) -> torch.Tensor | None:
    """The first gated layer's factor, 1 − a_out_i for its weights' rows and its bias (Eq. 2,
    no input gate), when it is binary (then multiplying ∂L/∂z instead of ∂L/∂W gives the
    same numbers); else None."""
    row = 1 - layer.cumulative
    return row if bool(((row == 0) | (row == 1)).all()) else None


#: a shortcut through ∂L/∂z and x (conditioning rows, the clipping bound) runs on a layer only
#: when the elements it reads, times this, are at most the elements of the weight gradient it
#: spares: on small layers the hook and its norms cost more than the pass they save
SHORTCUT_GAIN = 2.0


def _shortcut_pays(layer: _HATMixin, batch_size: int, reads_input: bool) -> bool:
    """Whether reading ∂L/∂z (and x when ``reads_input``) pays against one pass over the
    layer's weight gradient; layers never probed (sizes unknown) take the shortcut."""
    if layer.sample_sizes is None:
        return True
    n_in, n_out = layer.sample_sizes
    elements = n_out + (n_in if reads_input else 0)
    return SHORTCUT_GAIN * batch_size * elements <= layer.weight.numel()


#: protected fraction up to which zero-filling the protected entries of a gradient (by flat
#: index) beats multiplying it by its factor: measured crossover ≈ 0.25 on the reference CPU
FILL_MAX_FRACTION = 0.2


def _protected_entries(factor: torch.Tensor) -> torch.Tensor | None:
    """Flat indices of the zeros of a binary factor when they are few, else None.

    Zeroing them gives the numbers multiplying by the factor gives (a product with 1 is
    exact; a product with 0 is 0, only its sign may differ), in a pass over those entries only.
    """
    flat = factor.reshape(-1)
    zero = flat == 0
    # counts, not a float32 mean (2 zeros in 10 would read as 0.2000000030 > 0.2)
    binary = bool((zero | (flat == 1)).all())
    if not binary or int(zero.sum()) > FILL_MAX_FRACTION * len(flat):
        return None
    return zero.nonzero().squeeze(1)


def _is_plain_sgd(optimizer: torch.optim.Optimizer) -> bool:
    """Plain SGD leaves an entry with zero gradient exactly unchanged."""
    return type(optimizer) in (torch.optim.SGD, SGD) and all(
        g.get("momentum", 0) == 0 and g.get("weight_decay", 0) == 0 for g in optimizer.param_groups
    )


# -------------------------------------------------------------------- plugin
class HATPlugin(SupervisedPlugin):
    """Hard Attention to the Task for any Avalanche ``SupervisedTemplate``.

    The strategy's model must be (or contain) a ``HATNet``; the stream must be
    task-incremental (one new task label per experience).

    On CPU, exact shortcuts make a step cheaper without changing any number (``fast_paths``;
    tests compare both settings bit for bit): a linear first gated layer, whose conditioning
    is per row (1 − a_out_i), conditions the gradient of its pre-gate output instead of its
    weight gradient when the factor is binary and that gradient is the smaller; the
    global-norm clipping skips its pass over all gradients when ‖∂L/∂z‖·‖x‖ bounds prove the
    norm below ``clipgrad`` (the reference's 10000 is, in effect, never reached); a binary
    factor with few zeros is applied by zero-filling those entries. The first two hold only
    while each gated weight and bias gets its gradient from its own layer alone; a graph
    walk checks that every step, and the reference operations run otherwise. They run only
    on layers where they read fewer elements than they spare (``SHORTCUT_GAIN``): on the
    embedded digits MLP none does, and a step is the reference operations plus the fill.
    """

    #: exact shortcuts on (see the class docstring); False runs the reference operations
    fast_paths: bool = True

    def __init__(self, config: HATConfig | None = None, **overrides):
        super().__init__()
        if config is not None and overrides:
            raise ConfigError("pass either a HATConfig or keyword overrides, not both")
        self.config = config if config is not None else HATConfig(**overrides)
        self.task: int | None = None
        self.trained_tasks: list[int] = []
        self.last_s: float = self.config.smax
        self._reg: torch.Tensor | None = None
        self._reg_w: torch.Tensor | None = None
        self._n_samples = 0
        self._free: list[torch.Tensor] = []
        self._n_free = 0.0
        self._pairs: list[tuple[nn.Parameter, torch.Tensor]] = []
        self._fills: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
        self._keep: list[tuple[nn.Parameter, torch.Tensor]] = []
        self._frozen: list[nn.Parameter] = []
        self._saved: list[torch.Tensor] = []
        self._layers: list[_HATMixin] = []
        self._rows: list[tuple[_HATMixin, list[tuple[nn.Parameter, torch.Tensor]]]] = []
        self._embs: list[nn.Parameter] = []
        self._params: list[nn.Parameter] = []
        self._net: HATNet | None = None
        self._fast = False
        self._watched: list[nn.Parameter] = []
        self._unbounded: list[nn.Parameter] = []
        self._bounded: list[_HATMixin] = []
        self._hooked: list[_HATMixin] = []
        self._unflush = False

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
        self._layers = list(hat.gated_layers)
        self._params = list(strategy.model.parameters())
        on_cpu = torch.device(strategy.device).type == "cpu"
        self._net = hat
        # the clipping bound's margin covers float32/64 rounding, not half precision's
        wide = all(p.dtype in (torch.float32, torch.float64) for p in self._params)
        pairs = self._plan_conditioning(hat, self.fast_paths and on_cpu and wide,
                                        strategy.train_mb_size)
        self._keep = [(p, f != 0) for p, f in pairs if bool((f == 0).any())]
        self._embs = [layer.embedding(task) for layer in hat.gate_layers]
        own = {id(p) for p in hat.task_parameters(task)}
        self._frozen = [
            p for t in hat.tasks if t != task for p in hat.task_parameters(t) if id(p) not in own
        ]
        self._free = [1 - m for m in hat.cumulative_masks()]
        self._n_free = float(sum(f.sum() for f in self._free))
        # c·R = [a_1 … a_L]·w with w = (c/n_free)·[1 − a^{<t}_1 … 1 − a^{<t}_L]: two operations
        # per step for any number of layers instead of c·(Σ_l a_l·(1 − a^{<t}_l))/n_free; the
        # gates receive bit-identical gradients (c/n_free is formed by the same operations
        # autograd applies to that formula; only the loss value may differ in its last bit)
        c = self.config.c
        if c > 0 and self._n_free > 0:
            scale = torch.ones((), device=self._free[0].device).mul(c).div(self._n_free)
            self._reg_w = torch.cat([scale * f for f in self._free])
        else:
            self._reg_w = None
        self._clear_optimizer_state(strategy.optimizer)
        self._unflush = False
        if self.config.flush_denormal and on_cpu:
            self._unflush = not flushing_denormals()
            torch.set_flush_denormal(True)

    def _plan_conditioning(
        self, hat: HATNet, fast: bool, batch_size: int
    ) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """Split the (parameter, factor) pairs of Eq. 2 between the layers' ∂L/∂z hooks, a
        zero fill of the few protected entries and a multiply, and switch the clipping bound
        on; returns all pairs.

        The shortcuts run on CPU only: on accelerators the passes they save cost less than
        the extra kernel launches and host synchronisation they need.
        """
        factors = {id(p): f for p, f in hat.conditioning_factors()}
        self._pairs, self._rows, self._fills = [], [], []
        for layer in self._layers:
            own = [(p, factors[id(p)]) for p in (layer.weight, layer.bias) if p is not None]
            own = [(p, f) for p, f in own if not bool((f == 1).all())]
            # the hook needs an input without gradient (an ungated input: the data)
            # and pays when ∂L/∂z is well smaller than ∂L/∂W (a linear layer; not a conv's maps)
            hook = (own and fast and layer.__dict__["_input_owner"] is None
                    and isinstance(layer, HATLinear)
                    and _shortcut_pays(layer, batch_size, reads_input=False))
            row = _row_factor(layer) if hook else None
            layer.row_grad_factor = row
            bound = fast and _shortcut_pays(layer, batch_size, reads_input=True)
            layer.grad_bounds = [] if bound else None
            if row is not None:
                self._rows.append((layer, own))
                continue
            for p, f in own:
                idx = _protected_entries(f) if fast else None
                if idx is None:
                    self._pairs.append((p, f))
                else:
                    self._fills.append((p, f, idx))
        # the shortcuts assume their layers' weights and biases get gradients from those
        # layers only; the clipping bound covers the bounded weights, the other gradients
        # are measured
        self._bounded = [layer for layer in self._layers if layer.grad_bounds is not None]
        self._hooked = [layer for layer in self._layers
                        if layer.grad_bounds is not None or layer.row_grad_factor is not None]
        self._fast = fast and bool(self._hooked)
        self._watched = [
            p for layer in self._hooked for p in (layer.weight, layer.bias) if p is not None
        ]
        weights = {id(layer.weight) for layer in self._bounded}
        self._unbounded = [p for p in self._params if id(p) not in weights]
        return (self._pairs + [(p, f) for p, f, _ in self._fills]
                + [pf for _, own in self._rows for pf in own])

    def _reset_layers(self) -> None:
        for layer in self._layers:
            layer.row_grad_factor = None
            layer.grad_bounds = None
            layer.rows_missed = layer.grads_fresh = False

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
        hat = self._net
        n = self._n_samples
        bs = strategy.train_mb_size
        cfg = self.config
        s = anneal_s(
            strategy.clock.train_epoch_iterations, math.ceil(n / bs), n, bs, cfg.smax, cfg.anneal
        )
        hat.s = s
        self.last_s = s
        for layer in self._layers:
            layer.rows_missed = layer.grads_fresh = False
            if layer.grad_bounds is not None:
                layer.grad_bounds.clear()

    def before_backward(self, strategy, **kwargs):
        gates = self._net.last_gates
        if self._reg_w is not None:  # c·R (see before_training_exp)
            reg_c = torch.dot(torch.cat(gates), self._reg_w)
            self._reg = reg_c.detach()  # kept on the device: no host sync per step
            strategy.loss = strategy.loss + reg_c
        else:  # c = 0 or no free unit
            reg = _regulariser(gates, self._free, self._n_free)
            self._reg = reg.detach()
            strategy.loss = strategy.loss + self.config.c * reg

    @property
    def last_reg(self) -> float:
        """The regulariser R of the last training step (without the factor c)."""
        if self._reg is None:
            return 0.0
        # with the precomputed weights the step's value is c·R
        return float(self._reg) / (self.config.c if self._reg_w is not None else 1.0)

    @torch.no_grad()
    def after_backward(self, strategy, **kwargs):
        cfg = self.config
        # the shortcuts hold when every gated weight and bias reached the loss once, through
        # its layer, in this step alone (no other loss term, no accumulated gradient); a
        # graph walk checks it every step (10–70 µs on the MLP). Else: the reference operations.
        trusted = (
            self._fast
            and all(layer.grads_fresh for layer in self._hooked)
            and weights_used_once(strategy.loss, self._watched)
        )
        pairs = self._pairs + [
            pf for layer, own in self._rows if layer.rows_missed or not trusted for pf in own
        ]
        for p, f, idx in self._fills:  # binary factor, few zeros: fill them (same numbers)
            if p.grad is not None:
                if p.grad.is_contiguous():
                    p.grad.view(-1).index_fill_(0, idx, 0.0)
                else:
                    pairs.append((p, f))
        pairs = [(p.grad, f) for p, f in pairs if p.grad is not None]
        if pairs:  # Eq. 2 / 4
            torch._foreach_mul_([g for g, _ in pairs], [f for _, f in pairs])
        embs = [e for e in self._embs if e.grad is not None]
        if embs:  # Eq. 6
            factors = compensation_factors(embs, self.last_s, cfg.smax, cfg.thres_cosh)
            torch._foreach_mul_([e.grad for e in embs], factors)
        if not (trusted and self._bounded and self._norm_below(cfg.clipgrad)):
            clip_grad_norm(self._params, cfg.clipgrad)

    def _norm_below(self, max_norm: float) -> bool:
        """True when bounds prove the global gradient norm ≤ ``max_norm`` (clipping: no-op).

        Gated weights: ‖∂L/∂W‖ ≤ ‖∂L/∂z‖·‖x‖·√(kernel area), logged by the layers' hooks;
        every other gradient (biases, embeddings, head) exactly. Conditioning only lowers
        the norm. A margin keeps float rounding on the safe side. False: clip exactly.
        """
        sq = 0.0
        for layer in self._bounded:
            if len(layer.grad_bounds) != 1:
                return False
            sq += layer.grad_bounds[0] ** 2
        small = [p.grad for p in self._unbounded if p.grad is not None]
        if small:  # one read of the host: squares summed in double precision
            sq += float(torch.stack(torch._foreach_norm(small)).double().square().sum())
        return math.sqrt(sq) <= max_norm * (1 - 1e-4)

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
        t = self.config.thres_emb
        torch._foreach_clamp_min_(self._embs, -t)
        torch._foreach_clamp_max_(self._embs, t)

    def after_training_exp(self, strategy, **kwargs):
        # restore the caller's floating-point mode: a library must not leave it changed
        # (later code that needs subnormal floats, e.g. hypothesis, would break)
        if self._unflush:
            torch.set_flush_denormal(False)
            self._unflush = False
        hat = find_hat_model(strategy.model)
        hat.update_cumulative(self.task)
        hat.s = self.config.smax
        self.trained_tasks.append(self.task)
        self._reset_layers()
        self._pairs, self._keep, self._frozen, self._rows, self._fills = [], [], [], [], []
        self._embs, self._params, self._watched, self._unbounded = [], [], [], []
        self._bounded, self._hooked = [], []
        self._fast = False

    # ---------------------------------------------------- recipe protocol
    @torch.no_grad()
    def validation_penalty(self, strategy) -> float:
        """c·R at s = smax with evaluation masks (the reference adds it to validation loss)."""
        hat = find_hat_model(strategy.model)
        if self.task is None:
            return 0.0
        reg = attention_regulariser(hat.masks(self.task), hat.cumulative_masks())
        return self.config.c * float(reg)

    @torch.no_grad()
    def epoch_metrics(self) -> dict[str, float | list[float]]:
        """Values the runner logs per epoch: the last step's s and R, and HAT's monitoring
        (hat-reference §4) for the task being trained, at s = smax, per gated layer (the
        layers of one gate group repeat its values):
        ``hat_used``, the fraction of the layer's units the task's mask keeps (mask > 0.5),
        and ``hat_reuse``, the fraction of those that earlier tasks already use (their
        cumulative mask > 0.5; 0 for the first task)."""
        out: dict[str, float | list[float]] = {"hat_s": self.last_s, "hat_reg": self.last_reg}
        if self._net is None or self.task is None:
            return out
        used, reuse = [], []
        for layer, mask in zip(self._net.gate_layers, self._net.masks(self.task), strict=True):
            on = mask > 0.5
            n_on = int(on.sum())
            used.append(n_on / layer.units)
            reuse.append(int((on & (layer.cumulative > 0.5)).sum()) / n_on if n_on else 0.0)
        # per gated layer, as ``HATNet.mask_statistics`` (a gate group's layers share values)
        group_of = self._net.gate_graph.group_of
        return {**out, "hat_used": [used[g] for g in group_of],
                "hat_reuse": [reuse[g] for g in group_of]}

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
