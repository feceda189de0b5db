"""The rehearsal baselines (``replay``, ``agem``, ``der``, ``er-ace``, ``gdumb``) and their
memories (strategies/rehearsal/memory.py): each trains on both embedded scenarios through the
runner; the memories keep their invariants (size, balance, training samples only, determinism);
each method's defining step matches a computation by hand."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import AGEMPlugin as AvalancheAGEMPlugin
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from benchmark.data.scenarios import get_scenario
from benchmark.experiment import Experiment
from benchmark.records import validate_record
from benchmark.run import runner
from benchmark.run.runner import run_experiment
from strategies import (
    STRATEGIES,
    AGEMPlugin,
    ConfigError,
    DERPlugin,
    ERACEPlugin,
    GDumbPlugin,
    MultiHeadNet,
    RecipeConfig,
    ReplayPlugin,
    TrainConfig,
    TrainingRecipePlugin,
    agem_projection,
    get_strategy,
    make_optimizer,
)
from strategies.registry import BuildContext
from strategies.rehearsal.der import logit_mse
from strategies.rehearsal.er_ace import present_class_ce
from strategies.rehearsal.memory import (
    ClassBalancedMemory,
    GroupMemory,
    ReservoirMemory,
    balanced_quotas,
)
from strategies.training.recipe import split_indices
from tests.support.trunks import (
    MLP_SHAPE,
    fast_plugins,
    keep_subnormals,  # noqa: F401  (autouse fixture)
    make_stream,
    mlp_trunk,
    multihead_net,
    quiet_evaluator,
)

REHEARSAL = ("replay", "agem", "der", "er-ace", "gdumb")
SCENARIOS = ("split-digits", "permuted-digits")
PLUGINS = {"replay": ReplayPlugin, "agem": AGEMPlugin, "der": DERPlugin, "er-ace": ERACEPlugin,
           "gdumb": GDumbPlugin}


# one torch thread (conftest's fixture): much faster for these tiny networks on shared cores
pytestmark = pytest.mark.usefixtures("one_thread")


def epochs(scenario: str, strategy: str) -> int:
    """2 epochs, but GDumb trains on its 200-sample memory alone, from scratch at every
    task: 4 steps an epoch for five tasks' worth of classes, so it gets more epochs (its
    epochs are cheap) to leave chance level within the test's budget."""
    if strategy == "gdumb":
        return 10 if scenario == "split-digits" else 25
    return 2


_runs: dict = {}
_scenarios: dict = {}


def scenario_data(name: str):
    if name not in _scenarios:
        _scenarios[name] = get_scenario(name).build(0, Path("data"))
    return _scenarios[name]


def run_with_strategy(scenario: str, strategy: str, seed: int = 0):
    """(record, trained strategy) of the runner's experiment, memoised."""
    key = (scenario, strategy, seed)
    if key not in _runs:
        built = []
        real = runner._make_strategy

        def keep(*args, **kwargs):
            built.append(real(*args, **kwargs))
            return built[-1]

        exp = Experiment(scenario, strategy, seed,
                         {"train": {"epochs": epochs(scenario, strategy)}})
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(runner, "_make_strategy", keep)
            rec = run_experiment(exp, scenario_data(scenario))
        _runs[key] = (rec, built[-1])
    return _runs[key]


def plugin_of(strategy, name: str):
    return next(p for p in strategy.plugins if isinstance(p, PLUGINS[name]))


