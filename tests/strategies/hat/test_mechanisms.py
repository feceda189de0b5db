"""HAT's mechanisms against hand computation (hat-reference §1).

s annealing, the attention regulariser, gradient conditioning, embedding-gradient
compensation with its cosh clamp, the embedding clamp, gradient clipping, the cumulative mask
and the configuration checks; where it matters, both the formula and what the plugin really
does during training.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from avalanche.core import SupervisedPlugin
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from strategies import (
    HAT,
    ConfigError,
    HATConfig,
    HATError,
    HATLinear,
    HATNet,
    anneal_s,
    attention_regulariser,
    compensation_factor,
)
from tests.support.trunks import (
    CONV_SHAPE,
    MLP_SHAPE,
    conv_trunk,
    fast_plugins,
    flushing_denormals,
    hat_net,
    keep_subnormals,  # noqa: F401  (autouse fixture)
    make_stream,
    mlp_trunk,
    quiet_evaluator,
)

EXAMPLES = settings(max_examples=60, deadline=None)


def _hand_s(smax: float, progress: float) -> float:
    return 1 / smax + (smax - 1 / smax) * progress


# ----------------------------------------------------------------- s annealing
smaxes = st.floats(min_value=1.0, max_value=2000, allow_nan=False)  # smax >= 1: s rises
sizes = st.tuples(st.integers(1, 3000), st.integers(1, 256))


@EXAMPLES
@given(smax=smaxes, size=sizes, mode=st.sampled_from(["reference", "paper"]))
def test_anneal_first_batch_is_exactly_one_over_smax(smax, size, mode):
    n, bs = size
    assert anneal_s(0, math.ceil(n / bs), n, bs, smax, mode) == 1 / smax


@EXAMPLES
@given(smax=smaxes, size=sizes)
def test_anneal_paper_mode_reaches_smax_on_the_last_batch(smax, size):
    n, bs = size
    n_batches = math.ceil(n / bs)
    last = anneal_s(n_batches - 1, n_batches, n, bs, smax, "paper")
    if n_batches > 1:
        assert math.isclose(last, smax, rel_tol=1e-12)
        mid = n_batches // 2
        assert math.isclose(
            anneal_s(mid, n_batches, n, bs, smax, "paper"),
            _hand_s(smax, mid / (n_batches - 1)), rel_tol=1e-12,
        )
    else:  # a single batch: (b-1)/(B-1) is 0/0, the implementation uses progress 0
        assert last == 1 / smax


@EXAMPLES
@given(smax=smaxes, size=sizes)
def test_anneal_reference_mode_uses_sample_index_over_n(smax, size):
    n, bs = size
    n_batches = math.ceil(n / bs)
    for b in {0, n_batches // 2, n_batches - 1}:
        i = b * bs  # index of the batch's first sample in the epoch
        got = anneal_s(b, n_batches, n, bs, smax, "reference")
        assert math.isclose(got, _hand_s(smax, i / n), rel_tol=1e-12, abs_tol=1e-15)
    if n_batches > 1 and smax > 1.001:  # the reference never quite reaches smax in training
        assert anneal_s(n_batches - 1, n_batches, n, bs, smax, "reference") < smax


@EXAMPLES
@given(smax=smaxes, size=sizes, mode=st.sampled_from(["reference", "paper"]))
def test_anneal_positive_bounded_and_monotone_within_an_epoch(smax, size, mode):
    n, bs = size
    n_batches = math.ceil(n / bs)
    values = [anneal_s(b, n_batches, n, bs, smax, mode) for b in range(n_batches)]
    assert all(v > 0 for v in values)  # the 0-based/1-based bug gives a negative first s
    assert all(v <= smax * (1 + 1e-12) for v in values)
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))


class SRecorder(SupervisedPlugin):
    """Records, for every training forward: batch index in the epoch, batch size, model.s,
    and whether the gates the model used are sigmoid(s·e) of the current task."""

    def __init__(self):
        super().__init__()
        self.epochs: list[list[tuple[int, int, float, bool]]] = []

    def before_training_epoch(self, strategy, **kwargs):
        self.epochs.append([])

    def after_forward(self, strategy, **kwargs):
        hat = strategy.model
        task = int(strategy.mb_task_id[0])
        gates_match = all(
            torch.equal(g, torch.sigmoid(hat.s * layer.embedding(task)))
            for g, layer in zip(hat.last_gates, hat.gated_layers, strict=True)
        )
        self.epochs[-1].append((len(self.epochs[-1]), len(strategy.mb_x), hat.s, gates_match))


@pytest.mark.parametrize("mode", ["reference", "paper"])
def test_plugin_sets_s_per_batch_as_the_formula_says(mode):
    torch.manual_seed(0)
    n, bs, smax = 40, 16, 50.0  # batches of 16, 16, 8
    bm, _, _ = make_stream(2, MLP_SHAPE, n_train=n)
    model = hat_net(mlp_trunk(), MLP_SHAPE)
    rec = SRecorder()
    strategy = HAT(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), smax=smax,
        anneal=mode, train_mb_size=bs, train_epochs=2, plugins=fast_plugins(rec),
        evaluator=quiet_evaluator(),
    )
    for exp in bm.train_stream:
        strategy.train(exp)
        assert model.s == smax  # restored for evaluation / mask extraction
    n_batches = math.ceil(n / bs)
    assert len(rec.epochs) == 4
    for epoch in rec.epochs:
        assert [b for b, *_ in epoch] == list(range(n_batches))
        first_sample = 0
        for b, size, s, gates_match in epoch:
            progress = first_sample / n if mode == "reference" else b / (n_batches - 1)
            assert math.isclose(s, _hand_s(smax, progress), rel_tol=1e-12), (b, s)
            assert gates_match
            first_sample += size
        assert epoch[0][2] == 1 / smax  # restarted every epoch


class EvalGateRecorder:
    """Forward hooks on the gated layers recording the gate each one applied."""

    def __init__(self, model: HATNet):
        self.gates: list[list[torch.Tensor]] = [[] for _ in model.gated_layers]
        self.handles = [
            layer.register_forward_hook(
                lambda mod, inp, out, i=i: self.gates[i].append(mod.current_gate.clone())
            )
            for i, layer in enumerate(model.gated_layers)
        ]

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("soft", [False, True])
def test_evaluation_uses_smax_and_binary_masks(soft):
    torch.manual_seed(0)
    smax = 30.0
    bm, _, test = make_stream(2, MLP_SHAPE)
    model = hat_net(mlp_trunk(), MLP_SHAPE)
    strategy = HAT(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), smax=smax,
        soft_masks=soft, train_mb_size=16, train_epochs=1, plugins=fast_plugins(),
        evaluator=quiet_evaluator(),
    )
    for exp in bm.train_stream:
        strategy.train(exp)
    model.s = 0.123  # a stale training s must not matter in evaluation
    hooks = EvalGateRecorder(model)
    try:
        strategy.eval(bm.test_stream)
    finally:
        hooks.remove()
    for i, layer in enumerate(model.gated_layers):
        seen = hooks.gates[i]
        assert seen  # the evaluation went through the gated layers
        expected = [
            torch.sigmoid(smax * layer.embedding(t).detach()) if soft
            else (layer.embedding(t).detach() > 0).float()
            for t in (0, 1)
        ]
        for g in seen:
            assert any(torch.equal(g, e) for e in expected)
        if not soft:
            assert all(bool(((g == 0) | (g == 1)).all()) for g in seen)
        assert any(torch.equal(g, expected[0]) for g in seen)
        assert any(torch.equal(g, expected[1]) for g in seen)


# -------------------------------------------------------------- regulariser
def test_attention_regulariser_first_task_is_mean_gate_over_all_units():
    gates = [torch.tensor([0.2, 0.4]), torch.tensor([0.6, 0.8, 1.0])]
    cum = [torch.zeros(2), torch.zeros(3)]
    # mean over all 5 units (joint), not the mean of per-layer means (0.55)
    assert math.isclose(float(attention_regulariser(gates, cum)), 3.0 / 5, rel_tol=1e-6)


def test_attention_regulariser_later_task_joint_normalisation():
    gates = [torch.tensor([0.2, 0.4]), torch.tensor([0.6, 0.8, 0.1])]
    cum = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0, 0.5])]
    # num = 0.2·0 + 0.4·1 + 0.6·1 + 0.8·0 + 0.1·0.5 = 1.05 ; den = 0 + 1 + 1 + 0 + 0.5 = 2.5
    assert math.isclose(float(attention_regulariser(gates, cum)), 1.05 / 2.5, rel_tol=1e-6)


def test_attention_regulariser_no_free_unit_is_zero_with_finite_gradient():
    e = [torch.randn(3, requires_grad=True), torch.randn(2, requires_grad=True)]
    gates = [torch.sigmoid(x) for x in e]
    r = attention_regulariser(gates, [torch.ones(3), torch.ones(2)])
    assert float(r.detach()) == 0.0
    r.backward()
    assert all(x.grad is None or bool((x.grad == 0).all()) for x in e)


unit_vals = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@EXAMPLES
@given(data=st.data(), widths=st.lists(st.integers(1, 6), min_size=1, max_size=3))
def test_attention_regulariser_matches_hand_formula(data, widths):
    gates = [data.draw(st.lists(unit_vals, min_size=w, max_size=w)) for w in widths]
    cum = [data.draw(st.lists(unit_vals, min_size=w, max_size=w)) for w in widths]
    num = sum(g * (1 - m) for gl, ml in zip(gates, cum, strict=True)
              for g, m in zip(gl, ml, strict=True))
    den = sum(1 - m for ml in cum for m in ml)
    got = float(attention_regulariser(
        [torch.tensor(g, dtype=torch.float64) for g in gates],
        [torch.tensor(m, dtype=torch.float64) for m in cum],
    ))
    expected = num / den if den > 0 else 0.0
    assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12)
    assert -1e-12 <= got <= 1 + 1e-12


class LossRecorder(SupervisedPlugin):
    """The loss before HAT adds c·R (own before_backward, which runs first) and after it,
    with R recomputed by hand from the gates of this forward and the cumulative masks."""

    def __init__(self):
        super().__init__()
        self.rows: list[tuple[float, float, float]] = []
        self._ce = 0.0

    def before_backward(self, strategy, **kwargs):
        self._ce = float(strategy.loss.detach())

    def after_backward(self, strategy, **kwargs):
        hat = strategy.model
        r = attention_regulariser([g.detach() for g in hat.last_gates], hat.cumulative_masks())
        self.rows.append((self._ce, float(strategy.loss.detach()), float(r)))


def _two_tasks(recorder, trunk: Callable[[], nn.Module], shape, lr: float, **options):
    """A stream of 2 tasks (32 training samples each), a HAT network on ``trunk()`` and a HAT
    strategy training it by SGD(``lr``) in batches of 16 with ``recorder`` among its plugins
    (``options``: HAT's other arguments); returns (stream, model, strategy)."""
    bm, _, _ = make_stream(2, shape, n_train=32)
    model = hat_net(trunk(), shape)
    strategy = HAT(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=lr), train_mb_size=16,
        plugins=fast_plugins(recorder), evaluator=quiet_evaluator(), **options,
    )
    return bm, model, strategy


