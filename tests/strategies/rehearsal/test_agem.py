"""A-GEM (strategies/rehearsal/agem.py): the projection never opposes the reference gradient
and stays finite for tiny ones; on a multi-head model the update never opposes the memory's
gradient (where Avalanche's plugin does), and an agreeing gradient is left unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from avalanche.training.plugins import AGEMPlugin as AvalancheAGEMPlugin
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from strategies import (
    AGEMPlugin,
    MultiHeadNet,
    agem_projection,
)
from tests.support.rehearsal import _Stub
from tests.support.trunks import (
    keep_subnormals,  # noqa: F401  (autouse fixture)
)

# one torch thread (conftest's fixture): much faster for these tiny networks on shared cores
pytestmark = pytest.mark.usefixtures("one_thread")


#: gradient entries: 0 or of a normal size (denormal ones have too few bits to check against)
_ENTRY = st.one_of(st.just(0.0), st.floats(1e-30, 10), st.floats(-10, -1e-30))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30).flatmap(lambda n: st.tuples(
    st.lists(_ENTRY, min_size=n, max_size=n),
    st.lists(st.floats(-10, 10), min_size=n, max_size=n))))
def test_agem_projection_never_opposes_the_reference(vectors):
    """Checked in units of the largest entries (tiny or huge vectors alike)."""
    g, g_ref = (torch.tensor(v, dtype=torch.float64) for v in vectors)
    projected = agem_projection(g, g_ref)
    unit = g_ref / g_ref.abs().max() if g_ref.abs().max() > 0 else g_ref
    if float(g @ unit) >= 0:
        assert projected is g  # unchanged
    else:
        along = float(projected @ unit) / float(g.abs().max())
        assert abs(along) <= 1e-12 * len(g)  # onto the boundary gᵀg_ref = 0, no further
        assert torch.isfinite(projected).all()


def test_agem_projection_of_a_tiny_reference_gradient_stays_finite():
    """float32, denormals flushed (as in the runner): ‖g_ref‖² underflows to 0, and the
    formula as written (Avalanche's) gives inf/NaN; the scaled one projects correctly."""
    torch.set_flush_denormal(True)  # (restored by keep_subnormals)
    g = torch.tensor([1.0, 1.0, 0.5])
    g_ref = torch.tensor([-1e-22, 2e-23, 0.0])
    dot = torch.dot(g, g_ref)
    assert float(torch.dot(g_ref, g_ref)) == 0.0 and float(dot) < 0
    assert not torch.isfinite(g - (dot / torch.dot(g_ref, g_ref)) * g_ref).all()
    projected = agem_projection(g, g_ref)
    assert torch.isfinite(projected).all()
    unit = g_ref / 1e-22
    assert abs(float(projected @ unit)) < 1e-5 and float(projected[2]) == 0.5


def _two_head_net() -> MultiHeadNet:
    """No dropout: forward passes are deterministic. Head 1 = −head 0, so that on the same
    inputs and labels task 1's trunk gradient opposes task 0's (two classes)."""
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(64, 16), nn.ReLU())
    model = MultiHeadNet(trunk, 16, (2, 2))
    with torch.no_grad():
        model.heads["1"].weight.copy_(-model.heads["0"].weight)
        model.heads["1"].bias.copy_(-model.heads["0"].bias)
    return model


def _agem_step(plugin, model, x, y, task: int):
    """One A-GEM step's gradient: g_ref, backward of the current batch, projection."""
    strategy = _Stub(model)
    plugin.before_training_iteration(strategy)
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x, task), y).backward()
    raw = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    plugin.after_backward(strategy)
    return strategy, raw


def _flat_grads(model) -> torch.Tensor:
    return torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1)
                      for p in model.parameters()])


def _agem_with_task_0_in_memory():
    """The two-head net, a batch (x, y) of task 0 and an A-GEM plugin holding that batch as
    its memory of one finished experience."""
    model = _two_head_net()
    x, y = torch.randn(16, 64), torch.zeros(16, dtype=torch.long)
    plugin = AGEMPlugin(patterns_per_experience=16, sample_size=16)
    plugin.memory.add(x, y, torch.zeros(16, dtype=torch.long), 0)
    plugin.n_experiences = 1
    return model, plugin, x, y


def test_agem_update_never_opposes_the_memory_gradient_on_a_multihead_model():
    model, plugin, x, y = _agem_with_task_0_in_memory()
    _, raw = _agem_step(plugin, model, x, y, task=1)
    g_ref = plugin.reference_gradients
    raw_flat = torch.cat([(torch.zeros_like(p) if r is None else r).reshape(-1)
                          for r, p in zip(raw, model.parameters(), strict=True)])
    assert float(raw_flat @ g_ref) < 0  # the set-up conflicts: a projection happens
    assert plugin.projections == 1
    update = _flat_grads(model)
    assert float(update @ g_ref) >= -1e-6 * float(update.norm() * g_ref.norm())
    assert model.heads["0"].weight.grad is not None  # the memory's head gets its share

    # Avalanche's plugin drops that share: its update opposes the memory gradient
    model.zero_grad(set_to_none=True)
    for p, r in zip(model.parameters(), raw, strict=True):
        p.grad = None if r is None else r.clone()
    avalanche = AvalancheAGEMPlugin(16, 16)
    avalanche.buffers = [object()]
    avalanche.reference_gradients = g_ref
    avalanche.after_backward(_Stub(model))
    assert float(_flat_grads(model) @ g_ref) < -1e-3


def test_agem_leaves_an_agreeing_gradient_unchanged():
    model, plugin, x, y = _agem_with_task_0_in_memory()
    _, raw = _agem_step(plugin, model, x, y, task=0)  # the memory's own batch: g = g_ref
    assert plugin.projections == 0
    for p, r in zip(model.parameters(), raw, strict=True):
        assert (p.grad is None and r is None) or torch.equal(p.grad, r)