def memory_tensors(plugin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    memory = plugin.memory
    if isinstance(memory, ReservoirMemory):
        return memory.x, memory.y, memory.t
    return memory.tensors


# ---------------------------------------------------------------- through the runner


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("strategy", REHEARSAL)
def test_each_trains_on_both_embedded_scenarios_above_chance(strategy, scenario):
    rec, _ = run_with_strategy(scenario, strategy)
    validate_record(rec)
    acc = np.asarray(rec["accuracy"])
    n = len(rec["task_names"])
    assert acc.shape == (n, n) and np.isfinite(acc).all()
    chance = np.asarray(rec["random_accuracy"])
    for i in range(n):  # every task trained so far, after every task
        assert (acc[i, : i + 1] > chance[: i + 1]).all(), (i, acc[i], chance)
    assert acc[-1].mean() > chance.mean() + 0.1
    # the memory is recorded after every task, within its budget
    params = rec["params"][strategy]
    held = rec["memory_samples"]
    assert len(held) == n and all(h > 0 for h in held)
    if strategy == "agem":
        assert held == [params["patterns_per_experience"] * (t + 1) for t in range(n)]
    else:
        assert held == [params["mem_size"]] * n  # every task has >= 200 training samples
    assert rec["agnostic_accuracy"] is not None  # multi-head, shared trunk: heads concatenated


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("strategy", REHEARSAL)
def test_memories_hold_training_samples_only(strategy, scenario):
    """Every memory sample is a training-part sample of its own task (the recipe's
    ``split_indices``), with its label: never a validation or test sample."""
    _, trained = run_with_strategy(scenario, strategy)
    data = scenario_data(scenario)
    x, y, t = (v.cpu() for v in memory_tensors(plugin_of(trained, strategy)))
    assert len(y) > 0
    for u, task in enumerate(data.tasks):
        train_idx, valid_idx = split_indices(len(task.train_y), data.valid_fraction, 0, u)
        rows = {(r.numpy().tobytes(), int(c)) for r, c in
                zip(task.train_x[train_idx], task.train_y[train_idx], strict=True)}
        valid_only = [i for i in valid_idx
                      if (task.train_x[i].numpy().tobytes(), int(task.train_y[i])) not in rows]
        assert valid_only  # the check can tell the two parts apart
        mine = (t == u).nonzero().squeeze(1)
        assert len(mine) > 0, f"task {u} has no sample in memory"
        for i in mine.tolist():
            assert (x[i].numpy().tobytes(), int(y[i])) in rows, (u, i)


@pytest.mark.parametrize("strategy", REHEARSAL)
def test_memory_sizes_and_balance_after_a_run(strategy):
    _, trained = run_with_strategy("split-digits", strategy)
    plugin = plugin_of(trained, strategy)
    _, y, t = (v.cpu() for v in memory_tensors(plugin))
    by_task = torch.bincount(t, minlength=5).tolist()
    by_class = torch.bincount(t * 2 + y, minlength=10).tolist()
    if strategy == "replay":  # balanced over experiences
        assert by_task == [40] * 5
    elif strategy == "agem":  # a fixed number per experience
        assert by_task == [50] * 5
    elif strategy == "der":  # a reservoir: bounded, every task represented
        assert len(y) == 200 and min(by_task) > 0
    else:  # balanced over (task, label) classes
        assert by_class == [20] * 10


@pytest.mark.parametrize("strategy", REHEARSAL)
def test_runs_are_deterministic_under_a_seed(strategy):
    rec, _ = run_with_strategy("split-digits", strategy)
    exp = Experiment("split-digits", strategy, 0,
                     {"train": {"epochs": epochs("split-digits", strategy)}})
    again = run_experiment(exp, scenario_data("split-digits"))
    assert again["accuracy"] == rec["accuracy"]
    assert again["valid_accuracy"] == rec["valid_accuracy"]
    assert again["memory_samples"] == rec["memory_samples"]


# ----------------------------------------------------------------------------- memories


@settings(max_examples=100, deadline=None)
@given(counts=st.lists(st.integers(0, 60), min_size=1, max_size=12), capacity=st.integers(0, 300))
def test_balanced_quotas_are_as_equal_as_the_groups_allow(counts, capacity):
    quotas = balanced_quotas(counts, capacity)
    assert sum(quotas) == min(capacity, sum(counts))
    assert all(0 <= q <= c for q, c in zip(quotas, counts, strict=True))
    for g, (q, c) in enumerate(zip(quotas, counts, strict=True)):
        if q < c:  # a group cut short holds at least as much as any other, less one
            assert all(other <= q + 1 for other in quotas), (g, quotas)


def _stream(batches: list[tuple[int, int, int]]):
    """Synthetic samples: ``(task, label, n)`` per batch; each sample's x encodes a unique id,
    its task and its label, so that the memory's rows can be traced back."""
    uid = 0
    for task, label, n in batches:
        ids = torch.arange(uid, uid + n, dtype=torch.float32)
        uid += n
        x = torch.stack((ids, torch.full_like(ids, task), torch.full_like(ids, label)), dim=1)
        yield x, torch.full((n,), label), torch.full((n,), task)


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(1, 40)),
                        min_size=1, max_size=8),
       capacity=st.integers(1, 60), seed=st.integers(0, 2**16))