@pytest.mark.parametrize("c", [0.0, 0.75, 2.5])
def test_training_loss_is_cross_entropy_plus_c_times_regulariser(c):
    torch.manual_seed(0)
    rec = LossRecorder()
    bm, model, strategy = _two_tasks(rec, mlp_trunk, MLP_SHAPE, lr=0.1, c=c, smax=20.0,
                                     train_epochs=2)
    for exp in bm.train_stream:
        strategy.train(exp)
    assert len(rec.rows) == 8
    for ce, total, r in rec.rows:
        assert math.isclose(total, ce + c * r, rel_tol=1e-5, abs_tol=1e-7)
    assert all(r > 0 for _, _, r in rec.rows)


# ------------------------------------------------------------- conditioning
def _factors_by_param(model: HATNet) -> dict[int, torch.Tensor]:
    return {id(p): f for p, f in model.conditioning_factors()}


def test_conditioning_factors_linear_chain_every_entry():
    trunk = nn.Sequential(HATLinear(3, 2), nn.ReLU(), HATLinear(2, 2), nn.ReLU())
    model = HATNet(trunk, (3,), [2])
    l1, l2 = model.gated_layers
    a1, a2 = [0.2, 0.9], [0.5, 0.1]
    l1.cumulative.copy_(torch.tensor(a1))
    l2.cumulative.copy_(torch.tensor(a2))
    f = _factors_by_param(model)
    # first gated layer (ungated input): 1 - a_out for every weight of the row, and the bias
    for i in range(2):
        for j in range(3):
            assert math.isclose(float(f[id(l1.weight)][i, j]), 1 - a1[i], rel_tol=1e-6)
        assert math.isclose(float(f[id(l1.bias)][i]), 1 - a1[i], rel_tol=1e-6)
    # second layer: 1 - min(a_out_i, a_in_j); bias 1 - a_out_i
    for i in range(2):
        for j in range(2):
            want = 1 - min(a2[i], a1[j])
            assert math.isclose(float(f[id(l2.weight)][i, j]), want, rel_tol=1e-6), (i, j)
        assert math.isclose(float(f[id(l2.bias)][i]), 1 - a2[i], rel_tol=1e-6)
    assert f[id(l1.weight)].shape == l1.weight.shape
    assert f[id(l2.weight)].shape == l2.weight.shape
    # heads and embeddings are never conditioned
    conditioned = set(f)
    assert not conditioned & {id(p) for p in model.heads.parameters()}
    assert not conditioned & {id(layer.embedding(0)) for layer in model.gated_layers}


