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

import copy
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
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

    @property
    def gate_owner(self) -> _HATMixin:
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
        bn = self.norm(self.current_task)
        if bn.training and self.current_task in self.frozen:
            # a trained task: its running statistics, never updated again
            y = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False,
                             0.0, bn.eps)
            return gated._apply_gate(y)
        return gated._apply_gate(bn(x))


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


def _per_task_norm(bn: nn.modules.batchnorm._BatchNorm, name: str) -> _HATBatchNorm:
    per_task = _PER_TASK_BN.get(type(bn))
    if per_task is None:
        raise HATError(
            f"trunk contains {type(bn).__name__} ('{name}'), which HAT cannot make per task; "
            "use BatchNorm1d/BatchNorm2d directly after a Linear/Conv2d layer, or remove it"
        )
    return per_task.like(bn)


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


def _convert_in_place(module: nn.Module, prefix: str = "") -> None:
    """Replace every Linear/Conv2d inside ``module`` by a HAT layer and every BatchNorm by a
    per-task one (where each may sit is checked on the traced graph, see ``hat_graph``)."""
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if type(child) in (nn.Linear, nn.Conv2d):
            setattr(module, name, _upgrade(child))
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, _per_task_norm(child, full))
        elif not isinstance(child, (*HAT_LAYERS, _HATBatchNorm)):
            _convert_in_place(child, full + ".")


def _drop_classifier(model: nn.Module, classifier: str) -> None:
    """Replace the submodule ``classifier`` (a dotted name) by ``nn.Identity``."""
    parent_name, _, leaf = classifier.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
        getattr(parent, leaf)
    except AttributeError:
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise HATError(
            f"the model has no submodule '{classifier}' to replace by the per-task heads; "
            f"its Linear layers are {names}"
        ) from None
    if not isinstance(getattr(parent, leaf), nn.Module):
        raise HATError(f"'{classifier}' is not a module of the model")
    setattr(parent, leaf, nn.Identity())


