"""PackNet (strategies/baselines/packnet.py): exact protection of earlier tasks with every
optimizer of the suite, ownership fractions matching the prune ratio, task t reading only the
weights of tasks ≤ t, checkpoints, the runner on both embedded scenarios, and one clear error
per bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from benchmark.experiment import Experiment
from benchmark.networks import CifarResNet, ModelConfig, build_model
from benchmark.run.runner import run_experiment
from strategies import (
    STRATEGIES,
    ConfigError,
    MultiHeadNet,
    PackNetConfig,
    PackNetNet,
    PackNetPlugin,
    RecipeConfig,
    TrainConfig,
    TrainingRecipePlugin,
    get_strategy,
)
from strategies.baselines.packnet import PackNetBatchNorm, PackNetLayer
from strategies.common.multihead import BaselineError
from strategies.registry import BuildContext
from strategies.training.agnostic import agnostic_scorer
from tests.support.trunks import (
    CONV_SHAPE,
    MLP_SHAPE,
    OPTIMIZERS,
    RESNET32_SHAPE,
    conv_bn_trunk,
    fast_plugins,
    logits,
    make_stream,
    multihead_net,
    quiet_evaluator,
)

N_TASKS = 3
ALEXNET_SHAPE = (3, 16, 16)


# one torch thread (conftest's fixture): much faster for these tiny networks on shared cores
pytestmark = pytest.mark.usefixtures("one_thread")


def _network(name: str) -> tuple[MultiHeadNet, tuple[int, ...]]:
    """A small multi-head network with ``N_TASKS`` heads of 2 classes: the suite's MLP and
    AlexNet-like net (``build_model``, narrow), a conv trunk with BatchNorm, a ResNet-32."""
    heads = [2] * N_TASKS
    if name == "mlp":
        return build_model(ModelConfig(family="mlp", hidden=32), MLP_SHAPE, heads,
                           gated=False), MLP_SHAPE
    if name == "alexnet":
        return build_model(ModelConfig(family="alexnet", hidden=32), ALEXNET_SHAPE, heads,
                           gated=False), ALEXNET_SHAPE
    if name == "conv_bn":
        return multihead_net(conv_bn_trunk(), CONV_SHAPE, heads), CONV_SHAPE
    trunk = CifarResNet(3, blocks=1, width=4)
    return MultiHeadNet(trunk, trunk.features, heads), RESNET32_SHAPE


def _build(net: str, opt: str, overrides=None, epochs: int = 2):
    """The registry's packnet, as the runner builds it, with the paper recipe (patience 1:
    learning-rate drops rebuild the optimizer) on a small network."""
    torch.manual_seed(0)
    model, shape = _network(net)
    train = TrainConfig(lr=0.05, batch_size=16, epochs=epochs, eval_batch_size=64, patience=1)
    recipe = TrainingRecipePlugin(RecipeConfig(valid_fraction=0.25, patience=1))
    ctx = BuildContext(model=model, optimizer=OPTIMIZERS[opt](model.parameters()), train=train,
                       plugins=fast_plugins(recipe), device="cpu", evaluator=quiet_evaluator())
    spec = get_strategy("packnet")
    strategy = spec.build(ctx, spec.config({"post_prune_epochs": 1, **(overrides or {})}))
    return strategy, recipe, shape


def _layers(model: PackNetNet) -> list[PackNetLayer]:
    return list(model.packnet_layers())


def _train_and_record(strategy, bm, test):
    """Train task by task; per experience: the eval logits of every task trained so far, the
    trunk weights and owner maps before it, the parameters before and after it."""
    model = strategy.model
    outputs, owners, weights, params = [], [], [], []
    for i in range(N_TASKS):
        owners.append([layer.owner.clone() for layer in _layers(model)])
        weights.append([layer.wrappee.weight.detach().clone() for layer in _layers(model)])
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        strategy.train(bm.train_stream[i], eval_streams=[])
        after = {n: p.detach().clone() for n, p in model.named_parameters()}
        params.append({n for n in after if not torch.equal(after[n], before[n])})
        outputs.append([logits(model, test[j][0], j) for j in range(i + 1)])
    return outputs, owners, weights, params


# ---------------------------------------------------------------- exact protection
@pytest.mark.parametrize("net", ["mlp", "alexnet", "conv_bn", "resnet32"])
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_earlier_tasks_stay_bit_identical(net, opt):
    strategy, _, shape = _build(net, opt)
    bm, _, test = make_stream(N_TASKS, shape, n_train=48, n_test=24)
    outputs, owners, weights, params = _train_and_record(strategy, bm, test)
    model = strategy.model
    for i in range(1, N_TASKS):
        for task in range(i):
            assert torch.equal(outputs[task][task], outputs[i][task]), (
                f"{opt}/{net}: task {task}'s outputs changed while training task {i}")
    # not trivially: each experience trained its free trunk weights and its own head, and
    # changed no trunk weight it did not own, no other head, and (after the first) no bias or
    # BatchNorm parameter
    weights.append([layer.wrappee.weight.detach().clone() for layer in _layers(model)])
    layer_weights = {n for n, p in model.named_parameters()
                     if any(p is layer.wrappee.weight for layer in _layers(model))}
    for i in range(N_TASKS):
        moved = 0
        for w_before, w_after, owner in zip(weights[i], weights[i + 1], owners[i], strict=True):
            changed = w_before != w_after
            assert not bool((changed & owner.ne(i)).any()), f"experience {i} moved frozen weights"
            moved += int(changed.sum())
        assert moved > 0, f"experience {i} did not train the trunk"
        assert f"heads.{i}.weight" in params[i]
        others = params[i] - layer_weights - {f"heads.{i}.weight", f"heads.{i}.bias"}
        if i == 0:
            assert not any(n.startswith("heads.") for n in others), others
        else:
            assert not others, f"experience {i} changed {sorted(others)}"


def test_the_write_back_is_what_protects_under_weight_decay(monkeypatch):
    """The control: without the write-back after each step, AdamW's decoupled decay moves
    frozen weights (their gradient is zero) and task 0's outputs change."""
    monkeypatch.setattr(PackNetPlugin, "after_update", lambda self, strategy, **kw: None)
    strategy, _, shape = _build("mlp", "adamw")
    bm, _, test = make_stream(N_TASKS, shape, n_train=48, n_test=24)
    outputs, owners, weights, _ = _train_and_record(strategy, bm, test)
    assert not torch.equal(outputs[0][0], outputs[1][0])
    assert any(bool((w0[o.eq(0)] != w1[o.eq(0)]).any()) for w0, w1, o in
               zip(weights[1], weights[2], owners[1], strict=True))