def test_conditioning_factors_conv_flatten_linear_inherit_channel_gate():
    model = hat_net(conv_trunk(), CONV_SHAPE, head_sizes=[2])
    conv, lin = model.gated_layers  # conv 1→4 (3x3) → pool → 4·3·3 = 36 → linear 16
    g = torch.Generator().manual_seed(3)
    a_conv = torch.rand(4, generator=g)
    a_lin = torch.rand(16, generator=g)
    conv.cumulative.copy_(a_conv)
    lin.cumulative.copy_(a_lin)
    f = _factors_by_param(model)
    fw = f[id(conv.weight)]
    assert fw.shape == conv.weight.shape
    for o in range(4):
        assert bool((fw[o] == 1 - a_conv[o]).all())  # broadcast over input and kernel
        assert math.isclose(float(f[id(conv.bias)][o]), float(1 - a_conv[o]), rel_tol=1e-6)
    fl = f[id(lin.weight)]
    assert fl.shape == (16, 36)
    for i in range(16):
        for col in range(36):
            channel = col // 9  # flatten is channel-major: 9 columns per channel
            want = 1 - min(float(a_lin[i]), float(a_conv[channel]))
            assert math.isclose(float(fl[i, col]), want, rel_tol=1e-6), (i, col)
        assert math.isclose(float(f[id(lin.bias)][i]), float(1 - a_lin[i]), rel_tol=1e-6)


