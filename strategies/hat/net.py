"""The HAT network: a gated trunk with one head per task (Serrà et al., ICML 2018, §2.1–2.2).

``HATNet.wrap`` upgrades an ordinary trunk (its ``Linear``/``Conv2d`` layers become
``HATLinear``/``HATConv2d``, a BatchNorm right after one becomes per task); the gate groups
come from the traced graph (``graph.gate_groups``); a probe forward pass checks that the
layers run once each and measures the feature size. Also the masks, their statistics and
``find_hat_model``.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from ..common.multihead import MultiHeadNet
from .graph import gate_groups
from .layers import (
    GATE_COMMUTING,
    HAT_LAYERS,
    PER_TASK_BN,
    PROBE,
    EmbeddingInit,
    HATConv2d,
    HATError,
    HATLinear,
    HATMixin,
    PerTaskBatchNorm,
    set_step_state,
)


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


def _per_task_norm(bn: nn.modules.batchnorm._BatchNorm, name: str) -> PerTaskBatchNorm:
    per_task = PER_TASK_BN.get(type(bn))
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
        elif isinstance(child, PerTaskBatchNorm):
            layers.append((name, child))
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            prev = layers[-1][1] if layers else None
            per_task = PER_TASK_BN.get(type(child))
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
    per-task one (where each may sit is checked on the traced graph, see ``graph``)."""
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if type(child) in (nn.Linear, nn.Conv2d):
            setattr(module, name, _upgrade(child))
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, _per_task_norm(child, full))
        elif not isinstance(child, (*HAT_LAYERS, PerTaskBatchNorm)):
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

    Gate groups (``graph.gate_groups``, from the traced trunk): layers whose outputs a
    residual sum adds share one gate, held by the group's first layer (``gate_layers``);
    ``gated_layers`` lists every gated layer (whose weights HAT conditions). In a chain each
    layer is its own group. Per-group lists: ``masks``, ``cumulative_masks``, ``last_gates``.
    """

    __setattr__ = set_step_state

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
                "HATNet.wrap(model, input_shape)"
            )
        norms = [m for m in trunk.modules() if isinstance(m, PerTaskBatchNorm)]
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
        self.task_norms: list[PerTaskBatchNorm] = norms  # plain list: modules are in self.trunk
        self.input_shape = input_shape
        self.gated_layers: list[HATMixin] = gated  # plain list: modules are in self.trunk
        #: one layer per gate group, holding the group's embeddings and cumulative mask
        self.gate_layers: list[HATMixin] = [gated[g[0]] for g in graph.groups]
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
        layers' outputs (they then share one gate, see ``graph``).
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
                  and (isinstance(m, PerTaskBatchNorm) or not any(True for _ in m.children()))]
        hooks += [m.register_forward_hook(lambda mod, i, o: order.append(mod)) for m in others]
        for n in norms:
            n.current_task = PROBE
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

    @torch.no_grad()
    def all_task_logits(self, x: torch.Tensor, tasks: Sequence[int],
                        max_rows: int | None = None) -> list[torch.Tensor]:
        """Each of ``tasks``' logits on ``x`` (one N × C_t tensor per task), in one pass of the
        trunk: the evaluation-mode ``forward_single_task(x, t)`` of every task.

        The masks are stacked on a leading axis (T × units per gate group) and the batch
        runs as T row blocks: each gated layer multiplies block k by task k's mask, each
        per-task BatchNorm normalises block k with task k's statistics, and block k goes
        through task k's head. Layers that read the network input run once on the N rows
        (their output is the same for every task) and their gate makes the T blocks. Runs
        in evaluation mode (the modules' modes are restored) under ``no_grad``: it writes
        nothing. ``max_rows`` bounds the rows of one pass (T × samples): the samples then go
        through in chunks of ``max_rows // T`` (at least one), the same values.
        """
        tasks = [int(t) for t in tasks]
        for t in tasks:
            self.check_task(t)
        modes = [(m, m.training) for m in self.modules()] if self.training else []
        for m, _ in modes:
            m.training = False
        try:
            if len(tasks) < 2 or x.shape[0] == 0:
                return [self.forward_single_task(x, t) for t in tasks]
            step = x.shape[0] if max_rows is None else max(1, max_rows // len(tasks))
            if step >= x.shape[0]:
                return self._all_task_pass(x, tasks)
            chunks = [self._all_task_pass(x[i:i + step], tasks)
                      for i in range(0, x.shape[0], step)]
            return [torch.cat(z) for z in zip(*chunks, strict=True)]
        finally:
            for m, mode in modes:
                m.training = mode

    def _all_task_pass(self, x: torch.Tensor, tasks: list[int]) -> list[torch.Tensor]:
        """One all-task pass of ``x``: the trunk once, then block k through task k's head."""
        feats = self._all_task_features(x, tasks)
        blocks = feats.view(len(tasks), x.shape[0], -1).unbind(0)
        return [self.heads[str(t)](f) for t, f in zip(tasks, blocks, strict=True)]

    def _all_task_features(self, x: torch.Tensor, tasks: list[int]) -> torch.Tensor:
        """The trunk's features of every task, T row blocks of N rows (see
        ``all_task_logits``)."""
        gates = [layer.stacked_masks(tasks, self.smax, self.binary_masks)
                 for layer in self.gate_layers]
        for layer, g in zip(self.gated_layers, self.gate_graph.group_of, strict=True):
            layer.current_gate = gates[g]
        for norm in self.task_norms:
            norm.current_task = tuple(tasks)
        try:
            feats = self.trunk(x)
        finally:
            for layer in self.gated_layers:
                layer.current_gate = None
            for norm in self.task_norms:
                norm.current_task = None
        if feats.shape[0] != len(tasks) * x.shape[0]:
            raise HATError(
                f"the trunk returned {feats.shape[0]} rows for {len(tasks)} tasks × "
                f"{x.shape[0]} samples: its output does not pass through a gated layer"
            )
        return feats


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
