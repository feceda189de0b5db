"""HAT-gated layers (Serrà et al., ICML 2018, §2.1–2.2).

Every hidden ``Linear``/``Conv2d`` unit gets one learnable embedding per task; the layer's
output is multiplied by the gate ``a = sigmoid(s·e)`` (Eq. 1), broadcast over space for
convolutions. The network that holds them (``net.HATNet``, which also upgrades an ordinary
trunk to these layers) and the analysis of which gate feeds each layer's input
(``graph.gate_groups``) build on this module.

Deviation, documented: the paper gates a block's output *after* activation, dropout and
pooling; here a layer gates its own output. The two are identical because ReLU, dropout,
max/average pooling and flatten commute with a non-negative per-unit scale. ``wrap`` checks
that only such modules sit between gated layers and refuses anything else (e.g. ``Tanh``).
A ``BatchNorm1d``/``BatchNorm2d`` right after a gated layer becomes per task
(``HATBatchNorm1d``/``2d``: one set of affine parameters and running statistics per task,
frozen with the task) and applies that layer's gate after normalising; BatchNorm anywhere
else is refused (its statistics would be shared across tasks). A training forward may fold
the gate into the parameters instead (``HATMixin.fold_gate``, set by ``HATPlugin`` where that
is the cheaper): the same function, only float rounding differs.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..common.multihead import TaskNotTrainedError

EmbeddingInit = Literal["normal", "uniform"]

#: Modules that commute with a non-negative per-unit gate (may sit between gated layers).
GATE_COMMUTING = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Dropout,
    nn.Dropout2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Identity,
)


class HATError(ValueError):
    """An illegal HAT model or state; the message says how to fix it."""


#: per-step state of HAT layers and networks: plain values (never parameters, buffers or
#: modules), set straight into the instance dict, without ``nn.Module.__setattr__``'s checks
STEP_STATE = frozenset({"current_gate", "rows_missed", "grads_fresh", "s", "last_gates",
                         "current_task"})


def set_step_state(self, name, value):
    if name in STEP_STATE:
        self.__dict__[name] = value
    else:
        nn.Module.__setattr__(self, name, value)


class HATMixin:
    """Per-task embeddings, the gate and the cumulative mask of one gated layer."""

    __setattr__ = set_step_state

    units: int
    embeddings: nn.ParameterDict
    cumulative: torch.Tensor
    current_gate: torch.Tensor | None

    def _init_hat(self, units: int) -> None:
        self.units = units
        self.embeddings = nn.ParameterDict()
        self.register_buffer("cumulative", torch.zeros(units))
        self.current_gate = None
        #: how many input columns share one gate of the feeding layer (H·W after a flatten)
        self.input_repeat = 1
        # Training fast paths, set by HATPlugin for one experience (None: off):
        #: binary per-unit factor for the gradient of the pre-gate output z, used when this
        #: layer's conditioning (Eq. 2) is per row and its input needs no gradient: then
        #: ∂L/∂W = ((∂L/∂z)·f)ᵀx is the conditioned weight gradient without a pass over W
        self.row_grad_factor: torch.Tensor | None = None
        #: set by a training forward that could not apply ``row_grad_factor``
        self.rows_missed = False
        #: set by the backward hook: whether weight and bias had no gradient yet when ∂L/∂z
        #: arrived (the shortcuts assume the gradient is this backward's alone)
        self.grads_fresh = False
        #: when a list, a training forward appends ‖∂L/∂z‖·‖x‖·√(kernel area), an upper bound
        #: of ‖∂L/∂W‖ from this forward (Cauchy–Schwarz), for HATPlugin's clipping shortcut
        #: (folded, z is the gated output and ∂L/∂W = a·∂L/∂(W·a) with a ≤ 1: still a bound)
        self.grad_bounds: list[float] | None = None
        #: set when a per-task BatchNorm follows: it applies this layer's gate after
        #: normalising (layer → BN_t → gate), and the layer returns its pre-gate output
        self.defer_gate = False
        #: elements of one sample's input and output (x, z), measured by ``HATNet``'s probe;
        #: HATPlugin takes a shortcut only where it reads fewer elements than it saves
        self.sample_sizes: tuple[int, int] | None = None
        #: set by HATPlugin for one experience: a training forward folds the gate into the
        #: parameters (``_layer_forward``; with a per-task BatchNorm after the layer, into that
        #: BatchNorm's affine parameters) instead of multiplying the output by it
        self.fold_gate = False

    @property
    def gate_owner(self) -> HATMixin:
        """The layer holding the embeddings of this layer's gate: itself, or the first layer
        of its gate group (layers whose outputs a residual sum adds share one gate)."""
        return self.__dict__.get("_gate_owner") or self

    def add_task(self, task: int, init: EmbeddingInit = "normal") -> None:
        key = str(int(task))
        if key in self.embeddings or self.gate_owner is not self:
            return
        e = torch.empty(self.units, device=self.cumulative.device)
        if init == "normal":
            nn.init.normal_(e, 0.0, 1.0)
        else:
            nn.init.uniform_(e, 0.0, 2.0)
        self.embeddings[key] = nn.Parameter(e)

    def embedding(self, task: int) -> nn.Parameter:
        if self.gate_owner is not self:
            return self.gate_owner.embedding(task)
        key = str(int(task))
        if key not in self.embeddings:
            raise TaskNotTrainedError(task, [int(k) for k in self.embeddings])
        return self.embeddings[key]

    def gate(self, task: int, s: float) -> torch.Tensor:
        """Training gate a = sigmoid(s·e) (Eq. 1)."""
        return torch.sigmoid(s * self.embedding(task))

    def mask(self, task: int, smax: float, binary: bool) -> torch.Tensor:
        """Evaluation mask at s = smax: binary (gate > 0.5, i.e. e > 0) or sigmoid(smax·e)."""
        e = self.embedding(task).detach()
        return (e > 0).to(e.dtype) if binary else torch.sigmoid(smax * e)

    def stacked_masks(self, tasks: list[int], smax: float, binary: bool) -> torch.Tensor:
        """``mask`` of each of ``tasks`` stacked on a leading axis (T × units), element for
        element the same values."""
        if not binary:  # each task's own sigmoid: the same rounding as ``mask``
            return torch.stack([self.mask(t, smax, binary) for t in tasks])
        e = torch.stack([self.embedding(t).detach() for t in tasks])
        return (e > 0).to(e.dtype)

    #: how many output positions one input element feeds at most (kernel area for a conv)
    input_reuse = 1

    def _track(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Training fast paths on the pre-gate output z (see ``row_grad_factor``)."""
        f, bounds = self.row_grad_factor, self.grad_bounds
        if (f is None and bounds is None) or not (self.training and z.requires_grad):
            return z
        rows = f is not None and not x.requires_grad and z.numel() <= self.weight.numel()
        if f is not None and not rows:
            self.rows_missed = True
        if bounds is not None:
            x_norm = float(torch.linalg.vector_norm(x.detach())) * self.input_reuse**0.5
        shape = (1, -1) + (1,) * (z.dim() - 2)

        def hook(g: torch.Tensor) -> torch.Tensor:
            self.grads_fresh = self.weight.grad is None and (
                self.bias is None or self.bias.grad is None)
            if rows:
                g = g * f.view(shape)
            if bounds is not None:
                bounds.append(float(torch.linalg.vector_norm(g)) * x_norm)
            return g

        z.register_hook(hook)
        return z

    def _gate_now(self) -> torch.Tensor:
        if self.current_gate is None:
            raise HATError(
                f"{type(self).__name__} was called without a task; call it through HATNet "
                "(model(x, task_labels)) so that the task's gate is known"
            )
        return self.current_gate

    def folds_now(self) -> bool:
        """Whether this forward folds the gate into parameters (``fold_gate``, a training
        forward with one task's gate)."""
        return (self.fold_gate and self.training and self.row_grad_factor is None
                and self.current_gate is not None and self.current_gate.dim() == 1)

    def _raw_forward(self, x: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
        """The wrapped layer's operation with the given parameters."""
        raise NotImplementedError

    def _layer_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output, gated unless a per-task BatchNorm after it applies the gate.

        Folded (``folds_now``): σ(s·e) scales each output unit's weights and bias, z·a =
        (W·a)x + b·a (Eq. 1 with the gate moved onto the parameters, the same function; only
        float rounding differs), so that the gate costs passes over the parameters instead of
        over the output maps, forward and backward: the cheaper for a convolution, whose
        output is a map per unit (HATPlugin folds where the output is the larger)."""
        if self.folds_now() and not self.defer_gate:
            a = self.current_gate
            w = self.weight * a.view((-1,) + (1,) * (self.weight.dim() - 1))
            b = None if self.bias is None else self.bias * a
            return self._track(x, self._raw_forward(x, w, b))
        z = self._track(x, self._raw_forward(x, self.weight, self.bias))
        return z if self.defer_gate else self._apply_gate(z)

    def _apply_gate(self, out: torch.Tensor) -> torch.Tensor:
        gate = self._gate_now()
        if gate.dim() == 2:
            return self._apply_task_gates(out, gate)
        if out.dim() == 2:
            return out * gate
        return out * gate.view((1, -1) + (1,) * (out.dim() - 2))

    @property
    def reads_network_input(self) -> bool:
        """Whether this layer reads the network input (no gate scales what it reads: its
        output is the same for every task)."""
        return self.__dict__.get("_input_owner") is None

    def _apply_task_gates(self, out: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """All tasks at once (``HATNet.all_task_logits``): ``gates`` is T × units, and row
        block k of the result is ``out``'s block k (or, for a layer reading the network
        input, all of ``out``: N rows) times task k's gate."""
        t = gates.shape[0]
        blocks = out.unsqueeze(0) if self.reads_network_input else out.view(t, -1, *out.shape[1:])
        gated = blocks * gates.view((t, 1, -1) + (1,) * (out.dim() - 2))
        return gated.view(-1, *out.shape[1:])

    def conditioning_factors(
        self, input_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gradient factors of Eq. 2: 1 − min(a_out_i, a_in_j) for weights, 1 − a_out_i for bias.

        ``input_mask`` is the cumulative mask of the gate feeding this layer (None for the
        first gated layer, whose input is ungated: factor 1 − a_out_i).
        """
        out = self.cumulative
        if input_mask is None:
            pair = out.view(-1, 1).expand(-1, self.in_width)
        else:
            inp = input_mask.repeat_interleave(self.input_repeat)
            pair = torch.minimum(out.view(-1, 1), inp.view(1, -1))
        w = (1 - pair).view(pair.shape + (1,) * (self.weight.dim() - 2)).expand_as(self.weight)
        b = None if self.bias is None else 1 - out
        return w.contiguous(), b


class HATLinear(HATMixin, nn.Linear):
    """``nn.Linear`` whose output units are gated by per-task attention."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kw):
        super().__init__(in_features, out_features, bias=bias, **kw)
        self._init_hat(out_features)

    @property
    def in_width(self) -> int:
        return self.in_features

    def _raw_forward(self, x: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)

    forward = HATMixin._layer_forward


class HATConv2d(HATMixin, nn.Conv2d):
    """``nn.Conv2d`` whose output channels are gated by per-task attention."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, **kw):
        super().__init__(in_channels, out_channels, kernel_size, **kw)
        if self.groups != 1:
            raise HATError("HATConv2d supports groups=1 only")
        self._init_hat(out_channels)
        # each input element is read by at most one output position per kernel offset
        # (zero padding adds nothing to ‖x‖; other padding modes copy elements: no bound)
        kh, kw = self.kernel_size
        self.input_reuse = kh * kw if self.padding_mode == "zeros" else float("inf")

    @property
    def in_width(self) -> int:
        return self.in_channels

    def _raw_forward(self, x: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
        return self._conv_forward(x, weight, bias)

    forward = HATMixin._layer_forward


HAT_LAYERS = (HATLinear, HATConv2d)

#: ``HATNet._probe`` runs per-task BatchNorms as the identity (shapes only)
PROBE = object()


class PerTaskBatchNorm(nn.Module):
    """Per-task BatchNorm after a gated layer: one ``BatchNorm`` (affine parameters and
    running statistics) per task, selected by the task like the embeddings, then the gated
    layer's gate (layer → BN_t → gate → activation).

    The gate comes after the normalisation so that a unit a task masks outputs exactly 0 for
    that task (a BN after the gate would turn the 0 into the constant β − γμ/σ, which later
    tasks could then propagate through weights the conditioning leaves free). Only task t's
    BatchNorm runs while t trains; HAT freezes it with the task's head and embeddings, so its
    statistics and affine parameters never change afterwards. Every task's BatchNorm starts
    from BatchNorm's defaults (γ = 1, β = 0, μ = 0, σ² = 1).
    """

    _bn_class: type[nn.modules.batchnorm._BatchNorm]
    __setattr__ = set_step_state

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True):
        super().__init__()
        if not track_running_stats:
            raise HATError(
                f"{type(self).__name__} needs running statistics (track_running_stats=True): "
                "with batch statistics at evaluation an earlier task's outputs would depend on "
                "the rest of the batch, and HAT could not keep them bit-identical"
            )
        self.num_features = num_features
        self.bn_kwargs = dict(eps=eps, momentum=momentum, affine=affine,
                              track_running_stats=track_running_stats)
        self.norms = nn.ModuleDict()
        self.current_task = None
        self.__dict__["gated"] = None  # the gated layer before it (a module of the trunk)
        #: tasks whose BatchNorm is frozen (trained): normalised with their running
        #: statistics even in training mode, which then never change
        self.frozen: set[int] = set()

    def freeze(self, task: int) -> None:
        """Freeze ``task``'s statistics (HATNet does it with the task's cumulative mask)."""
        self.frozen.add(int(task))

    def get_extra_state(self) -> torch.Tensor:
        # a tensor, so that state-dict snapshots (the recipe's best weights) copy it in place
        return torch.tensor(sorted(self.frozen), dtype=torch.int64)

    def set_extra_state(self, state) -> None:
        self.frozen = {int(t) for t in state}

    @classmethod
    def like(cls, bn: nn.modules.batchnorm._BatchNorm) -> PerTaskBatchNorm:
        """A per-task version of ``bn`` (its configuration; each task's state is fresh)."""
        return cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)

    def add_task(self, task: int, device=None, dtype=None) -> None:
        key = str(int(task))
        if key not in self.norms:
            self.norms[key] = self._bn_class(self.num_features, device=device, dtype=dtype,
                                             **self.bn_kwargs)

    def norm(self, task: int) -> nn.modules.batchnorm._BatchNorm:
        key = str(int(task))
        if key not in self.norms:
            raise TaskNotTrainedError(task, [int(k) for k in self.norms])
        return self.norms[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gated = self.__dict__["gated"]
        if self.current_task is PROBE:
            return x
        if self.current_task is None or gated is None:
            raise HATError(
                f"{type(self).__name__} was called without a task; call it through HATNet "
                "(model(x, task_labels)) so that the task's BatchNorm and gate are known"
            )
        if isinstance(self.current_task, tuple):
            return self._forward_tasks(x, self.current_task, gated)
        bn = self.norm(self.current_task)
        frozen = bn.training and self.current_task in self.frozen
        if gated.folds_now():
            return self._folded(x, bn, frozen, gated.current_gate)
        if frozen:
            # a trained task: its running statistics, never updated again
            y = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False,
                             0.0, bn.eps)
            return gated._apply_gate(y)
        return gated._apply_gate(bn(x))

    @staticmethod
    def _folded(x: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm, frozen: bool,
                gate: torch.Tensor) -> torch.Tensor:
        """BN_t(x)·a with the gate folded into the affine parameters: γ·a and β·a (γ = a,
        β = 0 without affine parameters); the statistics are BatchNorm's own."""
        weight = gate if bn.weight is None else bn.weight * gate
        bias = None if bn.bias is None else bn.bias * gate
        if frozen:
            return F.batch_norm(x, bn.running_mean, bn.running_var, weight, bias, False, 0.0,
                                bn.eps)
        # BatchNorm's own forward (statistics, momentum, input checks) with the folded
        # parameters: instance attributes shadow the registered parameters for this call
        try:
            bn.__dict__["weight"], bn.__dict__["bias"] = weight, bias
            return bn(x)
        finally:
            del bn.__dict__["weight"], bn.__dict__["bias"]

    def _forward_tasks(self, x: torch.Tensor, tasks: tuple[int, ...],
                       gated: HATMixin) -> torch.Tensor:
        """All tasks at once, in evaluation mode (``HATNet.all_task_logits``): row block k
        through task k's BatchNorm, then task k's gate (the gated layer's ``current_gate``,
        T × units); ``x`` holds N rows (a layer reading the network input) or T blocks."""
        t = len(tasks)
        blocks = [x] * t if gated.reads_network_input else x.view(t, -1, *x.shape[1:]).unbind(0)
        out = x.new_empty((t, blocks[0].shape[0], *x.shape[1:]))
        shape = (-1,) + (1,) * (x.dim() - 2)
        for k, (task, block) in enumerate(zip(tasks, blocks, strict=True)):
            bn = self.norm(task)
            if bn.training:
                raise HATError("all tasks at once runs in evaluation mode only")
            torch.mul(bn(block), gated.current_gate[k].view(shape), out=out[k])
        return out.view(-1, *x.shape[1:])


class HATBatchNorm1d(PerTaskBatchNorm):
    """Per-task ``BatchNorm1d`` applying the preceding ``HATLinear``'s gate."""

    _bn_class = nn.BatchNorm1d


class HATBatchNorm2d(PerTaskBatchNorm):
    """Per-task ``BatchNorm2d`` applying the preceding ``HATConv2d``'s gate."""

    _bn_class = nn.BatchNorm2d


PER_TASK_BN = {nn.BatchNorm1d: HATBatchNorm1d, nn.BatchNorm2d: HATBatchNorm2d}
