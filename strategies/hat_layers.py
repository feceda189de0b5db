"""HAT-gated layers and the HAT network (Serrà et al., ICML 2018, §2.1–2.2).

Every hidden ``Linear``/``Conv2d`` unit gets one learnable embedding per task; the layer's
output is multiplied by the gate ``a = sigmoid(s·e)`` (Eq. 1), broadcast over space for
convolutions. ``HATNet.wrap`` upgrades an ordinary ``nn.Sequential`` trunk (as Avalanche's
PackNet does). Which gate feeds each gated layer's input follows from the chain of gated
layers (the previous one's units, repeated over H·W after a conv → flatten → linear); a
probe forward pass checks that the layers run once each, in that order, and measures the
feature size (no per-architecture code).

Deviation, documented: the paper gates a block's output *after* activation, dropout and
pooling; here a layer gates its own output. The two are identical because ReLU, dropout,
max/average pooling and flatten commute with a non-negative per-unit scale. ``wrap`` checks
that only such modules sit between gated layers and refuses anything else (e.g. ``Tanh``).
A ``BatchNorm1d``/``BatchNorm2d`` right after a gated layer becomes per task
(``HATBatchNorm1d``/``2d``: one set of affine parameters and running statistics per task,
frozen with the task) and applies that layer's gate after normalising; BatchNorm anywhere
else is refused (its statistics would be shared across tasks).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from .models import MultiHeadNet, TaskNotTrainedError

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
_STEP_STATE = frozenset({"current_gate", "rows_missed", "grads_fresh", "s", "last_gates",
                         "current_task"})


def _set_step_state(self, name, value):
    if name in _STEP_STATE:
        self.__dict__[name] = value
    else:
        nn.Module.__setattr__(self, name, value)


class _HATMixin:
    """Per-task embeddings, the gate and the cumulative mask of one gated layer."""

    __setattr__ = _set_step_state

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
        self.grad_bounds: list[float] | None = None
        #: set when a per-task BatchNorm follows: it applies this layer's gate after
        #: normalising (layer → BN_t → gate), and the layer returns its pre-gate output
        self.defer_gate = False
        #: elements of one sample's input and output (x, z), measured by ``HATNet``'s probe;
        #: HATPlugin takes a shortcut only where it reads fewer elements than it saves
        self.sample_sizes: tuple[int, int] | None = None

    def add_task(self, task: int, init: EmbeddingInit = "normal") -> None:
        key = str(int(task))
        if key in self.embeddings:
            return
        e = torch.empty(self.units, device=self.cumulative.device)
        if init == "normal":
            nn.init.normal_(e, 0.0, 1.0)
        else:
            nn.init.uniform_(e, 0.0, 2.0)
        self.embeddings[key] = nn.Parameter(e)

    def embedding(self, task: int) -> nn.Parameter:
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

    def _apply_gate(self, out: torch.Tensor) -> torch.Tensor:
        if self.current_gate is None:
            raise HATError(
                f"{type(self).__name__} was called without a task; call it through HATNet "
                "(model(x, task_labels)) so that the task's gate is known"
            )
        if out.dim() == 2:
            return out * self.current_gate
        return out * self.current_gate.view((1, -1) + (1,) * (out.dim() - 2))

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


class HATLinear(_HATMixin, nn.Linear):
    """``nn.Linear`` whose output units are gated by per-task attention."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kw):
        super().__init__(in_features, out_features, bias=bias, **kw)
        self._init_hat(out_features)

    @property
    def in_width(self) -> int:
        return self.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self._track(x, super().forward(x))
        return z if self.defer_gate else self._apply_gate(z)


class HATConv2d(_HATMixin, nn.Conv2d):
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self._track(x, super().forward(x))
        return z if self.defer_gate else self._apply_gate(z)


HAT_LAYERS = (HATLinear, HATConv2d)

#: ``HATNet._probe`` runs per-task BatchNorms as the identity (shapes only)
_PROBE = object()


class _HATBatchNorm(nn.Module):
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
    __setattr__ = _set_step_state

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True):
        super().__init__()
        self.num_features = num_features
        self.bn_kwargs = dict(eps=eps, momentum=momentum, affine=affine,
                              track_running_stats=track_running_stats)
        self.norms = nn.ModuleDict()
        self.current_task = None
        self.__dict__["gated"] = None  # the gated layer before it (a module of the trunk)

    @classmethod
    def like(cls, bn: nn.modules.batchnorm._BatchNorm) -> _HATBatchNorm:
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
        if self.current_task is _PROBE:
            return x
        if self.current_task is None or gated is None:
            raise HATError(
                f"{type(self).__name__} was called without a task; call it through HATNet "
                "(model(x, task_labels)) so that the task's BatchNorm and gate are known"
            )
        return gated._apply_gate(self.norm(self.current_task)(x))


