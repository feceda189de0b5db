"""Which gate scales which tensor in a trunk: gate groups from the module graph (torch.fx).

HAT conditions a weight by the cumulative masks of the units it joins (Eq. 2): its layer's
output units and the units of whatever gate scales its input. In a chain that is the previous
gated layer; with residual connections a sum mixes several layers' outputs, and the sum is only
gated per unit when its operands share one gate. ``gate_groups`` reads that from the traced
graph instead of from architecture-specific code:

- a gated layer (``HATLinear``/``HATConv2d`` or, before wrapping, ``Linear``/``Conv2d``) starts
  a tensor scaled by its own gate;
- modules and functions that commute with a non-negative per-unit scale (ReLU, dropout,
  pooling, a flatten from dim 1 or ``x.view(x.size(0), -1)``) keep the scaling of their
  input, and so does a BatchNorm that is the only use of a gated layer's output (HAT makes
  it per task and applies the layer's gate after it); shape queries are not activations;
- an addition ``a + b`` needs ``a`` and ``b`` scaled by the same gate: the layers behind its
  operands are put in one group (union-find), e.g. a residual block's last conv, its 1×1
  downsample shortcut and the previous block's output;
- anything else between gated layers (a concatenation, a product of two activations, a
  non-commuting activation) is refused with the node that breaks the rule.

The result is what HAT needs to share embeddings within a group and to condition every
weight: ``groups`` (layer indices per gate group) and ``feeds`` (the group scaling each
layer's input, None for the network input).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from .layers import GATE_COMMUTING, HAT_LAYERS, HATError, PerTaskBatchNorm

#: functions and tensor methods that commute with a non-negative per-unit gate
_COMMUTING_FUNCTIONS = {
    torch.relu, F.relu, F.leaky_relu, F.dropout, F.max_pool2d, F.avg_pool2d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
}
_COMMUTING_METHODS = {"relu", "relu_", "contiguous"}
#: reshapes that keep the batch dimension and merge the rest channel-major (as a flatten)
_FLATTENS = {torch.flatten, "flatten"}
_VIEWS = {torch.reshape, "view", "reshape"}
_ADDS = {operator.add, operator.iadd, torch.add}
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, PerTaskBatchNorm)
_INPUT = -1


class _LeafTracer(fx.Tracer):
    """Every module without children (and every HAT layer or norm) is one graph node."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (*HAT_LAYERS, PerTaskBatchNorm)) or not any(True for _ in m.children())


@dataclass
class GateGraph:
    """``groups[g]``: indices (into the gated layers) sharing gate group g, in order;
    ``feeds[i]``: the group scaling layer i's input, or None for the network's input;
    ``group_of[i]``: layer i's group."""

    groups: list[list[int]]
    feeds: list[int | None]
    group_of: list[int]


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _is_gated(m: nn.Module) -> bool:
    return isinstance(m, HAT_LAYERS) or type(m) in (nn.Linear, nn.Conv2d)


def _trace(trunk: nn.Module) -> tuple[nn.Module, fx.Graph]:
    if _LeafTracer().is_leaf_module(trunk, ""):  # a lone layer: trace it as a node
        trunk = nn.Sequential(trunk)
    try:
        return trunk, _LeafTracer().trace(trunk)
    except Exception as err:  # data-dependent control flow, unsupported ops
        raise HATError(
            f"cannot trace the trunk ({type(err).__name__}: {err}); HAT needs a trunk "
            "torch.fx can trace with its leaf modules as nodes"
        ) from None


