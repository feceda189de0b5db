"""HATPlugin's exact shortcuts (its CPU fast paths) change no number.

``HATPlugin.fast_paths`` conditions the first layer through ∂L/∂z and skips the clipping
pass when Cauchy–Schwarz bounds prove the norm below ``clipgrad``. With it on and off, the
same seeded training must leave bit-identical parameters, and the shortcuts must really
have been taken (otherwise the comparison would prove nothing).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

import strategies.hat.fast_paths as fast_paths
import strategies.hat.plugin as hat_module
from strategies import HAT, HATConv2d, HATLinear, HATPlugin
from strategies.hat.fast_paths import protected_entries, weights_used_once
from tests.support.trunks import (
    ALL_TRUNKS,
    MLP_SHAPE,
    OPTIMIZERS,
    RESNETS,
    TRUNKS,
    clone_params,
    fast_plugins,
    hat_net,
    make_stream,
    mlp_trunk,
    quiet_evaluator,
)

pytestmark = pytest.mark.usefixtures("one_thread")

N_TASKS = 3
REAL_CLIP = hat_module.clip_grad_norm
REAL_AFTER_BACKWARD = HATPlugin.after_backward
STEPS = N_TASKS * 2 * 4  # 64 samples / batch 16, 2 epochs


class _Spy:
    """Counts HAT's exact clipping passes and the steps whose gradients they scaled, and
    the steps that used the ∂L/∂z hook (``rows``) or the zero fill (``fills``)."""

    def __init__(self, monkeypatch):
        self.exact_clips = 0  # exact norm computations
        self.scaled = 0  # of which the norm was above max_norm (gradients scaled)
        self.rows = self.fills = 0
        real = REAL_CLIP
        real_after_backward = REAL_AFTER_BACKWARD

        def after_backward(plugin, strategy, **kw):
            self.rows += any(not layer.rows_missed for layer, _ in plugin._shortcuts.rows)
            self.fills += any(p.grad is not None for p, _, _ in plugin._shortcuts.fills)
            return real_after_backward(plugin, strategy, **kw)

        monkeypatch.setattr(HATPlugin, "after_backward", after_backward)

        def counting(params, max_norm):
            params = list(params)
            self.exact_clips += 1
            grads = [p.grad for p in params if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
            self.scaled += float(norm) > max_norm
            return real(params, max_norm)

        monkeypatch.setattr(hat_module, "clip_grad_norm", counting)


def _train(trunk_name, opt_name, fast, monkeypatch, *, clipgrad=10000.0, soft=False,
           extra=(), by_size=False):
    if not by_size:  # every layer takes the ∂L/∂z shortcuts, however small (the default
        # skips them where they cost more than they save: test_shortcuts_run_where_they_pay)
        monkeypatch.setattr(fast_paths, "SHORTCUT_GAIN", 0.0)
    torch.manual_seed(0)
    make_trunk, shape = ALL_TRUNKS[trunk_name]
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
    return clone_params(model), spy


def _assert_identical(a: dict, b: dict) -> None:
    """Bit for bit (float32 compared as int32: +0 and -0 differ too)."""
    assert a.keys() == b.keys()
    differ = [n for n in a if not torch.equal(a[n].view(torch.int32), b[n].view(torch.int32))]
    assert not differ, f"parameters differ between fast and reference paths: {differ}"


@pytest.mark.parametrize("fill", ["default", "all"])
@pytest.mark.parametrize("trunk_name", sorted(TRUNKS))
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_fast_paths_give_bit_identical_parameters(trunk_name, opt_name, fill, monkeypatch):
    if fill == "all":  # every binary factor not hooked takes the zero-fill route
        monkeypatch.setattr(fast_paths, "FILL_MAX_FRACTION", 1.0)
        monkeypatch.setattr(fast_paths, "FILL_MIN_ELEMENTS", 0)
    ref, ref_spy = _train(trunk_name, opt_name, False, monkeypatch)
    fast, fast_spy = _train(trunk_name, opt_name, True, monkeypatch)
    _assert_identical(ref, fast)
    assert ref_spy.exact_clips == STEPS and ref_spy.rows == ref_spy.fills == 0
    assert fast_spy.exact_clips == 0  # every step proved the norm below 10000
    # the conditioning shortcuts ran: the MLP's first layer through ∂L/∂z (a conv's ∂L/∂z
    # is the larger: no hook), and the zero fill where forced
    assert (fast_spy.rows > 0) == (trunk_name == "mlp")
    if fill == "all":
        assert fast_spy.fills > 0


@pytest.mark.parametrize("trunk_name", sorted(TRUNKS))
def test_size_policy_gives_bit_identical_parameters(trunk_name, monkeypatch):
    """The default policy (shortcuts by size) on the small test trunks: some layers take
    a shortcut, others not; the parameters are those of the reference operations."""
    ref, _ = _train(trunk_name, "adam", False, monkeypatch, by_size=True)
    fast, spy = _train(trunk_name, "adam", True, monkeypatch, by_size=True)
    _assert_identical(ref, fast)
    # no layer of these trunks is large enough for the clipping bound: exact clipping
    assert spy.exact_clips == STEPS


@pytest.mark.parametrize("forced", [False, True])
@pytest.mark.parametrize("trunk_name", sorted(RESNETS))
def test_fast_paths_are_bit_identical_on_resnets(trunk_name, forced, monkeypatch):
    """Residual sums, shared gates and per-task norms: the shortcuts (by size, or forced on
    every layer) give the reference operations' parameters bit for bit."""
    ref, _ = _train(trunk_name, "adamw", False, monkeypatch, by_size=not forced)
    fast, spy = _train(trunk_name, "adamw", True, monkeypatch, by_size=not forced)
    _assert_identical(ref, fast)
    if forced:  # every layer bounded: the clipping pass was proved unnecessary each step
        assert spy.exact_clips == 0