class HATNet(MultiHeadNet):
    """A HAT network: gated trunk + one head per task (an Avalanche ``MultiTaskModule``).

    In training mode the gates use ``self.s`` (set per mini-batch by ``HATPlugin``); in eval
    mode they use s = smax and, by default, binary masks (``binary_masks``), so that earlier
    tasks' outputs are bit-identical after later training.

    Gate groups (``hat_graph.gate_groups``, from the traced trunk): layers whose outputs a
    residual sum adds share one gate, held by the group's first layer (``gate_layers``);
    ``gated_layers`` lists every gated layer (whose weights HAT conditions). In a chain each
    layer is its own group. Per-group lists: ``masks``, ``cumulative_masks``, ``last_gates``.
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
        from .hat_graph import gate_groups

        gated = [m for m in trunk.modules() if isinstance(m, HAT_LAYERS)]
        if not gated:
            raise HATError(
                "the model has no HAT layers: build it with HATLinear/HATConv2d or use "
                "HATNet.wrap(model, input_shape)"
            )
        norms = [m for m in trunk.modules() if isinstance(m, _HATBatchNorm)]
        # per-task norms' and HAT layers' own parameters (embeddings) are a task's
        per_task = {id(m) for n in (*norms, *gated) for m in n.modules()}
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
                "every trainable trunk layer, or HATNet.wrap(model, input_shape)"
            )
        input_shape = tuple(int(d) for d in input_shape)
        feature_dim = self._probe(trunk, gated, input_shape, norms)
        graph = gate_groups(trunk, gated)
        super().__init__(trunk, feature_dim)
        #: per-task BatchNorms, each applying the gate of the gated layer it follows
        self.task_norms: list[_HATBatchNorm] = norms  # plain list: modules are in self.trunk
        self.input_shape = input_shape
        self.gated_layers: list[_HATMixin] = gated  # plain list: modules are in self.trunk
        #: one layer per gate group, holding the group's embeddings and cumulative mask
        self.gate_layers: list[_HATMixin] = [gated[g[0]] for g in graph.groups]
        self.gate_graph = graph
        self.smax = float(smax)
        self.binary_masks = bool(binary_masks)
        self.embedding_init: EmbeddingInit = embedding_init
        self.s = self.smax
        self._link_groups(graph)
        self.last_gates: list[torch.Tensor] = []
        for task, n_classes in enumerate(head_sizes):
            self.add_task(task, n_classes)

    def _link_groups(self, graph) -> None:
        """Point each layer at its group's owner and at the group feeding its input; the
        input gate of a linear layer after a flatten repeats over H·W."""
        for i, layer in enumerate(self.gated_layers):
            owner = self.gate_layers[graph.group_of[i]]
            if owner.units != layer.units:
                raise HATError(
                    f"{type(layer).__name__}({layer.units} units) and "
                    f"{type(owner).__name__}({owner.units} units) are added together but have "
                    "different widths; HAT needs a residual sum of equally wide gated outputs"
                )
            layer.__dict__["_gate_owner"] = None if owner is layer else owner
            f = graph.feeds[i]
            src = None if f is None else self.gate_layers[f]
            layer.__dict__["_input_owner"] = src
            if src is None:
                layer.input_repeat = 1
                continue
            layer.input_repeat = layer.in_width // src.units
            from_convs = all(isinstance(self.gated_layers[j], HATConv2d)
                             for j in graph.groups[f])
            ok = layer.in_width % src.units == 0 and (
                layer.input_repeat == 1 or (from_convs and isinstance(layer, HATLinear)))
            if not ok:
                raise HATError(
                    f"cannot tell which gate feeds {type(layer).__name__}"
                    f"(in={layer.in_width}) after a gate of {src.units} units: HAT needs each "
                    "gated layer to read one gate group's units (a conv output flattened "
                    "channel-major into a linear layer is fine)"
                )

    @classmethod
    def wrap(
        cls, model: nn.Module, input_shape: Sequence[int], head_sizes: Sequence[int] = (),
        *, classifier: str | None = None, **kwargs,
    ) -> HATNet:
        """HAT-gate a network: every Linear/Conv2d becomes a HAT layer with the same weights
        and every BatchNorm1d/2d right after one a per-task BatchNorm (``HATBatchNorm1d/2d``).

        An ``nn.Sequential`` is rebuilt around the new layers; any other module (e.g. a
        ``torchvision`` ResNet) is copied and converted in the copy. ``classifier`` names a
        submodule (``"fc"`` for torchvision's ResNets) replaced by ``nn.Identity``: its job
        goes to the per-task heads. Residual sums are fine when both operands are gated
        layers' outputs (they then share one gate, see ``hat_graph``).
        """
        if isinstance(model, nn.Sequential) and classifier is None:
            return cls(_convert(model), input_shape, head_sizes, **kwargs)
        trunk = copy.deepcopy(model)
        if classifier is not None:
            _drop_classifier(trunk, classifier)
        if type(trunk) in (nn.Linear, nn.Conv2d):
            trunk = _upgrade(trunk)
        elif isinstance(trunk, nn.modules.batchnorm._BatchNorm):
            raise HATError("the model is a lone BatchNorm: HAT needs Linear/Conv2d layers")
        else:
            _convert_in_place(trunk)
        return cls(trunk, input_shape, head_sizes, **kwargs)

    @staticmethod
    def _probe(trunk, gated, input_shape, norms=()):
        """Forward a dummy batch through the trunk: the feature size the heads receive and
        each gated layer's per-sample sizes; each gated layer must run once; each per-task
        BatchNorm must run right after a gated layer of its width, whose gate it then
        applies (found from the run, not from names)."""
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
            n.__dict__["gated"] = None
        for m in gated:
            m.current_gate = torch.ones(m.units, device=m.weight.device, dtype=m.weight.dtype)
            m.defer_gate = False
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
        runs = [sum(r is m for r in order) for m in gated]
        if any(n != 1 for n in runs):
            raise HATError(
                f"the trunk runs its HAT layers {runs} times; HAT needs each gated layer to "
                "run exactly once per forward (a layer used twice would need two gates)"
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

    # ------------------------------------------------------------------ tasks
    def add_task(self, task: int, n_classes: int) -> None:
        super().add_task(task, n_classes)
        for layer in self.gate_layers:
            layer.add_task(task, self.embedding_init)
        for norm in self.task_norms:
            w = norm.__dict__["gated"].weight
            norm.add_task(task, w.device, w.dtype)

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """The parameters owned by ``task``: its embeddings, its BatchNorms and its head."""
        return ([layer.embedding(task) for layer in self.gate_layers]
                + [p for norm in self.task_norms for p in norm.norm(task).parameters()]
                + list(self.heads[str(task)].parameters()))

    def masks(self, task: int) -> list[torch.Tensor]:
        """Evaluation masks of ``task`` per gate group (at smax; binary by default)."""
        self.check_task(task)
        return [layer.mask(task, self.smax, self.binary_masks) for layer in self.gate_layers]

    def cumulative_masks(self) -> list[torch.Tensor]:
        """a^{<t} per gate group."""
        return [layer.cumulative for layer in self.gate_layers]

    @torch.no_grad()
    def update_cumulative(self, task: int) -> None:
        """a^{≤t} = max(a^{<t}, mask^t) (§2.3), after training task t; freezes the task's
        BatchNorms (their statistics never change afterwards)."""
        for layer, m in zip(self.gate_layers, self.masks(task), strict=True):
            torch.maximum(layer.cumulative, m, out=layer.cumulative)
        for layer in self.gated_layers:
            if layer.gate_owner is not layer:
                layer.cumulative.copy_(layer.gate_owner.cumulative)
        for norm in self.task_norms:
            norm.freeze(task)

    def conditioning_factors(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, gradient factor) pairs for every gated weight and bias (Eq. 2): the
        cumulative masks of the layer's gate group and of the group feeding its input."""
        pairs = []
        for layer in self.gated_layers:
            src = layer.__dict__["_input_owner"]
            w, b = layer.conditioning_factors(None if src is None else src.cumulative)
            pairs.append((layer.weight, w))
            if b is not None:
                pairs.append((layer.bias, b))
        return pairs

    @torch.no_grad()
    def mask_statistics(self, tasks: Sequence[int] | None = None) -> dict:
        """Per gated layer and task: capacity used and reuse of earlier tasks' units (§4
        monitoring); layers of one gate group report their shared gate.

        ``used[l][k]``: fraction of layer l's units task ``tasks[k]`` uses (mask > 0.5);
        ``overlap[l][k]``: fraction of those units already used by ``tasks[:k]``;
        ``cumulative[l][k]``: fraction used by ``tasks[:k+1]``;
        ``layer_weights_kept[l][k]``: fraction of layer l's weights joining two active units
        of task k; ``weights_kept[k]``: the same over all gated weights (compression, §4);
        ``units_kept[k]``: fraction of all gate units (each group once) it keeps.
        """
        tasks = list(self.tasks if tasks is None else tasks)
        names = {m: n for n, m in self.trunk.named_modules()}
        graph = self.gate_graph
        n_layers = len(self.gated_layers)
        used, overlap, cumul, layer_w = ([[] for _ in range(n_layers)] for _ in range(4))
        weights_kept, units_kept = [], []
        seen = [torch.zeros(layer.units, dtype=torch.bool, device=layer.cumulative.device)
                for layer in self.gate_layers]
        for task in tasks:
            masks = [m > 0.5 for m in self.masks(task)]
            n_on = [int(m.sum()) for m in masks]
            olap = [float((m & s).sum()) / n if n else 0.0
                    for m, s, n in zip(masks, seen, n_on, strict=True)]
            for m, s in zip(masks, seen, strict=True):
                s |= m
            kept_w = total_w = 0
            for i, layer in enumerate(self.gated_layers):
                g, f = graph.group_of[i], graph.feeds[i]
                used[i].append(n_on[g] / layer.units)
                overlap[i].append(olap[g])
                cumul[i].append(float(seen[g].float().mean()))
                per_unit = layer.weight[0].numel()  # weights per output unit
                kernel = per_unit // layer.in_width
                n_in = layer.in_width if f is None else n_on[f] * layer.input_repeat
                kept = n_on[g] * n_in * kernel
                layer_w[i].append(kept / (layer.units * per_unit))
                kept_w += kept
                total_w += layer.units * per_unit
            weights_kept.append(kept_w / total_w)
            units_kept.append(sum(n_on) / sum(layer.units for layer in self.gate_layers))
        return {
            "layers": [names.get(layer, type(layer).__name__) for layer in self.gated_layers],
            "units": [layer.units for layer in self.gated_layers],
            "tasks": tasks,
            "used": used,
            "overlap": overlap,
            "cumulative": cumul,
            "weights_kept": weights_kept,
            "units_kept": units_kept,
            "layer_weights_kept": layer_w,
            "groups": list(graph.group_of),
        }

    # ---------------------------------------------------------------- forward
    def features(self, x: torch.Tensor, task: int) -> torch.Tensor:
        if self.training:
            gates = [layer.gate(task, self.s) for layer in self.gate_layers]
            self.last_gates = gates
        else:
            gates = self.masks(task)
        for layer, g in zip(self.gated_layers, self.gate_graph.group_of, strict=True):
            layer.current_gate = gates[g]
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
        "strategies.HATNet.wrap(model, input_shape, head_sizes)"
    )