class GradRecorder(SupervisedPlugin):
    """Gradients before HAT's after_backward (raw) and just before the optimizer step."""

    def __init__(self):
        super().__init__()
        self.raw: list[dict[str, torch.Tensor | None]] = []
        self.final: list[dict[str, torch.Tensor | None]] = []
        self.s: list[float] = []
        self.emb: list[dict[str, torch.Tensor]] = []

    @staticmethod
    def _grads(model):
        return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}

    def after_backward(self, strategy, **kwargs):  # runs before HAT's (HAT is appended last)
        self.raw.append(self._grads(strategy.model))
        self.s.append(strategy.model.s)
        self.emb.append({n: p.detach().clone() for n, p in strategy.model.named_parameters()})

    def before_update(self, strategy, **kwargs):
        self.final.append(self._grads(strategy.model))


def test_training_step_conditions_and_compensates_gradients():
    """In a real second-task step: weight/bias grads × (1 − min(...)), current embeddings ×
    the compensation factor, everything else untouched, old tasks' parameters no gradient."""
    torch.manual_seed(0)
    smax = 40.0
    rec = GradRecorder()
    bm, model, strategy = _two_tasks(rec, conv_trunk, CONV_SHAPE, lr=0.05, smax=smax,
                                     train_epochs=1)
    strategy.train(bm.train_stream[0])
    factors = {id(p): f for p, f in model.conditioning_factors()}
    assert any(bool((f == 0).any()) for f in factors.values())  # something is protected
    rec.raw.clear(), rec.final.clear(), rec.s.clear(), rec.emb.clear()
    strategy.train(bm.train_stream[1])
    params = dict(model.named_parameters())
    assert len(rec.raw) == len(rec.final) == 2
    for raw, final, s, emb in zip(rec.raw, rec.final, rec.s, rec.emb, strict=True):
        for name, p in params.items():
            if name.startswith("heads.0.") or name.endswith("embeddings.0"):
                assert raw[name] is None or bool((raw[name] == 0).all()), name
                assert final[name] is None or bool((final[name] == 0).all()), name
            elif id(p) in factors:
                assert torch.equal(final[name], raw[name] * factors[id(p)]), name
            elif name.endswith("embeddings.1"):
                cf = compensation_factor(emb[name], s, smax)
                assert torch.allclose(final[name], raw[name] * cf, rtol=1e-6, atol=0), name
            else:  # the current head
                assert torch.equal(final[name], raw[name]), name