@pytest.mark.parametrize(
    ("widths", "batch", "rows", "bounded"),
    [
        ((64, 100, 100), 64, False, []),  # the embedded digits MLP: no shortcut pays
        ((784, 800, 800), 64, True, [0, 1]),  # the paper-size MLP: all pay
        ((784, 800, 800), 512, False, []),  # large batches: ∂L/∂z outgrows ∂L/∂W
        ((64, 32, 32), 16, True, []),  # rows: 2·16·32 ≤ 32·64; bound: 2·16·96 > 2048
    ],
)
def test_shortcuts_run_where_they_pay(widths, batch, rows, bounded):
    """A layer takes the ∂L/∂z hook (rows) and the clipping bound only when the elements
    they read (∂L/∂z, and x for the bound), times SHORTCUT_GAIN, are at most the weight's."""
    layers = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = hat_net(nn.Sequential(*layers), (widths[0],))
    for layer in model.gated_layers:  # a task trained: half the units protected
        layer.cumulative[: layer.units // 2] = 1.0
    plugin = HATPlugin()
    plugin._layers = list(model.gated_layers)
    plugin._params = list(model.parameters())
    plugin._plan_conditioning(model, True, batch)
    assert [layer.sample_sizes for layer in model.gated_layers] == list(
        zip(widths[:-1], widths[1:], strict=True))
    assert (model.gated_layers[0].row_grad_factor is not None) == rows
    assert [i for i, layer in enumerate(model.gated_layers)
            if layer.grad_bounds is not None] == bounded
    assert plugin._shortcuts.active == (rows or bool(bounded))


@pytest.mark.parametrize(("width", "filled"), [(100, False), (800, True)])
def test_only_large_gradients_are_zero_filled(width, filled):
    """A binary factor with few zeros is applied by a fill only on a gradient of at least
    FILL_MIN_ELEMENTS entries; a smaller one is multiplied (in the step's one product call)."""
    model = hat_net(nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, width),
                                  nn.ReLU()), (8,))
    for layer in model.gated_layers:  # a task trained: 10 % of the units protected
        layer.cumulative[: layer.units // 10] = 1.0
    plugin = HATPlugin()
    plugin._layers = list(model.gated_layers)
    plugin._params = list(model.parameters())
    plugin._plan_conditioning(model, True, 64)
    second = model.gated_layers[1].weight
    assert any(p is second for p, _, _ in plugin._shortcuts.fills) == filled
    assert any(p is second for p, _ in plugin._shortcuts.multiply) == (not filled)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
       soft=st.booleans(), seed=st.integers(0, 2**16))