class HATBatchNorm1d(_HATBatchNorm):
    """Per-task ``BatchNorm1d`` applying the preceding ``HATLinear``'s gate."""

    _bn_class = nn.BatchNorm1d


class HATBatchNorm2d(_HATBatchNorm):
    """Per-task ``BatchNorm2d`` applying the preceding ``HATConv2d``'s gate."""

    _bn_class = nn.BatchNorm2d


_PER_TASK_BN = {nn.BatchNorm1d: HATBatchNorm1d, nn.BatchNorm2d: HATBatchNorm2d}


def _upgrade(module: nn.Module) -> nn.Module:
    """Linear/Conv2d → HAT layer with the same weights."""
    if isinstance(module, nn.Linear):
        new = HATLinear(module.in_features, module.out_features, bias=module.bias is not None)
    else:
        new = HATConv2d(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
        )
    new = new.to(module.weight.device, module.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(module.weight)
        if module.bias is not None:
            new.bias.copy_(module.bias)
    return new


def _convert(seq: nn.Sequential) -> nn.Sequential:
    layers = []
    for name, child in seq.named_children():
        if isinstance(child, nn.Sequential):
            layers.append((name, _convert(child)))
        elif isinstance(child, HAT_LAYERS):
            layers.append((name, child))
        elif type(child) in (nn.Linear, nn.Conv2d):
            layers.append((name, _upgrade(child)))
        elif isinstance(child, _HATBatchNorm):
            layers.append((name, child))
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            prev = layers[-1][1] if layers else None
            per_task = _PER_TASK_BN.get(type(child))
            if per_task is None or not isinstance(prev, HAT_LAYERS):
                raise HATError(
                    f"trunk contains {type(child).__name__} ('{name}') that does not directly "
                    "follow a Linear/Conv2d layer: shared running statistics would break HAT's "
                    "protection, and HAT makes BatchNorm1d/2d per task only right after the "
                    "layer whose units it normalises; move it there or remove it"
                )
            layers.append((name, per_task.like(child)))  # tasks' norms: on the layer's device
        elif isinstance(child, GATE_COMMUTING):
            layers.append((name, child))
        else:
            raise HATError(
                f"trunk module '{name}' ({type(child).__name__}) does not commute with HAT's "
                "per-unit gate; use ReLU/LeakyReLU, dropout, pooling or flatten between "
                "Linear/Conv2d layers"
            )
    return nn.Sequential(OrderedDict(layers))


class HATNet(MultiHeadNet):
    """A HAT network: gated trunk + one head per task (an Avalanche ``MultiTaskModule``).

    In training mode the gates use ``self.s`` (set per mini-batch by ``HATPlugin``); in eval
    mode they use s = smax and, by default, binary masks (``binary_masks``), so that earlier
    tasks' outputs are bit-identical after later training.
    """

    __setattr__ = _set_step_state

    def __init__(
        self,
        trunk: nn.Module,
        input_shape: Sequence[int],
        head_sizes: Sequence[int] = (),
        *,
        smax: float = 400.0,
        binary_masks: bool = True,
        embedding_init: EmbeddingInit = "normal",
    ):
        gated = [m for m in trunk.modules() if isinstance(m, HAT_LAYERS)]
        if not gated:
            raise HATError(
                "the model has no HAT layers: build it with HATLinear/HATConv2d or use "
                "HATNet.wrap(nn.Sequential(...), input_shape)"
            )
        norms = [m for m in trunk.modules() if isinstance(m, _HATBatchNorm)]
        per_task = {id(m) for n in norms for m in n.modules()}  # their parameters are a task's
        unprotected = [
            name or type(trunk).__name__
            for name, m in trunk.named_modules()
            if not isinstance(m, HAT_LAYERS) and id(m) not in per_task
            and any(True for _ in m.parameters(recurse=False))
        ]
        if unprotected:
            raise HATError(
                f"trunk modules {unprotected} have parameters that HAT neither gates nor "
                "protects (earlier tasks' outputs would change); use HATLinear/HATConv2d for "
                "every trainable trunk layer, or HATNet.wrap(nn.Sequential(...), input_shape)"
            )
        input_shape = tuple(int(d) for d in input_shape)
        feature_dim = self._probe(trunk, gated, input_shape, norms)
        super().__init__(trunk, feature_dim)
        #: per-task BatchNorms, each applying the gate of the gated layer it follows
        self.task_norms: list[_HATBatchNorm] = norms  # plain list: modules are in self.trunk
        self.input_shape = input_shape
        self.gated_layers: list[_HATMixin] = gated  # plain list: modules are in self.trunk
        self.smax = float(smax)
        self.binary_masks = bool(binary_masks)
        self.embedding_init: EmbeddingInit = embedding_init
        self.s = self.smax
        #: cumulative-mask input of gated layer i is the output of gated layer i-1
        for prev, layer in zip([None] + gated[:-1], gated, strict=True):
            layer.input_repeat = 1 if prev is None else layer.in_width // prev.units
        self._check_chain(gated)
        self.last_gates: list[torch.Tensor] = []
        for task, n_classes in enumerate(head_sizes):
            self.add_task(task, n_classes)

    @classmethod
    def wrap(
        cls, trunk: nn.Sequential, input_shape: Sequence[int], head_sizes: Sequence[int] = (),
        **kwargs,
    ) -> HATNet:
        """Upgrade the Linear/Conv2d layers of a Sequential trunk to HAT layers."""
        if not isinstance(trunk, nn.Sequential):
            raise HATError(
                f"HATNet.wrap needs an nn.Sequential trunk, got {type(trunk).__name__}; "
                "build the trunk with HATLinear/HATConv2d and pass it to HATNet(...) instead"
            )
        return cls(_convert(trunk), input_shape, head_sizes, **kwargs)

    @staticmethod
    def _probe(trunk, gated, input_shape, norms=()):
        """Forward a dummy batch through the trunk: the feature size the heads receive; the
        gated layers must run once each, in their registration order (the chain HAT's
        conditioning assumes); each per-task BatchNorm must run right after a gated layer of
        its width, whose gate it then applies (found from the run, not from names)."""
        order: list[nn.Module] = []  # the leaf modules as they ran

        def seen(mod, inputs, out):
            order.append(mod)
            mod.sample_sizes = (inputs[0].numel(), out.numel())  # a batch of one

        hooks = [m.register_forward_hook(seen) for m in gated]
        # every other leaf module and the norms: what runs between a layer and its norm
        others = [m for m in trunk.modules() if not isinstance(m, HAT_LAYERS)
                  and (isinstance(m, _HATBatchNorm) or not any(True for _ in m.children()))]
        hooks += [m.register_forward_hook(lambda mod, i, o: order.append(mod)) for m in others]
        for n in norms:
            n.current_task = _PROBE
        for m in gated:
            m.current_gate = torch.ones(m.units, device=m.weight.device, dtype=m.weight.dtype)
        was_training = trunk.training
        trunk.eval()
        try:
            with torch.no_grad():
                w = gated[0].weight
                out = trunk(torch.zeros((1, *input_shape), device=w.device, dtype=w.dtype))
        except RuntimeError as err:
            raise HATError(f"trunk does not accept inputs of shape {input_shape}: {err}") from None
        finally:
            for h in hooks:
                h.remove()
            for m in gated:
                m.current_gate = None
            for n in norms:
                n.current_task = None
            trunk.train(was_training)
        ran = [m for m in order if isinstance(m, HAT_LAYERS)]
        if [id(m) for m in ran] != [id(m) for m in gated]:
            raise HATError(
                f"the trunk runs its {len(gated)} HAT layers {len(ran)} times, or in another "
                "order than they are registered; HAT needs a feed-forward chain that runs each "
                "gated layer once, in registration order (define the modules in forward order)"
            )
        if out.dim() != 2:
            raise HATError(
                f"trunk output has shape {tuple(out.shape)}; end the trunk with nn.Flatten() "
                "so that heads receive (batch, features)"
            )
        for n in norms:
            i = next((k for k, m in enumerate(order) if m is n), None)
            prev = order[i - 1] if i else None
            if prev is None or not isinstance(prev, HAT_LAYERS) or prev.units != n.num_features \
                    or prev.defer_gate:
                raise HATError(
                    f"{type(n).__name__}({n.num_features}) does not run right after a gated "
                    "layer of as many units (or another one already normalises that layer): "
                    "put each per-task BatchNorm directly after its Linear/Conv2d"
                )
            prev.defer_gate = True
            n.__dict__["gated"] = prev
        return out.shape[1]

    @staticmethod
    def _check_chain(gated) -> None:
        """Each gated layer must read the previous one's units (a flatten repeats channels)."""
        for prev, layer in zip(gated[:-1], gated[1:], strict=True):
            flattened = layer.input_repeat > 1
            ok = layer.in_width % prev.units == 0 and (
                not flattened or (isinstance(prev, HATConv2d) and isinstance(layer, HATLinear))
            )
            if not ok:
                raise HATError(
                    f"cannot tell which gate feeds {type(layer).__name__}"
                    f"(in={layer.in_width}) after a layer of {prev.units} units: HAT needs a "
                    "feed-forward chain where each gated layer reads the previous one's units "
                    "(a conv output flattened channel-major into a linear layer is fine)"
                )

    # ------------------------------------------------------------------ tasks
    def add_task(self, task: int, n_classes: int) -> None:
        super().add_task(task, n_classes)
        for layer in self.gated_layers:
            layer.add_task(task, self.embedding_init)
        for norm in self.task_norms:
            w = norm.__dict__["gated"].weight
            norm.add_task(task, w.device, w.dtype)

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """The parameters owned by ``task``: its embeddings, its BatchNorms and its head."""
        return ([layer.embedding(task) for layer in self.gated_layers]
                + [p for norm in self.task_norms for p in norm.norm(task).parameters()]
                + list(self.heads[str(task)].parameters()))

    def masks(self, task: int) -> list[torch.Tensor]:
        """Evaluation masks of ``task`` per gated layer (at smax; binary by default)."""
        self.check_task(task)
        return [layer.mask(task, self.smax, self.binary_masks) for layer in self.gated_layers]

    def cumulative_masks(self) -> list[torch.Tensor]:
        return [layer.cumulative for layer in self.gated_layers]

    @torch.no_grad()
    def update_cumulative(self, task: int) -> None:
        """a^{≤t} = max(a^{<t}, mask^t) (§2.3), after training task t."""
        for layer, m in zip(self.gated_layers, self.masks(task), strict=True):
            torch.maximum(layer.cumulative, m, out=layer.cumulative)

    def conditioning_factors(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, gradient factor) pairs for every gated weight and bias (Eq. 2)."""
        pairs = []
        prev_mask = None
        for layer in self.gated_layers:
            w, b = layer.conditioning_factors(prev_mask)
            pairs.append((layer.weight, w))
            if b is not None:
                pairs.append((layer.bias, b))
            prev_mask = layer.cumulative
        return pairs

    @torch.no_grad()
    def mask_statistics(self, tasks: Sequence[int] | None = None) -> dict:
        """Per layer and task: capacity used and reuse of earlier tasks' units (§4 monitoring).

        ``used[l][k]``: fraction of layer l's units task ``tasks[k]`` uses (mask > 0.5);
        ``overlap[l][k]``: fraction of those units already used by ``tasks[:k]``;
        ``cumulative[l][k]``: fraction used by ``tasks[:k+1]``;
        ``weights_kept[k]``: fraction of gated weights joining two active units of task k
        (compression, §4); ``units_kept[k]``: fraction of all gated units it keeps.
        """
        tasks = list(self.tasks if tasks is None else tasks)
        names = {m: n for n, m in self.trunk.named_modules()}
        used, overlap, cumul = ([[] for _ in self.gated_layers] for _ in range(3))
        weights_kept, units_kept = [], []
        seen = [torch.zeros(layer.units, dtype=torch.bool, device=layer.cumulative.device)
                for layer in self.gated_layers]
        for task in tasks:
            masks = [m > 0.5 for m in self.masks(task)]
            kept_w = total_w = kept_u = total_u = 0
            prev = None
            for i, (layer, m) in enumerate(zip(self.gated_layers, masks, strict=True)):
                n_on = int(m.sum())
                used[i].append(n_on / layer.units)
                overlap[i].append(float((m & seen[i]).sum()) / n_on if n_on else 0.0)
                seen[i] |= m
                cumul[i].append(float(seen[i].float().mean()))
                per_unit = layer.weight[0].numel()  # weights per output unit
                total_w += layer.units * per_unit
                kernel = per_unit // layer.in_width
                n_in = layer.in_width if prev is None else int(prev.sum()) * layer.input_repeat
                kept_w += n_on * n_in * kernel
                kept_u += n_on
                total_u += layer.units
                prev = m
            weights_kept.append(kept_w / total_w)
            units_kept.append(kept_u / total_u)
        return {
            "layers": [names.get(layer, type(layer).__name__) for layer in self.gated_layers],
            "units": [layer.units for layer in self.gated_layers],
            "tasks": tasks,
            "used": used,
            "overlap": overlap,
            "cumulative": cumul,
            "weights_kept": weights_kept,
            "units_kept": units_kept,
        }

    # ---------------------------------------------------------------- forward
    def features(self, x: torch.Tensor, task: int) -> torch.Tensor:
        if self.training:
            gates = [layer.gate(task, self.s) for layer in self.gated_layers]
            self.last_gates = gates
        else:
            gates = self.masks(task)
        for layer, g in zip(self.gated_layers, gates, strict=True):
            layer.current_gate = g
        for norm in self.task_norms:
            norm.current_task = task
        try:
            return self.trunk(x)
        finally:
            for layer in self.gated_layers:
                layer.current_gate = None
            for norm in self.task_norms:
                norm.current_task = None



def find_hat_model(model: nn.Module) -> HATNet:
    """Return the HATNet inside ``model`` or raise a clear error."""
    if isinstance(model, HATNet):
        return model
    for m in model.modules():
        if isinstance(m, HATNet):
            return m
    raise HATError(
        f"model {type(model).__name__} has no HAT layers: wrap it with "
        "strategies.HATNet.wrap(nn.Sequential(...), input_shape, head_sizes)"
    )
