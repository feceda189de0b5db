"""The strategy registry: every entry builds and trains, configs are typed and validated."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from avalanche.training.templates import SupervisedTemplate
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import (
    STRATEGIES,
    ConfigError,
    HATConfig,
    RecipeConfig,
    TrainConfig,
    TrainingRecipePlugin,
    get_strategy,
    make_optimizer,
)
from strategies.common.config import from_overrides
from strategies.registry import BuildContext
from strategies.training import lean_loop
from tests.support.trunks import (
    MLP_SHAPE,
    ChangeRecorder,
    fast_plugins,
    hat_net,
    keep_subnormals,  # noqa: F401  (autouse fixture)
    make_stream,
    mlp_trunk,
    multihead_net,
    plugin_of,
    quiet_evaluator,
)

EXPECTED = {"naive", "ewc", "lwf", "si", "hat", "joint"}


def _context(spec, train: TrainConfig, *extra_plugins, heads=(2, 2)):
    """As the runner does it: the network has its task heads before training starts."""
    torch.manual_seed(0)
    if spec.gated:
        model = hat_net(mlp_trunk(), MLP_SHAPE, head_sizes=heads)
    else:
        model = multihead_net(mlp_trunk(), MLP_SHAPE, head_sizes=heads)
    recipe = TrainingRecipePlugin(
        RecipeConfig(mode=train.recipe, valid_fraction=0.25, patience=train.patience),
        lr=train.lr,
    )
    plugins = fast_plugins(recipe, *extra_plugins)
    return BuildContext(
        model=model, optimizer=make_optimizer(model.parameters(), train), train=train,
        plugins=plugins, device="cpu", evaluator=quiet_evaluator(),
    )


def test_registry_holds_the_expected_strategies():
    assert EXPECTED <= set(STRATEGIES)
    for name, spec in STRATEGIES.items():
        assert spec.name == name
        assert spec.description
        assert dataclasses.is_dataclass(spec.params)
    assert STRATEGIES["hat"].gated and STRATEGIES["joint"].joint
    assert not any(STRATEGIES[n].gated or STRATEGIES[n].joint for n in ("naive", "ewc", "lwf",
                                                                        "si"))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_trains_on_a_tiny_task_incremental_stream(name):
    spec = get_strategy(name)
    bm, _, test = make_stream(2, n_train=48)
    train = TrainConfig(lr=0.05, batch_size=16, epochs=2, eval_batch_size=32, patience=1)
    rec = ChangeRecorder()
    ctx = _context(spec, train, rec)
    n_plugins = len(ctx.plugins)
    strategy = spec.build(ctx, spec.config())
    assert isinstance(strategy, SupervisedTemplate)
    assert len(ctx.plugins) == n_plugins  # the context's list is not mutated by wrappers
    assert strategy.train_mb_size == 16 and strategy.train_epochs == 2
    assert strategy.eval_mb_size == 32
    if spec.joint:
        strategy.train(bm.train_stream[:2])
        n_exps = 1
    else:  # two experiences: the second one exercises each method's penalty
        strategy.train(bm.train_stream[0])
        strategy.train(bm.train_stream[1])
        n_exps = 2
    model = strategy.model  # some strategies build their own network from the given one
    assert sorted(model.tasks) == [0, 1]
    assert len(rec.changed) == n_exps
    assert all(changed for changed in rec.changed)  # every experience trained something
    model.eval()
    with torch.no_grad():
        for t in (0, 1):
            out = model(test[t][0], t)
            assert out.shape == (len(test[t][0]), 2) and torch.isfinite(out).all()
    strategy.eval(bm.test_stream[:2])  # evaluation runs through the registry's strategy


def test_config_values_reach_the_built_strategies():
    train = TrainConfig(lr=0.05, batch_size=16, epochs=1, recipe="fixed")
    built = {}
    for name, overrides in {
        "ewc": {"lambda": "3", "mode": "online", "decay_factor": "0.5"},
        "lwf": {"alpha": "0.25", "temperature": "4"},
        "si": {"lambda": "7"},
        "hat": {"smax": "25", "c": "0.1", "anneal": "paper", "soft_masks": "true",
                "clipgrad": "5", "thres_cosh": "20", "thres_emb": "3",
                "embedding_init": "uniform"},
    }.items():
        spec = get_strategy(name)
        built[name] = (spec.build(_context(spec, train), spec.config(overrides)), overrides)

    def plugin_with(strategy, attr):
        return next(p for p in strategy.plugins if hasattr(p, attr))

    ewc = plugin_with(built["ewc"][0], "ewc_lambda")
    assert (ewc.ewc_lambda, ewc.mode, ewc.decay_factor) == (3.0, "online", 0.5)
    lwf = plugin_with(built["lwf"][0], "lwf")
    assert (lwf.lwf.alpha, lwf.lwf.temperature) == (0.25, 4.0)
    si = plugin_with(built["si"][0], "si_lambda")
    assert si.si_lambda == [7.0] or si.si_lambda == 7.0
    hat_cfg = built["hat"][0].hat_plugin.config
    assert hat_cfg == HATConfig(smax=25.0, c=0.1, anneal="paper", soft_masks=True, clipgrad=5.0,
                                thres_cosh=20.0, thres_emb=3.0, embedding_init="uniform")


def test_ewc_decay_factor_needs_online_mode():
    spec = get_strategy("ewc")
    ctx = _context(spec, TrainConfig(recipe="fixed"))
    with pytest.raises(ConfigError, match="online"):
        spec.build(ctx, spec.config({"decay_factor": "0.5"}))


# -------------------------------------------------------------- names, keys, types
@pytest.mark.parametrize("bad", ["hta", "HAT", "", "naive "])
def test_unknown_strategy_lists_valid_names(bad):
    with pytest.raises(ConfigError) as err:
        get_strategy(bad)
    msg = str(err.value)
    assert repr(bad).strip("'") in msg or bad == ""
    for name in STRATEGIES:
        assert name in msg


def test_unknown_parameter_lists_valid_parameters():
    with pytest.raises(ConfigError) as err:
        get_strategy("ewc").config({"lamda": 1})
    msg = str(err.value)
    assert "ewc.lamda" in msg
    for key in ("lambda", "mode", "decay_factor"):
        assert key in msg
    assert "lambda_" not in msg  # users see the public key
    with pytest.raises(ConfigError, match="unknown parameter 'naive.x'"):
        get_strategy("naive").config({"x": 1})


def test_public_keys_and_string_values_are_typed():
    cfg = get_strategy("ewc").config({"lambda": "3"})
    assert cfg.lambda_ == 3.0 and isinstance(cfg.lambda_, float)
    assert get_strategy("ewc").config({"decay_factor": "none"}).decay_factor is None
    assert get_strategy("ewc").defaults()["lambda"] == get_strategy("ewc").params().lambda_
    assert "lambda_" not in get_strategy("si").defaults()
    hat = get_strategy("hat").config({"soft_masks": "yes", "smax": "1e2"})
    assert hat.soft_masks is True and hat.smax == 100.0
    train = from_overrides(TrainConfig, {"batch_size": "32", "epochs": "1e2"}, "train")
    assert train.batch_size == 32 and isinstance(train.batch_size, int) and train.epochs == 100


@pytest.mark.parametrize(
    ("name", "overrides", "match"),
    [
        ("ewc", {"lambda": "abc"}, "ewc.lambda='abc' is not a valid float"),
        ("ewc", {"mode": "offline"}, "choose one of separate, online"),
        ("hat", {"anneal": "linear"}, "choose one of reference, paper"),
        ("hat", {"soft_masks": "maybe"}, "hat.soft_masks"),
        ("hat", {"smax": "-1"}, "smax"),
        ("hat", {"c": "-0.1"}, r"hat\.c\b"),
        ("lwf", {"alpha": None}, "lwf.alpha"),
    ],
)
def test_bad_values_are_rejected_with_the_parameter_named(name, overrides, match):
    with pytest.raises(ConfigError, match=match):
        get_strategy(name).config(overrides)


@given(value=st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: not v.is_integer()),
    st.sampled_from(["1.5", "x", "", "True"]),
    st.booleans(),
))
@settings(max_examples=40, deadline=None)
def test_integer_fields_reject_non_integers(value):
    with pytest.raises(ConfigError, match="train.batch_size"):
        from_overrides(TrainConfig, {"batch_size": value}, "train")


@given(n=st.integers(1, 10_000))
@settings(max_examples=30, deadline=None)
def test_integer_fields_accept_integers_in_any_spelling(n):
    for spelling in (n, str(n), float(n)):
        assert from_overrides(TrainConfig, {"batch_size": spelling}, "train").batch_size == n


@pytest.mark.parametrize(
    "kw", [{"lr": 0.0}, {"momentum": -0.1}, {"weight_decay": -1.0}, {"batch_size": 0},
           {"epochs": 0}, {"eval_batch_size": 0}],
)
def test_train_config_validation(kw):
    with pytest.raises(ConfigError, match="train."):
        TrainConfig(**kw)


@pytest.mark.parametrize(
    ("opt", "cls"), [("sgd", lean_loop.SGD), ("adam", torch.optim.Adam),
                     ("adamw", torch.optim.AdamW)],
)
def test_make_optimizer_uses_the_config(opt, cls):
    cfg = TrainConfig(optimizer=opt, lr=0.02, momentum=0.5 if opt == "sgd" else 0.0,
                      weight_decay=0.125)
    model = multihead_net(mlp_trunk(), MLP_SHAPE)
    optimizer = make_optimizer(model.parameters(), cfg)
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.02 and group["weight_decay"] == 0.125
    if opt == "sgd":
        assert group["momentum"] == 0.5
    assert len(group["params"]) == len(list(model.parameters()))


def test_si_penalty_is_not_silently_zero_on_cpu():
    """Avalanche 0.6's SI snapshots alias the live weights on CPU (penalty exactly 0, SI =
    fine-tuning). With SIPlugin the second task trains differently from Naive, and the
    snapshots do not share storage with the parameters."""
    from avalanche.training import Naive

    from strategies.baselines.si import SIPlugin, SynapticIntelligence
    from tests.support.trunks import (
        MLP_SHAPE,
        fast_plugins,
        make_stream,
        mlp_trunk,
        multihead_net,
        quiet_evaluator,
    )

    bm, _, _ = make_stream(2, MLP_SHAPE)
    finals = {}
    for name in ("naive", "si"):
        torch.manual_seed(0)
        model = multihead_net(mlp_trunk(), MLP_SHAPE, [2, 2])
        kw = dict(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                  train_mb_size=16, train_epochs=2, evaluator=quiet_evaluator())
        if name == "si":
            strategy = SynapticIntelligence(si_lambda=100.0, plugins=fast_plugins(), **kw)
        else:
            strategy = Naive(plugins=fast_plugins(), **kw)
        for exp in bm.train_stream:
            strategy.train(exp)
        finals[name] = [p.detach().clone() for p in model.trunk.parameters()]
        if name == "si":
            si = plugin_of(strategy, SIPlugin)
            live = {p.data_ptr() for p in model.parameters()}
            assert all(v.data.data_ptr() not in live for v in si.ewc_data[0].values())
    assert any(not torch.equal(a, b) for a, b in zip(finals["naive"], finals["si"], strict=True))