def test_class_balanced_memory_invariants(batches, capacity, seed):
    def fill():
        torch.manual_seed(seed)
        memory = ClassBalancedMemory(capacity)
        offered: dict[tuple[int, int], int] = {}
        for x, y, t in _stream(batches):
            memory.add(x, y, t)
            key = (int(t[0]), int(y[0]))
            offered[key] = offered.get(key, 0) + len(y)
            held = memory.class_counts()
            assert len(memory) <= capacity
            assert len(memory) == min(capacity, sum(offered.values()))
            for cls, n in held.items():
                if n < offered[cls]:  # cut short: no class holds more than one more
                    assert max(held.values()) <= n + 1, held
        return memory

    memory = fill()
    x, y, t = memory.tensors
    assert torch.equal(x[:, 1].long(), t) and torch.equal(x[:, 2].long(), y)  # rows intact
    assert len(torch.unique(x[:, 0])) == len(x)  # no sample twice
    again = fill()  # the same seed: the same memory
    assert all(torch.equal(a, b) for a, b in zip(memory.tensors, again.tensors, strict=True))


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 50), min_size=1, max_size=6), capacity=st.integers(1, 80),
       seed=st.integers(0, 2**16))
def test_experience_balanced_memory_of_replay(sizes, capacity, seed):
    """``ReplayPlugin``'s rule: each experience a group, every group cut to its share."""
    torch.manual_seed(seed)
    memory = GroupMemory()
    for g, (x, y, t) in enumerate(_stream([(e, 0, n) for e, n in enumerate(sizes)])):
        memory.add(x, y, t, g)
        memory.shrink(balanced_quotas(memory.counts(g + 1), capacity))
        held = memory.counts(g + 1)
        assert sum(held) == min(capacity, sum(sizes[: g + 1]))
        cut = [h for h, n in zip(held, sizes, strict=False) if h < n]
        assert not cut or max(held) <= min(cut) + 1
    x, _, t = memory.tensors
    assert torch.equal(x[:, 1].long(), t)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=10), capacity=st.integers(1, 40),
       seed=st.integers(0, 2**16))
def test_reservoir_memory_invariants(sizes, capacity, seed):
    def fill():
        torch.manual_seed(seed)
        memory = ReservoirMemory(capacity)
        seen = 0
        for x, y, t in _stream([(0, 1, n) for n in sizes]):
            logits = torch.stack((x[:, 0], -x[:, 0]), dim=1)  # a function of the sample
            memory.add(x, y, t, logits)
            seen += len(y)
            assert len(memory) == min(capacity, seen) and memory.seen == seen
        return memory

    memory = fill()
    assert len(torch.unique(memory.x[:, 0])) == len(memory)
    assert torch.equal(memory.logits[:, 0], memory.x[:, 0])  # each row's own logits
    again = fill()
    assert torch.equal(memory.x, again.x) and torch.equal(memory.logits, again.logits)


def test_reservoir_keeps_every_sample_with_equal_probability():
    """After n samples each is held with probability capacity / n (a later duplicate slot in
    a batch overwrites an earlier one, as one-by-one insertion would)."""
    torch.manual_seed(0)
    n, capacity, trials = 60, 15, 200
    hits = torch.zeros(n)
    for _ in range(trials):
        memory = ReservoirMemory(capacity)
        for x, y, t in _stream([(0, 0, 7)] * 8 + [(0, 0, 4)]):
            memory.add(x, y, t, x[:, :1])
        hits[memory.x[:, 0].long()] += 1
    freq = hits / trials
    assert abs(float(freq.mean()) - capacity / n) < 1e-6
    assert float(freq.min()) > 0.12 and float(freq.max()) < 0.38, freq


def test_reservoir_slot_draws_cover_zero_to_position():
    """Sample number ``pos`` (0-based) draws its slot uniformly in ``[0, pos]``, ``pos``
    included (Vitter's algorithm R); while the memory fills, slot ``pos`` itself."""
    torch.manual_seed(0)
    memory = ReservoirMemory(capacity=3)
    slot = memory.slots(20000)
    pos = torch.arange(20000)
    assert torch.equal(slot[:3], pos[:3])
    assert (slot >= 0).all() and (slot <= pos).all()
    assert int((slot[3:] == pos[3:]).sum()) > 0  # the top of the range is drawn too
    u = (slot[3:].double() + 0.5) / (pos[3:] + 1)
    assert abs(float(u.mean()) - 0.5) < 0.01


