"""HATPlugin's CPU-exact shortcuts: the same numbers as the reference operations, cheaper.

Conditioning a linear first layer's rows through ∂L/∂z, a clipping bound from ‖∂L/∂z‖·‖x‖,
zero fills of few protected entries, and skipping the save/restore of protected entries under
plain SGD. Each holds only under the conditions checked here (see ``HATPlugin``'s docstring).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..training.lean_loop import SGD
from .layers import HATLinear, HATMixin


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


def row_factor(layer: HATMixin) -> torch.Tensor | None:
    """The first gated layer's factor, 1 − a_out_i for its weights' rows and its bias (Eq. 2,
    no input gate), when it is binary (then multiplying ∂L/∂z instead of ∂L/∂W gives the
    same numbers); else None."""
    row = 1 - layer.cumulative
    return row if bool(((row == 0) | (row == 1)).all()) else None


#: a shortcut through ∂L/∂z and x (conditioning rows, the clipping bound) runs on a layer only
#: when the elements it reads, times this, are at most the elements of the weight gradient it
#: spares: on small layers the hook and its norms cost more than the pass they save
SHORTCUT_GAIN = 2.0


def shortcut_pays(layer: HATMixin, batch_size: int, reads_input: bool) -> bool:
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
#: elements below which a gradient is multiplied by its factor instead (the product joins
#: the step's one multi-tensor call; a fill by index is a call of its own and, on a gradient
#: that fits the cache, slower: 5 µs against 2 µs for 100×100 on the reference CPU)
FILL_MIN_ELEMENTS = 1 << 16


def protected_entries(factor: torch.Tensor) -> torch.Tensor | None:
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


def is_plain_sgd(optimizer: torch.optim.Optimizer) -> bool:
    """Plain SGD leaves an entry with zero gradient exactly unchanged."""
    return type(optimizer) in (torch.optim.SGD, SGD) and all(
        g.get("momentum", 0) == 0 and g.get("weight_decay", 0) == 0 for g in optimizer.param_groups
    )


Pair = tuple[nn.Parameter, torch.Tensor]


class FastPaths:
    """The shortcuts planned for one experience: which (parameter, factor) pairs of Eq. 2 the
    layers' ∂L/∂z hooks condition (``rows``), which a zero fill applies (``fills``), which a
    product applies (``multiply``: the reference operation), and the layers whose clipping
    bound is logged (``bounded``). Empty (the default): every pair multiplied, exact clipping.
    """

    def __init__(self) -> None:
        self.layers: list[HATMixin] = []
        self.multiply: list[Pair] = []
        self.rows: list[tuple[HATMixin, list[Pair]]] = []
        self.fills: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
        self.bounded: list[HATMixin] = []
        self.hooked: list[HATMixin] = []
        self.watched: list[nn.Parameter] = []
        self.unbounded: list[nn.Parameter] = []
        self.active = False

    @classmethod
    def plan(cls, layers: list[HATMixin], factors: list[Pair], params: list[nn.Parameter],
             fast: bool, batch_size: int) -> FastPaths:
        """Split the pairs of Eq. 2 (``factors``) of ``layers`` between the ∂L/∂z hooks, a zero
        fill of the few protected entries and a multiply, and switch the clipping bound on
        (only where ``fast``: on CPU, where the passes they save cost more than the extra
        kernel launches and host synchronisation they need on accelerators)."""
        self = cls()
        self.layers = list(layers)
        by_id = {id(p): f for p, f in factors}
        for layer in self.layers:
            own = [(p, by_id[id(p)]) for p in (layer.weight, layer.bias) if p is not None]
            own = [(p, f) for p, f in own if not bool((f == 1).all())]
            # the hook needs an input without gradient (an ungated input: the data)
            # and pays when ∂L/∂z is well smaller than ∂L/∂W (a linear layer; not a conv's maps)
            hook = (own and fast and layer.__dict__["_input_owner"] is None
                    and isinstance(layer, HATLinear)
                    and shortcut_pays(layer, batch_size, reads_input=False))
            row = row_factor(layer) if hook else None
            layer.row_grad_factor = row
            bound = fast and shortcut_pays(layer, batch_size, reads_input=True)
            layer.grad_bounds = [] if bound else None
            if row is not None:
                self.rows.append((layer, own))
                continue
            for p, f in own:
                idx = protected_entries(f) if fast and f.numel() >= FILL_MIN_ELEMENTS else None
                if idx is None:
                    self.multiply.append((p, f))
                else:
                    self.fills.append((p, f, idx))
        # the shortcuts assume their layers' weights and biases get gradients from those
        # layers only; the clipping bound covers the bounded weights, the other gradients
        # are measured
        self.bounded = [layer for layer in self.layers if layer.grad_bounds is not None]
        self.hooked = [layer for layer in self.layers
                       if layer.grad_bounds is not None or layer.row_grad_factor is not None]
        self.active = fast and bool(self.hooked)
        self.watched = [
            p for layer in self.hooked for p in (layer.weight, layer.bias) if p is not None
        ]
        weights = {id(layer.weight) for layer in self.bounded}
        self.unbounded = [p for p in params if id(p) not in weights]
        return self

    def pairs(self) -> list[Pair]:
        """Every (parameter, factor) pair of Eq. 2 that conditions a gradient."""
        return (self.multiply + [(p, f) for p, f, _ in self.fills]
                + [pf for _, own in self.rows for pf in own])

    def start_step(self) -> None:
        """Before a step's forward: the layers' hooks log afresh."""
        for layer in self.layers:
            layer.rows_missed = layer.grads_fresh = False
            if layer.grad_bounds is not None:
                layer.grad_bounds.clear()

    def trusted(self, loss: torch.Tensor) -> bool:
        """Whether the shortcuts hold for this step: every gated weight and bias reached the
        loss once, through its layer, in this step alone (no other loss term, no accumulated
        gradient); a graph walk checks it every step (10–70 µs on the MLP)."""
        return (self.active and all(layer.grads_fresh for layer in self.hooked)
                and weights_used_once(loss, self.watched))

    def gradient_factors(self, trusted: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Zero-fills the gradients of ``fills`` and returns the (gradient, factor) pairs
        still to multiply: ``multiply``, and the hooked rows when the hook missed its step or
        the step is not ``trusted``."""
        pairs = self.multiply + [
            pf for layer, own in self.rows if layer.rows_missed or not trusted for pf in own
        ]
        for p, f, idx in self.fills:  # binary factor, few zeros: fill them (same numbers)
            if p.grad is not None:
                if p.grad.is_contiguous():
                    p.grad.view(-1).index_fill_(0, idx, 0.0)
                else:
                    pairs.append((p, f))
        return [(p.grad, f) for p, f in pairs if p.grad is not None]

    def norm_below(self, max_norm: float) -> bool:
        """True when bounds prove the global gradient norm ≤ ``max_norm`` (clipping: no-op).

        Gated weights: ‖∂L/∂W‖ ≤ ‖∂L/∂z‖·‖x‖·√(kernel area), logged by the layers' hooks;
        every other gradient (biases, embeddings, head) exactly. Conditioning only lowers
        the norm. A margin keeps float rounding on the safe side. False: clip exactly.
        """
        if not self.bounded:
            return False
        sq = 0.0
        for layer in self.bounded:
            if len(layer.grad_bounds) != 1:
                return False
            sq += layer.grad_bounds[0] ** 2
        small = [p.grad for p in self.unbounded if p.grad is not None]
        if small:  # one read of the host: squares summed in double precision
            sq += float(torch.stack(torch._foreach_norm(small)).double().square().sum())
        return math.sqrt(sq) <= max_norm * (1 - 1e-4)

    def clear(self) -> None:
        """After the experience: the layers' hooks off."""
        for layer in self.layers:
            layer.row_grad_factor = None
            layer.grad_bounds = None
            layer.rows_missed = layer.grads_fresh = False
