"""HAT as an Avalanche plugin (Serrà et al., ICML 2018): the paper's mechanism.

One training step (docs/hat-reference.md §1):
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

import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from ..common.config import config_of
from ..training.lean_loop import clip_grad_norm
from .config import Anneal, HATConfig
from .fast_paths import FastPaths, is_plain_sgd
from .layers import HATError, HATMixin
from .net import HATNet, find_hat_model


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


def folding_pays(layer: HATMixin, batch_size: int) -> bool:
    """Whether folding the gate into the parameters (``HATMixin.fold_gate``) touches fewer
    elements than gating the output: always before a per-task BatchNorm (its affine
    parameters, one per unit), else when a batch's output (a map per unit for a convolution)
    outnumbers the weight; layers never probed (sizes unknown) gate the output."""
    if layer.defer_gate:
        return True
    if layer.sample_sizes is None:
        return False
    return batch_size * layer.sample_sizes[1] > layer.weight.numel()


def flushing_denormals() -> bool:
    """Whether denormal floats are flushed to zero now (``torch.set_flush_denormal``)."""
    return bool((torch.tensor([1e-39], dtype=torch.float32) * 2.0 == 0).item())


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

    On every device, ``fold_gates`` moves each training gate onto its layer's parameters
    where that touches fewer elements than the output (``folding_pays``): the same function,
    different float rounding; evaluation gates the outputs.
    """

    #: exact shortcuts on (see the class docstring); False runs the reference operations
    fast_paths: bool = True
    #: fold each training gate into its layer's parameters where that is the fewer elements
    #: (``folding_pays``; the same function, float rounding differs); False multiplies every
    #: layer's output by its gate, as the reference implementation does
    fold_gates: bool = True

    def __init__(self, config: HATConfig | None = None, **overrides):
        super().__init__()
        self.config = config_of(HATConfig, config, overrides)
        self.task: int | None = None
        self.trained_tasks: list[int] = []
        self.last_s: float = self.config.smax
        self._reg: torch.Tensor | None = None
        self._reg_w: torch.Tensor | None = None
        self._n_samples = 0
        self._free: list[torch.Tensor] = []
        self._n_free = 0.0
        self._keep: list[tuple[nn.Parameter, torch.Tensor]] = []
        self._frozen: list[nn.Parameter] = []
        self._saved: list[torch.Tensor] = []
        self._layers: list[HATMixin] = []
        self._embs: list[nn.Parameter] = []
        self._params: list[nn.Parameter] = []
        self._net: HATNet | None = None
        #: this experience's CPU-exact shortcuts (``fast_paths``)
        self._shortcuts = FastPaths()
        self._unflush = False

    # ----------------------------------------------------------- lifecycle
    def _hat(self, strategy) -> HATNet:
        hat = find_hat_model(strategy.model)
        hat.smax = self.config.smax
        hat.binary_masks = not self.config.soft_masks
        return hat

    def before_training(self, strategy, **kwargs):
        n = sum(isinstance(p, HATPlugin) for p in strategy.plugins)
        if n > 1:
            raise HATError(
                f"the strategy has {n} HATPlugins; one trains and protects every task (two "
                "would add the regulariser and condition the gradients twice): keep one (the "
                "HAT strategy adds its own, so pass HATPlugin only to other strategies)"
            )
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
        self._check_labels(strategy.experience, hat, task)
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
        for layer in self._layers:
            layer.fold_gate = self.fold_gates and folding_pays(layer, strategy.train_mb_size)
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

    @staticmethod
    def _check_labels(experience, hat: HATNet, task: int) -> None:
        """Every class label of the experience indexes an output of its task's head."""
        classes = getattr(experience, "classes_in_this_experience", None)
        if classes is None:
            classes = set(experience.dataset.targets)
        n_out = getattr(hat.heads[str(task)], "out_features", None)
        bad = sorted(int(c) for c in classes if not 0 <= int(c) < (n_out or math.inf))
        if bad:
            exp_id = getattr(experience, "current_experience", "?")
            raise HATError(
                f"experience {exp_id} (task {task}) has class labels {bad} outside its head's "
                f"outputs 0..{n_out - 1}: renumber each task's labels from 0 (e.g. "
                "nc_benchmark(..., class_ids_from_zero_in_each_exp=True)) or give the task a "
                "head with as many outputs as its largest label + 1 "
                "(HATNet.wrap(..., head_sizes=...))"
            )

    def _plan_conditioning(
        self, hat: HATNet, fast: bool, batch_size: int
    ) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """Plan this experience's shortcuts (``FastPaths.plan``; none unless ``fast``) and
        return every (parameter, factor) pair of Eq. 2."""
        self._shortcuts = FastPaths.plan(self._layers, hat.conditioning_factors(),
                                         self._params, fast, batch_size)
        return self._shortcuts.pairs()

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
        self._shortcuts.start_step()

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
        # the shortcuts hold when this step's graph allows them; else the reference operations
        trusted = self._shortcuts.trusted(strategy.loss)
        pairs = self._shortcuts.gradient_factors(trusted)  # Eq. 2 / 4
        grads, factors = [g for g, _ in pairs], [f for _, f in pairs]
        embs = [e for e in self._embs if e.grad is not None]
        if embs:  # Eq. 6
            grads += [e.grad for e in embs]
            factors += compensation_factors(embs, self.last_s, cfg.smax, cfg.thres_cosh)
        if grads:  # both products in one call
            torch._foreach_mul_(grads, factors)
        if not (trusted and self._shortcuts.norm_below(cfg.clipgrad)):
            clip_grad_norm(self._params, cfg.clipgrad)

    @torch.no_grad()
    def before_update(self, strategy, **kwargs):
        if is_plain_sgd(strategy.optimizer):
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
        self._shortcuts.clear()
        for layer in self._layers:
            layer.fold_gate = False
        self._shortcuts = FastPaths()
        self._keep, self._frozen, self._embs, self._params = [], [], [], []

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
        (docs/hat-reference.md §4) for the task being trained, at s = smax, per gated layer (the
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