@example(data=None, shape=[10], soft=False, seed=0)  # exactly 20 % protected (k = 2 below)
@example(data=None, shape=[10], soft=False, seed=1)  # just over 20 % (k = 3 below)
def test_protected_entries_are_the_zeros_of_a_binary_factor(data, shape, soft, seed):
    numel = math.prod(shape)
    if data is None:
        k = 2 + seed
    else:
        k = data.draw(st.integers(0, numel), label="zeros")
    g = torch.Generator().manual_seed(seed)
    f = torch.ones(numel)
    f[torch.randperm(numel, generator=g)[:k]] = 0.0
    f = f.view(shape)
    if soft:
        f = f * 0.5 + 0.25  # values in (0, 1): not binary
    idx = protected_entries(f)
    if soft or k / numel > fast_paths.FILL_MAX_FRACTION:
        assert idx is None
        return
    assert idx is not None and len(idx) == k
    grad = torch.randn(shape, generator=g)
    filled = grad.clone().view(-1).index_fill_(0, idx, 0.0).view(shape)
    assert torch.equal(filled, grad * f)


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


@pytest.mark.parametrize("batch,hooked", [(8, True), (40, False)])
def test_row_hook_applies_only_while_dz_is_the_smaller_gradient(batch, hooked):
    """A layer given a row factor conditions ∂L/∂z while B·units ≤ its weight count (here
    8·5 ≤ 40 < 40·5); a larger batch is left to the weight pass (``rows_missed``)."""
    torch.manual_seed(0)
    lin, plain = HATLinear(8, 5), nn.Linear(8, 5)
    plain.load_state_dict({k: v for k, v in lin.state_dict().items() if k in ("weight", "bias")})
    lin.train()
    lin.current_gate = plain_gate = torch.rand(5)
    factor = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0])
    lin.row_grad_factor = factor
    x = torch.randn(batch, 8)
    (lin(x) ** 2).sum().backward()
    ((plain(x) * plain_gate) ** 2).sum().backward()
    assert lin.rows_missed == (not hooked)
    expected = plain.weight.grad * factor.view(-1, 1) if hooked else plain.weight.grad
    assert torch.equal(lin.weight.grad, expected)


def test_conv_first_layer_is_planned_for_the_fill_or_the_weight_pass(monkeypatch):
    """∂L/∂z of a conv layer (batch × channels × maps) outweighs its kernel: no hook."""
    spy = {}
    real = HATPlugin.before_training_exp

    def record(plugin, strategy, **kw):
        real(plugin, strategy, **kw)
        spy[plugin.task] = strategy.model.gated_layers[0].row_grad_factor

    monkeypatch.setattr(HATPlugin, "before_training_exp", record)
    _train("conv", "sgd", True, monkeypatch)
    assert list(spy) == [0, 1, 2] and all(f is None for f in spy.values())


def test_clipping_near_the_norm_clips_exactly_on_both_paths(monkeypatch):
    # at clipgrad 2 some steps need clipping and some are proved below: both kinds occur
    ref, ref_spy = _train("mlp", "sgd", False, monkeypatch, clipgrad=2.0)
    fast, fast_spy = _train("mlp", "sgd", True, monkeypatch, clipgrad=2.0)
    _assert_identical(ref, fast)
    assert fast_spy.scaled == ref_spy.scaled > 0  # no step that needed clipping was skipped
    assert 0 < fast_spy.exact_clips < STEPS  # and some were skipped by the bound


def test_soft_masks_take_the_reference_conditioning(monkeypatch):
    ref, _ = _train("mlp", "adam", False, monkeypatch, soft=True)
    fast, fast_spy = _train("mlp", "adam", True, monkeypatch, soft=True)
    _assert_identical(ref, fast)
    # non-binary factors: neither the hook nor the fill; the clipping bound still holds
    assert fast_spy.rows == fast_spy.fills == 0 and fast_spy.exact_clips == 0


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
    monkeypatch.setattr(fast_paths, "SHORTCUT_GAIN", 0.0)  # shortcuts on these small layers
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
    assert conv.grad_bounds[0] == math.inf  # the plugin clips exactly