# ------------------------------------------------------------- compensation
@EXAMPLES
@given(
    e=st.lists(st.floats(-6, 6, allow_nan=False), min_size=1, max_size=8),
    smax=st.floats(1, 800),
    frac=st.floats(0, 1),
)
def test_compensation_factor_matches_hand_formula(e, smax, frac):
    s = _hand_s(smax, frac)
    et = torch.tensor(e, dtype=torch.float64)
    got = compensation_factor(et, s, smax)
    assert et.tolist() == e  # the embedding itself is left alone
    for value, x in zip(got.tolist(), e, strict=True):
        z = max(-50.0, min(50.0, s * x))
        want = smax / s * (math.cosh(z) + 1) / (math.cosh(x) + 1)
        assert math.isclose(value, want, rel_tol=1e-9)


def test_compensation_factor_cosh_clamp_keeps_large_values_finite():
    smax = s = 400.0
    e = torch.tensor([6.0, -6.0, 0.5], dtype=torch.float32)  # s·e = ±2400: cosh overflows
    assert not torch.isfinite(torch.cosh(s * e[:2])).any()
    got = compensation_factor(e, s, smax)
    assert torch.isfinite(got).all()
    want = (math.cosh(50.0) + 1) / (math.cosh(6.0) + 1)  # clamped at thres_cosh = 50
    assert math.isclose(float(got[0]), want, rel_tol=1e-5)
    assert math.isclose(float(got[1]), want, rel_tol=1e-5)
    # a different threshold changes the clamp point
    got10 = compensation_factor(e, s, smax, thres_cosh=10.0)
    assert math.isclose(float(got10[0]), (math.cosh(10.0) + 1) / (math.cosh(6.0) + 1),
                        rel_tol=1e-5)


# ------------------------------------------- embedding clamp and clipping
def test_embeddings_clamped_after_each_step():
    torch.manual_seed(0)
    thres = 2.5
    bm, _, _ = make_stream(1, MLP_SHAPE, n_train=32)
    model = hat_net(mlp_trunk(), MLP_SHAPE, head_sizes=[2])
    emb = [layer.embedding(0) for layer in model.gated_layers]
    emb_ids = {id(p) for p in emb}
    others = [p for p in model.parameters() if id(p) not in emb_ids]
    optimizer = torch.optim.SGD([{"params": emb, "lr": 1e4}, {"params": others, "lr": 1e-3}])

    def largest() -> float:
        return max(float(p.detach().abs().max()) for p in emb)

    class EmbRecorder(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.values: list[float] = []

        def before_update(self, strategy, **kwargs):  # previous step's result, before this one
            self.values.append(largest())

    rec = EmbRecorder()
    strategy = HAT(
        model=model, optimizer=optimizer, thres_emb=thres, train_mb_size=8, train_epochs=1,
        plugins=fast_plugins(rec), evaluator=quiet_evaluator(),
    )
    strategy.train(bm.train_stream[0])
    assert len(rec.values) == 4
    assert largest() == thres  # the huge step pushed some entry to the clamp, not beyond
    assert all(v <= thres for v in rec.values[1:])


@pytest.mark.parametrize("clipgrad", [1e-3, 0.05])
def test_global_gradient_norm_clipped_after_compensation(clipgrad):
    torch.manual_seed(0)
    rec = GradRecorder()
    bm, model, strategy = _two_tasks(rec, mlp_trunk, MLP_SHAPE, lr=0.01, clipgrad=clipgrad,
                                     train_epochs=1)
    for exp in bm.train_stream:
        strategy.train(exp)

    def norm(grads):
        return math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads.values()
                             if g is not None))

    assert len(rec.final) == 4
    for raw, final in zip(rec.raw, rec.final, strict=True):
        assert norm(raw) > clipgrad  # clipping had something to do
        assert math.isclose(norm(final), clipgrad, rel_tol=1e-4)