def test_retraining_keeps_the_best_validation_loss_and_later_tasks_use_freed_weights():
    strategy, recipe, shape = _build("mlp", "sgd", {"post_prune_epochs": 3})
    bm, _, _ = make_stream(N_TASKS, shape, n_train=48, n_test=24)
    plugin = strategy.packnet_plugin
    for i in range(2):
        strategy.train(bm.train_stream[i], eval_streams=[])
        losses = plugin.post_prune_losses
        assert len(losses) == 4  # the pruned model, then each of the 3 epochs
        assert recipe.validation_loss(strategy) == min(losses)
    owners = [layer.owner for layer in _layers(strategy.model)]
    assert all(bool(o.eq(1).any()) and bool(o.eq(2).any()) for o in owners)


# ------------------------------------------------------------- masks and ownership
def _trunk() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 40),
                         nn.BatchNorm1d(40), nn.ReLU(), nn.Linear(40, 24), nn.ReLU())


def _packnet_net(n_tasks: int, seed: int) -> PackNetNet:
    torch.manual_seed(seed)
    return PackNetNet(_trunk(), 24, [2] * n_tasks)


@torch.no_grad()
def _fake_training(model: PackNetNet, slot: int, gen: torch.Generator) -> None:
    """Stand-in for training slot ``slot``: new random values on its free weights."""
    for layer in _layers(model):
        free = layer.owner.eq(slot)
        w = layer.wrappee.weight
        w[free] = torch.randn(int(free.sum()), generator=gen)


@settings(max_examples=25, deadline=None)
@given(ratio=st.floats(0.05, 0.95), seed=st.integers(0, 2**16))
def test_each_task_keeps_the_unpruned_fraction_of_what_it_was_given(ratio, seed):
    model = _packnet_net(4, seed)
    gen = torch.Generator().manual_seed(seed)
    totals = [layer.owner.numel() for layer in _layers(model)]
    for k in range(4):
        _fake_training(model, k, gen)
        before = [(layer.owner.clone(), layer.wrappee.weight.detach().abs().clone())
                  for layer in _layers(model)]
        model.prune(ratio)
        for layer, (owner, size), n in zip(_layers(model), before, totals, strict=True):
            given_ = owner.eq(k)
            pruned = layer.owner.eq(255)
            kept = layer.owner.eq(k)
            assert torch.equal(pruned | kept, given_)  # only the task's weights are pruned
            assert abs(int(pruned.sum()) - ratio * int(given_.sum())) <= 0.5
            if bool(pruned.any()) and bool(kept.any()):  # by magnitude
                assert float(size[pruned].max()) <= float(size[kept].min())
            assert not bool(layer.wrappee.weight[pruned].any())  # set to zero
            # overall: task k owns r^k (1 - r) of the layer, up to rounding
            assert abs(int(kept.sum()) - n * ratio**k * (1 - ratio)) <= 1 + 0.5 / (1 - ratio)
        model.commit(k)
        for layer, (owner, _) in zip(_layers(model), before, strict=True):
            assert not bool(layer.owner.eq(255).any())
            assert torch.equal(layer.owner.eq(k + 1), owner.eq(k) & ~layer.owner.eq(k))