def test_memories_survive_torch_save(tmp_path):
    torch.manual_seed(0)
    plugin = ERACEPlugin(mem_size=10)
    for x, y, t in _stream([(0, 0, 8), (0, 1, 8), (1, 0, 8)]):
        plugin.memory.add(x, y, t)
    torch.save(plugin.state_dict(), tmp_path / "m.pt")
    restored = ERACEPlugin(mem_size=10)
    restored.load_state_dict(torch.load(tmp_path / "m.pt"))
    assert all(torch.equal(a, b) for a, b in zip(plugin.memory.tensors,
                                                 restored.memory.tensors, strict=True))
    assert restored.memory.class_counts() == plugin.memory.class_counts()


# -------------------------------------------------------------------------------- A-GEM


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


class _Stub:
    def __init__(self, model):
        self.model = model
        self._criterion = nn.CrossEntropyLoss()
        self.device = "cpu"


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


# -------------------------------------------------------------------------------- DER++


def test_der_loss_is_ce_plus_alpha_mse_plus_beta_ce_by_hand():
    """Heads of different widths (2 and 3 classes): the squared error covers each memory
    sample's own head; with a memory batch as large as the memory, both memory batches are
    the whole memory (in some order), so the terms are fixed."""
    torch.manual_seed(0)
    model = multihead_net(nn.Sequential(nn.Linear(64, 16), nn.ReLU()), MLP_SHAPE, (2, 3))
    plugin = DERPlugin(mem_size=8, alpha=0.3, beta=0.7, mem_batch_ratio=1.0)
    xs = torch.randn(8, 64)
    ts = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    ys = torch.tensor([0, 1, 0, 1, 0, 1, 2, 2])
    zs = [torch.randn(4, 2), torch.randn(4, 3)]
    plugin.memory.add(xs[:4], ys[:4], ts[:4], zs[0])
    plugin.memory.add(xs[4:], ys[4:], ts[4:], zs[1])
    assert len(plugin.memory) == 8 and plugin.memory.width_set == {2, 3}

    x, y = torch.randn(8, 64), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    strategy = _Stub(model)
    strategy.train_mb_size = 8
    strategy.loss = F.cross_entropy(model(x, 1), y)
    ce_current = float(strategy.loss.detach())
    plugin.before_backward(strategy)

    with torch.no_grad():  # by hand: sample by sample, each with its own head
        sq = sum(((model(xs[i : i + 1], int(ts[i]))[0] - z) ** 2).sum()
                 for i, z in enumerate([*zs[0], *zs[1]]))
        mse = sq / (4 * 2 + 4 * 3)
        ce_memory = (F.cross_entropy(model(xs[:4], 0), ys[:4]) * 4
                     + F.cross_entropy(model(xs[4:], 1), ys[4:]) * 4) / 8
    expected = ce_current + 0.3 * float(mse) + 0.7 * float(ce_memory)
    assert float(strategy.loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert torch.isfinite(strategy.loss)


def test_logit_mse_is_mse_loss_for_equal_widths_and_ignores_padding():
    out, stored = torch.randn(5, 3), torch.randn(5, 3)
    assert torch.equal(logit_mse(out, stored, None), F.mse_loss(out, stored))
    widths = torch.tensor([2, 3, 2, 3, 3])
    padded = out.clone()
    padded[widths == 2, 2] = float("-inf")  # MultiHeadNet's padding of a mixed batch
    value = logit_mse(padded, stored, widths)
    keep = torch.arange(3) < widths.unsqueeze(1)
    assert torch.isfinite(value)
    assert float(value) == pytest.approx(float(((out - stored)[keep] ** 2).mean()), rel=1e-6)


class _StepRecorder(SupervisedPlugin):
    """Each training step's inputs and outputs (before the update)."""

    def __init__(self):
        super().__init__()
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def after_forward(self, strategy, **kwargs):
        self.steps.append((strategy.mb_x.clone(), strategy.mb_output.detach().clone()))


def _build(name: str, overrides: dict, *plugins, n_tasks: int = 2, epochs: int = 2,
           batch_size: int = 16):
    torch.manual_seed(0)
    spec = get_strategy(name)
    train = TrainConfig(lr=0.05, batch_size=batch_size, epochs=epochs, patience=1)
    model = multihead_net(mlp_trunk(), MLP_SHAPE, (2,) * n_tasks)
    recipe = TrainingRecipePlugin(RecipeConfig(valid_fraction=0.25, patience=1), lr=train.lr)
    ctx = BuildContext(model=model, optimizer=make_optimizer(model.parameters(), train),
                       train=train, plugins=fast_plugins(recipe, *plugins), device="cpu",
                       evaluator=quiet_evaluator())
    return spec.build(ctx, spec.config(overrides))


def test_der_stores_the_logits_of_the_step_that_inserted_each_sample():
    recorder = _StepRecorder()
    strategy = _build("der", {"mem_size": 20}, recorder)
    bm, _, _ = make_stream(2, n_train=48)
    for exp in bm.train_stream:
        strategy.train(exp)
    memory = plugin_of(strategy, "der").memory
    assert len(memory) == 20 and memory.seen > 20
    outputs = {}  # input row -> the outputs it had at each step it was trained on
    for x, out in recorder.steps:
        for row, logits in zip(x, out, strict=True):
            outputs.setdefault(row.numpy().tobytes(), []).append(logits)
    for row, z in zip(memory.x, memory.logits, strict=True):
        seen = outputs[row.numpy().tobytes()]
        assert any(torch.equal(z, logits) for logits in seen)
    # not recomputed later: the current model's outputs differ
    strategy.model.eval()
    with torch.no_grad():
        now = strategy.model(memory.x, memory.t)
    assert not torch.allclose(now, memory.logits, atol=1e-3)


# -------------------------------------------------------------------------------- GDumb


class _GDumbSpy(SupervisedPlugin):
    """The weights when each experience's training starts and the inputs of every step."""

    def __init__(self):
        super().__init__()
        self.start_states: list[dict[str, torch.Tensor]] = []
        self.batches: list[list[torch.Tensor]] = []

    def before_training_exp(self, strategy, **kwargs):
        self.start_states.append(copy.deepcopy(strategy.model.state_dict()))
        self.batches.append([])

    def after_forward(self, strategy, **kwargs):
        self.batches[-1].append(strategy.mb_x.clone())


def test_gdumb_restarts_from_the_initial_weights_and_trains_on_the_memory_only():
    spy = _GDumbSpy()
    strategy = _build("gdumb", {"mem_size": 30}, spy, n_tasks=3, epochs=3, batch_size=8)
    initial = copy.deepcopy(strategy.model.state_dict())
    plugin = plugin_of(strategy, "gdumb")
    bm, _, _ = make_stream(3, n_train=48)
    for exp in bm.train_stream:
        strategy.train(exp)
        memory_x = {r.numpy().tobytes() for r in plugin.memory.tensors[0]}
        steps = torch.cat(spy.batches[-1])
        assert {r.numpy().tobytes() for r in steps} <= memory_x  # the memory alone
        n_epochs = len(steps) // len(memory_x)
        assert len(steps) == n_epochs * len(memory_x) and n_epochs >= 1
        assert len(memory_x) == 30  # 36 training samples a task: full after the first
    assert len(spy.start_states) == 3
    for state in spy.start_states:  # every experience starts from the initial weights
        assert all(torch.equal(state[k], v) for k, v in initial.items())
    final = strategy.model.state_dict()
    assert not all(torch.equal(final[k], v) for k, v in initial.items())  # it trained
    counts = plugin.memory.class_counts()
    assert sorted(counts) == [(t, c) for t in range(3) for c in range(2)]
    assert set(counts.values()) == {5}


# ------------------------------------------------------------------------------- ER-ACE


@settings(max_examples=50, deadline=None)
@given(width=st.integers(2, 6), data=st.data())
def test_er_ace_current_term_ignores_absent_classes(width, data):
    present = data.draw(st.sets(st.integers(0, width - 1), min_size=1, max_size=width - 1))
    n = data.draw(st.integers(1, 12))
    labels = sorted(present)
    y = torch.tensor([labels[i % len(labels)] for i in range(n)])
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    out = torch.randn(n, width, generator=g, requires_grad=True)
    t = torch.zeros(1, dtype=torch.long).expand(n)
    loss = present_class_ce(out, y, t)
    kept = sorted(set(y.tolist()))
    remap = torch.tensor([kept.index(int(c)) for c in y])
    by_hand = F.cross_entropy(out.detach()[:, kept], remap)
    assert float(loss.detach()) == pytest.approx(float(by_hand), rel=1e-5)
    loss.backward()
    absent = [c for c in range(width) if c not in kept]
    assert torch.equal(out.grad[:, absent], torch.zeros(n, len(absent)))
    changed = out.detach().clone()
    changed[:, absent] += 100.0
    assert float(present_class_ce(changed, y, t)) == pytest.approx(float(loss.detach()), rel=1e-6)


def test_er_ace_mask_is_per_task_in_a_mixed_batch():
    out = torch.randn(4, 3)
    y, t = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 0, 1, 1])
    # task 0 keeps columns {0, 1}, task 1 keeps {2}: its samples' loss is 0
    expected = (F.cross_entropy(out[:2, :2], y[:2], reduction="sum")) / 4
    assert float(present_class_ce(out, y, t)) == pytest.approx(float(expected), rel=1e-5)


