"""The lean training loop, plain SGD's step and clipping: same callbacks, same numbers."""

from __future__ import annotations

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training import Naive
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from strategies import HAT, GradientClipPlugin, TrainingRecipePlugin
from strategies.training.lean_loop import SGD, clip_grad_norm, lean_training_epoch, use_lean_loop
from tests.support.trunks import (
    MLP_SHAPE,
    fast_plugins,
    hat_net,
    make_stream,
    mlp_trunk,
    multihead_net,
    quiet_evaluator,
)

pytestmark = pytest.mark.usefixtures("one_thread")

#: every callback of Avalanche's SupervisedPlugin that a training run fires
EVENTS = [
    "before_training", "before_training_exp", "before_train_dataset_adaptation",
    "after_train_dataset_adaptation", "before_training_epoch", "before_training_iteration",
    "before_forward", "after_forward", "before_backward", "after_backward",
    "before_update", "after_update", "after_training_iteration", "after_training_epoch",
    "after_training_exp", "after_training",
]


class Recorder(SupervisedPlugin):
    """Records every callback with what the strategy holds at that moment."""

    def __init__(self):
        super().__init__()
        self.log: list[tuple] = []


def _recording(event):
    def hook(self, strategy, **kwargs):
        loss = getattr(strategy, "loss", None)
        value = float(loss.detach().sum()) if torch.is_tensor(loss) else None
        self.log.append((event, tuple(sorted(kwargs)), value))
    return hook


for _event in EVENTS:
    setattr(Recorder, _event, _recording(_event))