@settings(max_examples=10, deadline=None)
@given(ratio=st.floats(0.2, 0.8), seed=st.integers(0, 2**16))
def test_task_t_reads_only_the_weights_of_tasks_up_to_t(ratio, seed):
    model = _packnet_net(4, seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, *CONV_SHAPE, generator=gen)
    for k in range(3):
        _fake_training(model, k, gen)
        model.prune(ratio)
        model.commit(k)
    model.eval()
    reference = [logits(model, x, t) for t in range(3)]
    for s in range(3):
        with torch.no_grad():
            saved = [layer.wrappee.weight.clone() for layer in _layers(model)]
            for layer in _layers(model):  # every weight of a later task or still free
                later = layer.owner.gt(s)
                layer.wrappee.weight[later] = torch.randn(int(later.sum()), generator=gen)
        assert all(torch.equal(reference[t], logits(model, x, t)) for t in range(s + 1))
        assert not torch.equal(reference[s + 1], logits(model, x, s + 1)) if s < 2 else True
        with torch.no_grad():
            for layer, w in zip(_layers(model), saved, strict=True):
                layer.wrappee.weight.copy_(w)
            for layer in _layers(model):  # the control: task s's own weights do matter
                layer.wrappee.weight[layer.owner.eq(s)] *= 2
        assert not torch.equal(reference[s], logits(model, x, s))
        with torch.no_grad():
            for layer, w in zip(_layers(model), saved, strict=True):
                layer.wrappee.weight.copy_(w)


def test_a_state_dict_restores_every_task_in_a_fresh_network():
    model = _packnet_net(3, 0)
    gen = torch.Generator().manual_seed(0)
    for k in range(2):
        _fake_training(model, k, gen)
        model.prune(0.5)
        model.commit(k)
    model.eval()
    x = torch.randn(8, *CONV_SHAPE, generator=gen)
    fresh = _packnet_net(3, 1)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    assert fresh.trained_labels.tolist() == [0, 1]
    assert [m.frozen for m in fresh.modules() if isinstance(m, PackNetBatchNorm)] == [True]
    for t in range(3):
        assert torch.equal(logits(model, x, t), logits(fresh, x, t))
    # a mixed-task batch: every sample through its own task's weights and head
    tasks = torch.tensor([0, 1, 2, 1, 0, 2, 2, 0])
    mixed = logits(fresh, x, tasks)
    for t in range(3):
        assert torch.equal(mixed[tasks == t], logits(fresh, x[tasks == t], t))


# ------------------------------------------------------------------------- runner
@pytest.mark.parametrize("scenario", ["split-digits", "permuted-digits"])
def test_trains_the_embedded_scenarios_through_the_runner(scenario):
    rec = run_experiment(Experiment(scenario, "packnet", 0, {"train": {"epochs": 2}}))
    acc, chance = rec["accuracy"], rec["random_accuracy"]
    assert rec["params"]["packnet"] == STRATEGIES["packnet"].defaults()
    for t, row in enumerate(acc):
        for u in range(t + 1):
            assert row[u] > chance[u] + 0.05, f"task {u} after {t}: {row[u]} (chance {chance[u]})"
            assert row[u] == acc[u][u]  # nothing forgotten, to the last sample
    assert rec["agnostic_accuracy"] is None and rec["memory_samples"] is None


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize("key,value", [
    ("prune_ratio", 0), ("prune_ratio", 1), ("prune_ratio", -0.25), ("prune_ratio", 1.5),
    ("prune_ratio", "nan"), ("post_prune_epochs", -1), ("post_prune_epochs", "2.5"),
    ("post_prune_lr_scale", 0),
])
def test_bad_parameters_give_one_clear_config_error(key, value):
    with pytest.raises(ConfigError, match=f"packnet.{key}") as err:
        get_strategy("packnet").config({key: value})
    assert "\n" not in str(err.value)


def test_config_objects_refuse_bad_values_directly():
    for kwargs in ({"prune_ratio": math.inf}, {"post_prune_epochs": -3},
                   {"post_prune_epochs": 1.0}, {"post_prune_lr_scale": -1.0}):
        with pytest.raises(ConfigError, match="packnet."):
            PackNetConfig(**kwargs)


def test_search_space_holds_valid_values_and_the_defaults():
    spec = STRATEGIES["packnet"]
    defaults = spec.defaults()
    for key, values in spec.space.items():
        assert defaults[key] in values
        for v in values:
            spec.config({key: v})


def test_refuses_models_and_streams_it_cannot_work_with():
    with pytest.raises(ConfigError, match="MultiHeadNet"):
        PackNetNet.from_multihead(nn.Linear(3, 2))
    with pytest.raises(ConfigError, match="LayerNorm"):
        PackNetNet(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), 4, [2])
    strategy, _, shape = _build("mlp", "sgd")
    bm, _, _ = make_stream(N_TASKS, shape, n_train=32, n_test=8)
    assert agnostic_scorer(strategy) is None  # no task-agnostic prediction: n/a
    strategy.train(bm.train_stream[0], eval_streams=[])
    with pytest.raises(BaselineError, match="already trained"):
        strategy.train(bm.train_stream[0], eval_streams=[])