def test_er_ace_current_term_stays_finite_where_avalanche_gives_nan():
    """Avalanche's ACECriterion takes the log of a softmax: a probability that underflows
    to 0 makes 0 · log 0 = NaN; the masked log-softmax here stays finite."""
    from avalanche.training import ACECriterion

    out = torch.tensor([[200.0, 0.0], [0.0, 1.0]])
    y, t = torch.tensor([0, 1]), torch.zeros(2, dtype=torch.long)
    assert torch.isnan(ACECriterion()(out, y, out, y))
    value = present_class_ce(out, y, t)
    assert torch.isfinite(value)
    assert float(value) == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-6)


def test_er_ace_loss_halves_current_and_memory_terms():
    """The memory term covers every class of the sample's head (with a memory batch as large
    as the memory it is the whole memory)."""
    torch.manual_seed(0)
    model = multihead_net(nn.Sequential(nn.Linear(64, 16), nn.ReLU()), MLP_SHAPE, (3, 3))
    plugin = ERACEPlugin(mem_size=6)
    xm, ym, tm = torch.randn(6, 64), torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0] * 6)
    plugin.memory.add(xm, ym, tm)
    strategy = _Stub(model)
    strategy.train_mb_size = 6
    strategy.mb_y, strategy.mb_task_id = torch.tensor([0, 0, 0, 0, 0, 0]), torch.ones(6).long()
    strategy.mb_output = model(torch.randn(6, 64), 1)
    loss = plugin.ace_loss(strategy).detach()
    with torch.no_grad():
        current = F.cross_entropy(strategy.mb_output[:, :1], torch.zeros(6, dtype=torch.long))
        memory = F.cross_entropy(model(xm, 0), ym)
    assert float(current) == 0.0  # one class present: nothing to learn from the batch
    assert float(loss) == pytest.approx(float((current + memory) / 2), rel=1e-5)