# ----------------------------------------------------------- cumulative
@pytest.mark.parametrize("soft", [False, True])
def test_cumulative_mask_is_elementwise_max_after_each_experience(soft):
    torch.manual_seed(0)
    smax = 20.0
    bm, _, _ = make_stream(3, MLP_SHAPE, n_train=32)
    model = hat_net(mlp_trunk(), MLP_SHAPE)
    strategy = HAT(
        model=model, optimizer=torch.optim.Adam(model.parameters(), lr=0.01), smax=smax,
        soft_masks=soft, train_mb_size=16, train_epochs=1, plugins=fast_plugins(),
        evaluator=quiet_evaluator(),
    )
    assert all(bool((m == 0).all()) for m in model.cumulative_masks())  # a^{<0} = 0
    grew = False
    for t, exp in enumerate(bm.train_stream):
        before = [m.clone() for m in model.cumulative_masks()]
        strategy.train(exp)
        for layer, prev in zip(model.gated_layers, before, strict=True):
            e = layer.embedding(t).detach()
            mask = torch.sigmoid(smax * e) if soft else (e > 0).float()
            assert torch.equal(layer.cumulative, torch.maximum(prev, mask))
            grew |= not torch.equal(layer.cumulative, prev)
    assert grew


# --------------------------------------------------------------- config
@given(smax=st.one_of(st.floats(max_value=0.0), st.just(math.inf), st.just(math.nan)))
@settings(max_examples=30, deadline=None)
def test_config_rejects_bad_smax(smax):
    with pytest.raises(ConfigError, match="smax"):
        HATConfig(smax=smax)


@given(c=st.one_of(st.floats(max_value=-1e-300), st.just(math.inf), st.just(math.nan)))
@settings(max_examples=30, deadline=None)
def test_config_rejects_bad_c(c):
    with pytest.raises(ConfigError, match=r"hat\.c\b"):
        HATConfig(c=c)


def test_config_errors_reach_the_strategy_and_plugin():
    model = hat_net(mlp_trunk(), MLP_SHAPE)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="smax"):
        HAT(model=model, optimizer=opt, smax=0.0)
    with pytest.raises(ConfigError, match=r"hat\.c\b"):
        HAT(model=model, optimizer=opt, c=-0.5)
    with pytest.raises(ConfigError, match="anneal"):
        HATConfig(anneal="linear")
    for name in ("clipgrad", "thres_cosh", "thres_emb"):
        with pytest.raises(ConfigError, match=name):
            HATConfig(**{name: 0.0})
    HATConfig(smax=1e-3, c=0.0)  # the boundaries themselves are legal


# -------------------------------------------------------- floating-point mode
@pytest.mark.parametrize("caller_flushes", [False, True])
def test_denormal_flushing_is_limited_to_training(caller_flushes):
    """HAT flushes denormals on CPU while it trains (speed), and leaves the caller's mode as
    it found it (later code, e.g. hypothesis, needs subnormal floats)."""
    torch.set_flush_denormal(caller_flushes)
    try:
        assert flushing_denormals() == caller_flushes

        class Probe(SupervisedPlugin):
            def __init__(self):
                super().__init__()
                self.seen: list[bool] = []

            def after_forward(self, strategy, **kwargs):
                self.seen.append(flushing_denormals())

        probe = Probe()
        bm, _, _ = make_stream(2, MLP_SHAPE, n_train=16)
        model = hat_net(mlp_trunk(), MLP_SHAPE)
        strategy = HAT(
            model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=8,
            plugins=fast_plugins(probe), evaluator=quiet_evaluator(),
        )
        strategy.train(bm.train_stream[0])
        assert flushing_denormals() == caller_flushes
        with pytest.raises(HATError):  # a refused experience does not leak the mode either
            strategy.train(bm.train_stream[0])
        assert flushing_denormals() == caller_flushes
        assert probe.seen and all(probe.seen)
    finally:
        torch.set_flush_denormal(False)