class _Walk:
    """One pass over the traced graph: which gated layer's gate (a representative of its group)
    or the network input scales each node's output, the groups joined by residual sums and the
    group feeding each gated layer. One method per kind of node."""

    def __init__(self, trunk: nn.Module, gated: list[nn.Module]):
        self.index = {id(m): i for i, m in enumerate(gated)}
        self.modules = dict(trunk.named_modules())
        self.uf = _UnionFind(len(gated))
        self.source: dict[fx.Node, int] = {}  # node -> gated layer index or _INPUT
        self.feeds: list[int | None] = [None] * len(gated)
        self.seen_layer = [False] * len(gated)
        self.shapes: set[fx.Node] = set()  # shape queries (x.size(0), x.shape[0])

    def node(self, node: fx.Node) -> None:
        if self._shape_node(node):
            return
        if node.op == "placeholder":
            self.source[node] = _INPUT
        elif node.op == "call_module":
            self._module_node(node)
        elif node.op in ("call_function", "call_method"):
            self._function_node(node)
        elif node.op == "get_attr":
            raise HATError(f"the trunk reads a tensor attribute ('{node.target}') directly: "
                           "HAT cannot condition it")

    def src(self, arg, node: fx.Node) -> int:
        if not isinstance(arg, fx.Node) or arg not in self.source:
            raise HATError(f"cannot tell which gate scales the input of '{node.name}'")
        return self.source[arg]

    def _shape_node(self, node: fx.Node) -> bool:
        """A shape query (``x.size(0)``, ``x.shape[0]``): not an activation."""
        if node.op in ("call_method", "call_function") and (
                node.target in ("size", "dim")
                or (node.target is getattr and node.args[1] == "shape")
                or (node.target is operator.getitem and node.args[0] in self.shapes)):
            self.shapes.add(node)
            return True
        return False

    def _module_node(self, node: fx.Node) -> None:
        m = self.modules[node.target]
        if id(m) in self.index:
            i = self.index[id(m)]
            if self.seen_layer[i]:
                raise HATError(f"gated layer '{node.target}' runs twice; HAT needs each "
                               "gated layer once per forward")
            self.seen_layer[i] = True
            s = self.src(node.args[0], node)
            self.feeds[i] = None if s == _INPUT else s
            self.source[node] = i
        elif isinstance(m, _NORMS):
            arg = node.args[0]
            if not (isinstance(arg, fx.Node) and arg.op == "call_module"
                    and id(self.modules[arg.target]) in self.index and len(arg.users) == 1):
                raise HATError(
                    f"{type(m).__name__} '{node.target}' does not directly follow a gated "
                    "layer whose only use it is: HAT can only normalise a layer's units per "
                    "task right after it (the norm applies the layer's gate)"
                )
            self.source[node] = self.src(arg, node)
        elif isinstance(m, nn.Flatten) and not (m.start_dim == 1 and m.end_dim == -1):
            raise HATError(f"'{node.target}' flattens other than dims 1..-1: HAT needs the "
                           "batch dimension kept and units merged channel-major")
        elif isinstance(m, GATE_COMMUTING):
            self.source[node] = self.src(node.args[0], node)
        elif _is_gated(m):  # a Linear/Conv2d not in the list: a wrapping mistake
            raise HATError(f"layer '{node.target}' is not among the gated layers")
        else:
            raise HATError(
                f"trunk module '{node.target}' ({type(m).__name__}) does not commute with "
                "HAT's per-unit gate; use ReLU/LeakyReLU, dropout, pooling or flatten "
                "between gated layers"
            )

    def _function_node(self, node: fx.Node) -> None:
        tensor_args = [a for a in node.args if isinstance(a, fx.Node)]
        if node.target in _ADDS or node.target in ("add", "add_"):
            srcs = [self.src(a, node) for a in tensor_args]
            if len(srcs) != 2 or _INPUT in srcs:
                raise HATError(
                    f"'{node.name}' adds tensors that are not two gated layers' outputs; "
                    "HAT needs both operands of a residual sum gated"
                )
            self.uf.union(srcs[0], srcs[1])
            self.source[node] = srcs[0]
        elif node.target in _COMMUTING_FUNCTIONS or node.target in _COMMUTING_METHODS:
            self.source[node] = self.src(tensor_args[0], node)
        elif node.target in _FLATTENS or node.target in _VIEWS:
            if not self._flattens(node):
                raise HATError(
                    f"'{node.name}' reshapes other than (batch, -1): HAT needs the batch "
                    "dimension kept and units merged channel-major (flatten(1), "
                    "x.view(x.size(0), -1))"
                )
            self.source[node] = self.src(tensor_args[0], node)
        else:
            raise HATError(
                f"'{node.name}' ({getattr(node.target, '__name__', node.target)}) does not "
                "commute with HAT's per-unit gate"
            )

    def _flattens(self, node: fx.Node) -> bool:
        """``flatten`` from dim 1 to the end, or a view/reshape to (batch, -1) whose batch
        size is read from a tensor (``x.view(x.size(0), -1)``)."""
        args = list(node.args[1:])
        if node.target in _FLATTENS:
            start = args[0] if args else node.kwargs.get("start_dim", 0)
            end = args[1] if len(args) > 1 else node.kwargs.get("end_dim", -1)
            return start == 1 and end == -1
        if len(args) == 1 and isinstance(args[0], (tuple, list)):
            args = list(args[0])
        return len(args) == 2 and args[0] in self.shapes and args[1] == -1

    def result(self) -> GateGraph:
        n = len(self.seen_layer)
        missing = [i for i, s in enumerate(self.seen_layer) if not s]
        if missing:
            raise HATError(f"gated layers {missing} never run in the trunk's forward")
        roots = sorted({self.uf.find(i) for i in range(n)})
        group_id = {r: g for g, r in enumerate(roots)}
        group_of = [group_id[self.uf.find(i)] for i in range(n)]
        groups = [[i for i in range(n) if group_of[i] == g] for g in range(len(roots))]
        return GateGraph(groups=groups,
                         feeds=[None if f is None else group_of[f] for f in self.feeds],
                         group_of=group_of)


def gate_groups(trunk: nn.Module, gated: list[nn.Module]) -> GateGraph:
    """Trace ``trunk`` and group ``gated`` (its gated layers, in the order HAT lists them)
    by shared gate; see the module docstring for the rules. Raises HATError for a graph in
    which some gated layer's input is not scaled per unit by one gate group."""
    trunk, graph = _trace(trunk)
    walk = _Walk(trunk, gated)
    for node in graph.nodes:
        walk.node(node)
    return walk.result()
