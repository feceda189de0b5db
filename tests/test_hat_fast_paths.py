"""HATPlugin's exact shortcuts (issue 6) change no number.

``HATPlugin.fast_paths`` conditions the first layer through ∂L/∂z and skips the clipping
pass when Cauchy–Schwarz bounds prove the norm below ``clipgrad``. With it on and off, the
same seeded training must leave bit-identical parameters, and the shortcuts must really
have been taken (otherwise the comparison would prove nothing).
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers_strategies import (
    MLP_SHAPE,
    OPTIMIZERS,
    TRUNKS,
    fast_plugins,
    hat_net,
    make_stream,
    mlp_trunk,
    quiet_evaluator,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import strategies.hat as hat_module
from strategies import HAT, HATConv2d, HATLinear, HATPlugin
from strategies.hat import _protected_entries, weights_used_once

N_TASKS = 3
REAL_CLIP = hat_module.clip_grad_norm


class _Spy:
    """Counts HAT's exact clipping passes and the steps whose gradients they scaled."""

    def __init__(self, monkeypatch):
        self.exact_clips = 0  # exact norm computations
        self.scaled = 0  # of which the norm was above max_norm (gradients scaled)
        real = REAL_CLIP

        def counting(params, max_norm):
            params = list(params)
            self.exact_clips += 1
            grads = [p.grad for p in params if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
            self.scaled += float(norm) > max_norm
            return real(params, max_norm)

        monkeypatch.setattr(hat_module, "clip_grad_norm", counting)


def _train(trunk_name, opt_name, fast, monkeypatch, *, clipgrad=10000.0, soft=False,
           extra=()):
    torch.manual_seed(0)
    make_trunk, shape = TRUNKS[trunk_name]
    bm, _, _ = make_stream(N_TASKS, shape)
    model = hat_net(make_trunk(), shape)
    spy = _Spy(monkeypatch)
    strategy = HAT(
        model=model, optimizer=OPTIMIZERS[opt_name](model.parameters()), train_mb_size=16,
        train_epochs=2, clipgrad=clipgrad, soft_masks=soft,
        plugins=fast_plugins(*extra), evaluator=quiet_evaluator(),
    )
    strategy.hat_plugin.fast_paths = fast
    for exp in bm.train_stream:
        strategy.train(exp)
    return {n: p.detach().clone() for n, p in model.named_parameters()}, spy


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differ = [n for n in a if not torch.equal(a[n], b[n])]
    assert not differ, f"parameters differ between fast and reference paths: {differ}"


@pytest.mark.parametrize("trunk_name", sorted(TRUNKS))
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_fast_paths_give_bit_identical_parameters(trunk_name, opt_name, monkeypatch):
    ref, ref_spy = _train(trunk_name, opt_name, False, monkeypatch)
    fast, fast_spy = _train(trunk_name, opt_name, True, monkeypatch)
    _assert_identical(ref, fast)
    steps = N_TASKS * 2 * 4  # 64 samples / batch 16, 2 epochs
    assert ref_spy.exact_clips == steps
    assert fast_spy.exact_clips == 0  # every step proved the norm below 10000


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
@pytest.mark.parametrize("trunk_name", sorted(TRUNKS))
def test_zero_filling_protected_entries_gives_bit_identical_parameters(
    trunk_name, opt_name, monkeypatch
):
    # every binary factor takes the zero-fill route (threshold 1), rows hooks as usual
    monkeypatch.setattr(hat_module, "FILL_MAX_FRACTION", 1.0)
    seen = []
    real = HATPlugin.after_backward

    def spy(self, strategy, **kw):
        seen.append(len(self._fills))
        return real(self, strategy, **kw)

    monkeypatch.setattr(HATPlugin, "after_backward", spy)
    fast, _ = _train(trunk_name, opt_name, True, monkeypatch)
    monkeypatch.setattr(HATPlugin, "after_backward", real)
    ref, _ = _train(trunk_name, opt_name, False, monkeypatch)
    _assert_identical(ref, fast)
    assert max(seen) > 0  # the fill route was taken


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    p_zero=st.floats(0.0, 1.0),
    soft=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_protected_entries_are_the_zeros_of_a_binary_factor(shape, p_zero, soft, seed):
    g = torch.Generator().manual_seed(seed)
    f = (torch.rand(shape, generator=g) >= p_zero).float()
    if soft:
        f = f * 0.5 + 0.25  # values in (0, 1): not binary
    idx = _protected_entries(f)
    frac = float((f == 0).float().mean())
    if soft or frac > hat_module.FILL_MAX_FRACTION:
        assert idx is None
    else:
        g2 = torch.randn(shape, generator=g)
        filled = g2.clone().view(-1).index_fill_(0, idx, 0.0).view(shape)
        assert torch.equal(filled, g2 * f)


class _FirstLayerProbe:
    """In after_backward before HAT's: is layer 1's weight gradient already conditioned?"""

    def __init__(self):
        from avalanche.core import SupervisedPlugin

        probe = self

        class P(SupervisedPlugin):
            def after_backward(self, strategy, **kw):
                layer = strategy.model.gated_layers[0]
                used = layer.cumulative > 0
                if used.any() and not used.all():
                    g = layer.weight.grad
                    probe.seen.append(bool((g[used] == 0).all()) and bool(g[~used].any()))

        self.seen: list[bool] = []
        self.plugin = P()


@pytest.mark.parametrize("fast", [True, False])
def test_first_layer_is_conditioned_through_its_output_gradient(fast, monkeypatch):
    probe = _FirstLayerProbe()
    _train("mlp", "sgd", fast, monkeypatch, extra=(probe.plugin,))
    assert probe.seen, "no step after task 1 had a partly used first layer"
    # fast: conditioned by the ∂L/∂z hook already; reference: only in HAT's after_backward
    assert all(probe.seen) if fast else not any(probe.seen)


def test_conv_first_layer_keeps_the_weight_pass_when_that_is_cheaper(monkeypatch):
    # conv1 of the conv trunk: ∂L/∂z has 16·4·6·6 entries, the weight 36: no hook
    _, shape = TRUNKS["conv"]
    model = hat_net(TRUNKS["conv"][0](), shape, head_sizes=[2])
    layer = model.gated_layers[0]
    layer.row_grad_factor = torch.ones(layer.units)
    model.train()
    model(torch.randn(16, *shape), 0).sum().backward()
    assert layer.rows_missed


def test_small_clipgrad_clips_exactly_on_both_paths(monkeypatch):
    ref, ref_spy = _train("mlp", "sgd", False, monkeypatch, clipgrad=0.05)
    fast, fast_spy = _train("mlp", "sgd", True, monkeypatch, clipgrad=0.05)
    _assert_identical(ref, fast)
    assert fast_spy.scaled == ref_spy.scaled > 0  # no step that needed clipping was skipped


def test_soft_masks_take_the_reference_conditioning(monkeypatch):
    ref, _ = _train("mlp", "adam", False, monkeypatch, soft=True)
    fast, _ = _train("mlp", "adam", True, monkeypatch, soft=True)
    _assert_identical(ref, fast)


def _penalty_plugin(scale: float, how: str):
    """Gives layer 1's weight a gradient that is not its forward's alone: a loss term, or a
    gradient already accumulated before the backward."""
    from avalanche.core import SupervisedPlugin

    class Penalty(SupervisedPlugin):
        def before_backward(self, strategy, **kw):
            w = strategy.model.gated_layers[0].weight
            if how == "loss":
                strategy.loss = strategy.loss + scale * w.square().sum()
            else:
                w.grad = torch.full_like(w, scale)

    return Penalty()


@pytest.mark.parametrize("how", ["loss", "accumulated"])
@pytest.mark.parametrize("before_hat", [True, False])
def test_extra_gradient_on_a_weight_disables_the_shortcuts(before_hat, how, monkeypatch):
    # an extra gradient whose norm alone exceeds clipgrad, on the hooked first layer: it must
    # be conditioned and clipped as the reference does, in any plugin order
    torch.manual_seed(0)
    bm, _, _ = make_stream(2, MLP_SHAPE)
    results = []
    for fast in (False, True):
        torch.manual_seed(0)
        model = hat_net(mlp_trunk(), MLP_SHAPE)
        spy = _Spy(monkeypatch)
        hat = HATPlugin(clipgrad=1.0)
        hat.fast_paths = fast
        penalty = _penalty_plugin(1e3, how)
        from avalanche.training.templates import SupervisedTemplate

        plugins = [penalty, hat] if before_hat else [hat, penalty]
        strategy = SupervisedTemplate(
            model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
            criterion=nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=1,
            plugins=fast_plugins(*plugins), evaluator=quiet_evaluator(),
        )
        for exp in bm.train_stream:
            strategy.train(exp)
        results.append(({n: p.detach().clone() for n, p in model.named_parameters()}, spy))
    (ref, ref_spy), (fast, fast_spy) = results
    _assert_identical(ref, fast)
    assert fast_spy.exact_clips == ref_spy.exact_clips == fast_spy.scaled == 8


def test_weights_used_once_sees_every_edge():
    lin = HATLinear(4, 3)
    other = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    lin.current_gate = torch.ones(3)
    out = lin(x).sum()
    assert weights_used_once(out, [lin.weight])
    assert not weights_used_once(out + lin.weight.sum(), [lin.weight])
    assert not weights_used_once(other(x).sum(), [lin.weight])  # never reached
    assert not weights_used_once(torch.zeros(()), [lin.weight])  # no graph


# ------------------------------------------------------- the bound is a bound
@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 6),
    width=st.integers(1, 9),
    kernel=st.integers(1, 4),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_logged_bound_is_at_least_the_conv_weight_gradient_norm(
    batch, width, kernel, stride, padding, dilation, seed
):
    torch.manual_seed(seed)
    size = max(width, (kernel - 1) * dilation + 1)
    conv = HATConv2d(2, 3, kernel, stride=stride, padding=padding, dilation=dilation)
    _check_bound(conv, torch.randn(batch, 2, size, size) * 3)


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 8), n_in=st.integers(1, 12), n_out=st.integers(1, 12),
       seed=st.integers(0, 2**16))
def test_logged_bound_is_at_least_the_linear_weight_gradient_norm(batch, n_in, n_out, seed):
    torch.manual_seed(seed)
    _check_bound(HATLinear(n_in, n_out), torch.randn(batch, n_in) * 3)


def _check_bound(layer, x):
    layer.train()
    layer.current_gate = torch.rand(layer.units)
    layer.grad_bounds = []
    out = layer(x)
    (out * torch.randn_like(out)).sum().backward()
    assert len(layer.grad_bounds) == 1
    bound = float(layer.grad_bounds[0])
    norm = float(torch.linalg.vector_norm(layer.weight.grad))
    assert norm <= bound * (1 + 1e-5) + 1e-6
    assert math.isfinite(bound)


def test_reflect_padding_gives_no_bound():
    conv = HATConv2d(1, 2, 3, padding=1, padding_mode="reflect")
    conv.train()
    conv.current_gate = torch.ones(2)
    conv.grad_bounds = []
    conv(torch.randn(2, 1, 5, 5)).sum().backward()
    assert not float(conv.grad_bounds[0]) <= 1e30  # inf: the plugin clips exactly