class OnlyBackward(SupervisedPlugin):
    """Overrides one callback: the lean loop must still call it (and only it)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def before_backward(self, strategy, **kwargs):
        self.calls += 1
        strategy.loss = strategy.loss + 0.0


def _run(lean: bool, extra=(), opt: str = "sgd", hat: bool = False):
    torch.manual_seed(0)
    model = (hat_net(mlp_trunk(), MLP_SHAPE) if hat else multihead_net(mlp_trunk(), MLP_SHAPE))
    params = model.parameters()
    optimizer = {"sgd": lambda: torch.optim.SGD(params, lr=0.1),
                 "lean-sgd": lambda: SGD(params, lr=0.1),
                 "momentum": lambda: SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3),
                 "adam": lambda: torch.optim.Adam(params, lr=0.01)}[opt]()
    rec = Recorder()
    plugins = fast_plugins(rec, TrainingRecipePlugin(valid_fraction=0.25, patience=1), *extra)
    kw = dict(model=model, optimizer=optimizer, train_mb_size=16, train_epochs=3,
              eval_mb_size=64, plugins=plugins, evaluator=quiet_evaluator())
    strategy = HAT(**kw) if hat else Naive(**kw)
    if lean:
        use_lean_loop(strategy)
    bm, _, _ = make_stream(n_tasks=2, n_train=48)
    for exp in bm.train_stream:
        strategy.train(exp, eval_streams=[])
    return rec.log, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("hat", [False, True], ids=["naive", "hat"])
@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_lean_loop_fires_the_same_callbacks_and_gives_the_same_weights(opt, hat):
    stock_log, stock_w = _run(False, opt=opt, hat=hat)
    lean_log, lean_w = _run(True, opt=opt, hat=hat)
    assert [e for e, *_ in stock_log].count("before_forward") > 0
    assert lean_log == stock_log  # events, their order, kwargs and the loss each one saw
    assert all(torch.equal(a, b) for a, b in zip(stock_w, lean_w, strict=True))


def test_lean_loop_calls_plugins_overriding_one_callback_and_overridden_template_methods():
    only = OnlyBackward()
    log, _ = _run(True, extra=(only,))
    steps = sum(1 for e, *_ in log if e == "before_backward")
    assert only.calls == steps > 0
    # a template method replaced on the instance (e.g. a profiler's wrapper) still runs
    torch.manual_seed(0)
    model = multihead_net(mlp_trunk(), MLP_SHAPE)
    strategy = use_lean_loop(Naive(model=model, optimizer=SGD(model.parameters(), lr=0.1),
                                   train_mb_size=16, train_epochs=1, plugins=fast_plugins(),
                                   evaluator=quiet_evaluator()))
    seen = []
    inner = strategy._before_update
    strategy._before_update = lambda **kw: (seen.append(1), inner(**kw))
    strategy.train(make_stream(n_tasks=1, n_train=48)[0].train_stream[0], eval_streams=[])
    assert len(seen) == 3


def test_use_lean_loop_keeps_a_strategy_s_own_training_epoch():
    class Own(Naive):
        def training_epoch(self, **kwargs):
            return super().training_epoch(**kwargs)

    model = multihead_net(mlp_trunk(), MLP_SHAPE)
    strategy = use_lean_loop(Own(model=model, optimizer=SGD(model.parameters(), lr=0.1)))
    assert "training_epoch" not in vars(strategy)
    naive = use_lean_loop(Naive(model=model, optimizer=SGD(model.parameters(), lr=0.1)))
    assert naive.training_epoch.__func__ is lean_training_epoch


# ------------------------------------------------------------------ SGD
def _step_both(pairs, steps: int, x_shape: tuple[int, int]) -> None:
    """``steps`` optimizer steps of each (model, optimizer) pair on the same random inputs."""
    for _ in range(steps):
        x = torch.randn(*x_shape)
        for m, o in pairs:
            o.zero_grad()
            m(x).pow(2).sum().backward()
            o.step()


@pytest.mark.parametrize("lr", [0.1, 0.05, 1e-3])
def test_sgd_plain_step_equals_torch_sgd_bit_for_bit(lr):
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    b = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    b.load_state_dict(a.state_dict())
    b[2].bias.requires_grad_(False)  # a parameter without gradient is skipped by both
    a[2].bias.requires_grad_(False)
    oa, ob = torch.optim.SGD(a.parameters(), lr=lr), SGD(b.parameters(), lr=lr)
    _step_both(((a, oa), (b, ob)), 5, (8, 20))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_sgd_with_momentum_or_hooks_takes_torch_s_step():
    model = nn.Linear(4, 2)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert not opt._plain()
    plain = SGD(model.parameters(), lr=0.1)
    assert plain._plain()
    for o in (plain, opt):  # hooks run once, on either path
        calls = []
        pre = o.register_step_pre_hook(lambda *a, calls=calls: calls.append("pre"))
        post = o.register_step_post_hook(lambda *a, calls=calls: calls.append("post"))
        model(torch.randn(3, 4)).sum().backward()
        o.step()
        assert calls == ["pre", "post"]
        pre.remove()
        post.remove()
    # momentum: torch's own step, the same numbers as torch.optim.SGD
    torch.manual_seed(0)
    a, b = nn.Linear(4, 2), nn.Linear(4, 2)
    b.load_state_dict(a.state_dict())
    oa = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    ob = SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    _step_both(((a, oa), (b, ob)), 3, (5, 4))
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


# ------------------------------------------------------------------ clipping
@settings(max_examples=60, deadline=None)
@given(scale=st.floats(1e-3, 1e3), max_norm=st.sampled_from([0.5, 1.0, 100.0, 10000.0]),
       seed=st.integers(0, 10_000))
def test_clip_grad_norm_equals_torch_bit_for_bit(scale, max_norm, seed):
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 3), (3,), (2, 2, 2), (1,), (100, 64)]  # one long enough for vector kernels
    grads = [torch.randn(s, generator=g) * scale for s in shapes]
    a = [torch.zeros(s, requires_grad=True) for s in shapes]
    b = [torch.zeros(s, requires_grad=True) for s in shapes]
    for p, q, gr in zip(a, b, grads, strict=True):
        p.grad, q.grad = gr.clone(), gr.clone()
    b.append(torch.zeros(2, requires_grad=True))  # no gradient: ignored by both
    norm_t = torch.nn.utils.clip_grad_norm_(a, max_norm)
    norm = clip_grad_norm(b, max_norm)
    assert torch.equal(norm, norm_t)
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(a, b[:-1], strict=True))


def test_clip_grad_norm_nan_poisons_like_torch_and_plugin_reports_the_norm():
    p = torch.zeros(3, requires_grad=True)
    q = torch.zeros(2, requires_grad=True)
    p.grad = torch.tensor([1.0, float("nan"), 2.0])
    q.grad = torch.tensor([1.0, 1.0])
    clip_grad_norm([p, q], 1.0)
    assert torch.isnan(q.grad).all()  # torch scales every gradient by NaN too
    assert clip_grad_norm([torch.zeros(2, requires_grad=True)], 1.0) is None
    plugin = GradientClipPlugin(1.0)
    model = nn.Linear(2, 1)
    model(torch.ones(1, 2)).sum().backward()

    class S:
        pass

    s = S()
    s.model = model
    plugin.before_update(s)
    assert plugin.last_norm is not None and float(plugin.last_norm) > 0


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), rel=st.sampled_from(
    [-1e-4, -1e-5, -1e-6, -1e-7, 0.0, 1e-7, 1e-6, 1e-5, 1e-4]))
def test_clip_grad_norm_at_the_threshold_equals_torch_bit_for_bit(seed, rel):
    """max_norm within a few float32 steps of the norm: the host-side shortcut must never
    skip a scaling torch performs."""
    g = torch.Generator().manual_seed(seed)
    grads = [torch.randn(s, generator=g) for s in [(100, 64), (100,), (10, 100)]]
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x)
                                                       for x in grads])))
    max_norm = (norm + 1e-6) * (1 + rel)
    a = [torch.zeros_like(x, requires_grad=True) for x in grads]
    b = [torch.zeros_like(x, requires_grad=True) for x in grads]
    for p, q, gr in zip(a, b, grads, strict=True):
        p.grad, q.grad = gr.clone(), gr.clone()
    assert torch.equal(clip_grad_norm(b, max_norm), torch.nn.utils.clip_grad_norm_(a, max_norm))
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(a, b, strict=True))


# ------------------------------------------------------------------ mode switch
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("start", [False, True])
def test_set_training_sets_the_flags_module_train_sets(gated, start):
    import copy

    from benchmark.networks import ModelConfig, build_model
    from strategies.training.lean_loop import set_training

    model = build_model(ModelConfig(family="mlp", hidden=8), (1, 8, 8), [2, 2], gated=gated)
    model.train(start)
    for m in list(model.modules())[::3]:  # mixed flags, as after a partial switch
        m.training = not start
    for mode in (False, True, True, False):
        ref = copy.deepcopy(model)
        ref.train(mode)
        set_training(model, mode)
        assert [m.training for m in model.modules()] == [m.training for m in ref.modules()]


def test_set_training_calls_an_overridden_train():
    from strategies.training.lean_loop import set_training

    class Frozen(nn.Linear):  # keeps itself in evaluation mode, like a frozen BN
        def train(self, mode=True):
            return super().train(False)

    model = nn.Sequential(nn.Linear(2, 2), Frozen(2, 2))
    set_training(model, True)
    assert model.training and model[0].training and not model[1].training


@pytest.mark.parametrize(("dtype", "grad", "max_norm"), [
    (torch.bfloat16, 0.0014495849609375, 0.0014506284789215077),
    (torch.float16, 0.0013170242309570312, 0.0013180637720793709),
])
def test_clip_grad_norm_in_half_precision_scales_as_torch(dtype, grad, max_norm):
    """Half-precision factors round far more than float32's margin: no host shortcut."""
    a = torch.zeros(1, dtype=dtype, requires_grad=True)
    b = torch.zeros(1, dtype=dtype, requires_grad=True)
    a.grad = torch.full((1,), grad, dtype=dtype)
    b.grad = a.grad.clone()
    torch.nn.utils.clip_grad_norm_([a], max_norm)
    clip_grad_norm([b], max_norm)
    assert torch.equal(a.grad, b.grad) and not torch.equal(a.grad, b.grad.new_full((1,), grad))