# ------------------------------------------------------------------------ configuration


@pytest.mark.parametrize(("strategy", "key", "value"), [
    ("replay", "mem_size", 0), ("replay", "mem_batch_ratio", 0), ("agem", "sample_size", 0),
    ("agem", "patterns_per_experience", -1), ("der", "alpha", -1), ("der", "mem_size", 0),
    ("er-ace", "mem_batch_ratio", -0.5), ("gdumb", "mem_size", 0)])
def test_bad_values_get_one_clear_error(strategy, key, value):
    with pytest.raises(ConfigError, match=rf"^{strategy}\.{key} must be"):
        get_strategy(strategy).config({key: value})


def test_registry_entries_and_spaces():
    for name in REHEARSAL:
        spec = STRATEGIES[name]
        assert not (spec.gated or spec.joint or spec.single)
        for key, values in spec.space.items():
            assert "mem_size" not in key and list(values) == sorted(values)
    assert not STRATEGIES["gdumb"].space  # its only parameter is the memory budget
    assert STRATEGIES["der"].defaults() == {"mem_size": 200, "alpha": 0.2, "beta": 1.0,
                                            "mem_batch_ratio": 1.0}
    assert STRATEGIES["agem"].defaults() == {"patterns_per_experience": 50, "sample_size": 64}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("strategy", REHEARSAL)
def test_each_trains_on_cuda_with_its_memory_there(strategy):
    built = []
    real = runner._make_strategy

    def keep(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    exp = Experiment("split-digits", strategy, 0,
                     {"train": {"epochs": epochs("split-digits", strategy)}})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "_make_strategy", keep)
        rec = run_experiment(exp, scenario_data("split-digits"), device="cuda")
    acc = np.asarray(rec["accuracy"])
    assert np.isfinite(acc).all() and acc[-1].mean() > 0.6
    assert rec["memory_samples"] == run_with_strategy("split-digits", strategy)[0]["memory_samples"]
    assert all(v.is_cuda for v in memory_tensors(plugin_of(built[-1], strategy)))
