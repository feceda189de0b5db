"""iCaRL (strategies/rehearsal/icarl.py): herding (Algorithm 4), the balanced memory of
training-part samples (Algorithms 2, 5), nearest-mean-of-exemplars scores (Algorithm 1) in both
protocols, the paper's loss and its validation term, and runs through the runner. One CPU
thread."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from benchmark.data.scenarios import get_scenario
from benchmark.experiment import Experiment
from benchmark.records import TIMING_FIELDS
from benchmark.run import runner
from benchmark.run.runner import RunHooks, run_experiment
from strategies import (
    ConfigError,
    ICaRL,
    ICaRLPlugin,
    MultiHeadNet,
    RecipeConfig,
    TrainingRecipePlugin,
    get_strategy,
    herding_order,
    materialize,
)
from strategies.training.recipe import split_indices
from tests.support.runs import FAST
from tests.support.trunks import fast_plugins, make_stream, plugin_of, quiet_evaluator

#: fields that differ between identical runs (times, the process's peak memory)
TIMINGS = TIMING_FIELDS


# one torch thread (conftest's fixture): much faster for these tiny networks on shared cores
pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- herding


def algorithm4(features: np.ndarray) -> list[int]:
    """The paper's ConstructExemplarSet written out: φ normalised, μ their mean, then for
    k = 1..n the not yet chosen x minimising ‖μ − (φ(x) + Σ_{j<k} φ(p_j)) / k‖."""
    phi = features / np.linalg.norm(features, axis=1, keepdims=True)
    mu = phi.mean(0)
    chosen: list[int] = []
    total = np.zeros_like(mu)
    for k in range(1, len(phi) + 1):
        best, best_dist = None, np.inf
        for i in range(len(phi)):
            if i in chosen:
                continue
            dist = np.linalg.norm(mu - (phi[i] + total) / k)
            if dist < best_dist:
                best, best_dist = i, dist
        chosen.append(best)
        total = total + phi[best]
    return chosen


@pytest.mark.parametrize("seed", range(8))
def test_herding_is_algorithm_4(seed):
    g = torch.Generator().manual_seed(seed)
    n, d = 10 + 7 * seed, 2 + seed % 5
    feats = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.rand(n, 1, generator=g)
    assert herding_order(feats).tolist() == algorithm4(feats.numpy())


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), d=st.integers(2, 8), seed=st.integers(0, 2**31 - 1))
def test_herding_prefix_means_are_greedy_optimal(n, d, seed):
    """Each prefix mean is as close to μ as any remaining candidate could make it (the
    rule of Algorithm 4); the full order is a permutation whose mean is μ itself."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, d, generator=g, dtype=torch.float64) + torch.randn(d, generator=g)
    order = herding_order(feats).tolist()
    assert sorted(order) == list(range(n))
    phi = F.normalize(feats, dim=1)
    mu = phi.mean(0)
    total = torch.zeros(d, dtype=torch.float64)
    for k, i in enumerate(order, start=1):
        rest = [j for j in range(n) if j not in order[: k - 1]]
        candidates = ((phi[rest] + total) / k - mu).norm(dim=1)
        total = total + phi[i]
        assert float((total / k - mu).norm()) <= float(candidates.min()) + 1e-12
    assert torch.allclose(total / n, mu)


def test_herding_mean_beats_random_subsets():
    """The point of herding: m exemplars whose mean is closer to the class mean than a
    random choice of m (here than every one of 50 seeded random subsets)."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(200, 16, generator=g) + 0.5
    phi = F.normalize(feats.double(), dim=1)
    mu = phi.mean(0)
    for m in (10, 20, 40):
        herd = float((phi[herding_order(feats)[:m]].mean(0) - mu).norm())
        rand = [float((phi[torch.randperm(200, generator=g)[:m]].mean(0) - mu).norm())
                for _ in range(50)]
        assert herd < min(rand)


# ----------------------------------------------------------------------------- memory


def _capture(monkeypatch) -> list:
    """The strategies ``run_experiment`` builds, appended to the returned list."""
    built = []
    real = runner._make_strategy

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(runner, "_make_strategy", spy)
    return built


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x.flatten(1)}


@pytest.mark.parametrize("memory", [30, 10])
def test_memory_is_bounded_balanced_herded_and_from_the_training_part(monkeypatch, memory):
    """After every task: at most K exemplars, ⌊K / classes seen⌋ for every (task, label)
    class (each has more training samples than that), every one a distinct sample of its
    own class from the recipe's training part (none from the validation split or the test
    data); older classes keep a prefix of their previous exemplars (Algorithm 5)."""
    built = _capture(monkeypatch)
    snaps = []

    def on_experience(t, row):
        snaps.append({k: v.clone() for k, v in plugin_of(built[0], ICaRLPlugin).exemplars.items()})

    seed = 1
    over = {"train": {"epochs": 1}, "icarl": {"mem_size": memory}}
    rec = run_experiment(Experiment("split-digits", "icarl", seed, over),
                         hooks=RunHooks(on_experience=on_experience))
    scen = get_scenario("split-digits").build(seed, Path("data"))
    parts = {}
    for u, task in enumerate(scen.tasks):
        train_idx, valid_idx = split_indices(len(task.train_y), scen.valid_fraction, seed, u)
        for c in range(2):
            tr = torch.as_tensor(train_idx)
            va = torch.as_tensor(valid_idx)
            parts[(u, c)] = (_rows(task.train_x[tr][task.train_y[tr] == c]),
                             _rows(task.train_x[va]) | _rows(task.test_x))
    for t, snap in enumerate(snaps):
        n_classes = 2 * (t + 1)
        m = memory // n_classes
        assert sorted(snap) == [(u, c) for u in range(t + 1) for c in range(2)]
        assert all(len(x) == m for x in snap.values())
        assert sum(len(x) for x in snap.values()) <= memory
        assert rec["memory_samples"][t] == m * n_classes
        for key, x in snap.items():
            train_rows, held_out = parts[key]
            rows = _rows(x)
            assert len(rows) == len(x)  # distinct samples
            assert rows <= train_rows and not rows & held_out
            if t:
                old = snaps[t - 1].get(key)
                if old is not None:
                    assert torch.equal(x, old[: len(x)])


def test_memory_too_small_for_the_classes_is_a_config_error():
    over = {"train": {"epochs": 1}, "icarl": {"mem_size": 3}}
    with pytest.raises(ConfigError, match=r"icarl\.mem_size=3 .* 4 classes .* >= 4"):
        run_experiment(Experiment("split-digits", "icarl", 0, over))
    with pytest.raises(ConfigError, match=r"icarl\.mem_size must be an integer >= 1"):
        get_strategy("icarl").config({"mem_size": "0"})


# -------------------------------------------------------------------------------- NCM


def _ncm_setup():
    """A model whose features are the inputs (an identity linear trunk), two tasks (2 and 3
    classes), exemplars set by hand (class (1, 2) has none), means computed by the plugin."""
    torch.manual_seed(0)
    trunk = nn.Linear(4, 4)
    with torch.no_grad():
        trunk.weight.copy_(torch.eye(4))
        trunk.bias.zero_()
    model = MultiHeadNet(trunk, 4, (2, 3))
    plugin = ICaRLPlugin(mem_size=50)
    g = torch.Generator().manual_seed(1)
    for key in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        plugin.exemplars[key] = torch.randn(5, 4, generator=g) + 2 * torch.randn(4, generator=g)
    plugin.seen_tasks = [0, 1]
    strategy = SimpleNamespace(model=model, device=torch.device("cpu"), eval_mb_size=3)
    plugin.update_means(strategy)
    means = {k: F.normalize(F.normalize(x, dim=1).mean(0), dim=0)
             for k, x in plugin.exemplars.items()}
    x = torch.randn(40, 4, generator=g) * 2
    return plugin, strategy, means, x


def _distances(x: torch.Tensor, means: list[torch.Tensor | None]) -> torch.Tensor:
    """By hand: ‖φ(x) − μ‖ per class (∞ without a mean)."""
    phi = x / x.norm(dim=1, keepdim=True)
    return torch.stack([(phi - mu).norm(dim=1) if mu is not None
                        else torch.full((len(x),), float("inf")) for mu in means], dim=1)


def test_ncm_task_aware_scores_are_restricted_to_the_task():
    plugin, strategy, means, x = _ncm_setup()
    for task, width in ((0, 2), (1, 3)):
        hand = _distances(x, [means.get((task, c)) for c in range(width)])
        scores = plugin.task_aware_scores(strategy, x, torch.full((len(x),), task))
        assert scores.shape == (len(x), width)
        assert torch.equal(scores.argmax(1), hand.argmin(1))
        assert torch.allclose(scores[:, :2], -hand[:, :2], atol=1e-5)
        if width == 3:
            assert torch.isinf(scores[:, 2]).all()  # no exemplars: never predicted
    # a mixed batch: each sample among its own task's classes only
    t = torch.arange(len(x)) % 2
    mixed = plugin.task_aware_scores(strategy, x, t)
    for u in (0, 1):
        own = plugin.task_aware_scores(strategy, x[t == u], u)
        assert torch.equal(mixed[t == u, : own.shape[1]], own)
    assert torch.isinf(mixed[t == 0, 2]).all()


def test_ncm_agnostic_scores_layout_and_prediction():
    plugin, strategy, means, x = _ncm_setup()
    for tasks in ([0, 1], [1, 0], [1]):
        keys = [(u, c) for u in tasks for c in range(2 if u == 0 else 3)]
        hand = _distances(x, [means.get(k) for k in keys])
        scores = plugin.agnostic_scores(strategy, x, tasks)
        assert scores.shape == (len(x), len(keys))
        assert torch.equal(scores.argmax(1), hand.argmin(1))
        finite = torch.isfinite(hand[0])
        assert torch.allclose(scores[:, finite], -hand[:, finite], atol=1e-5)
        assert torch.isinf(scores[:, ~finite]).all()
    with pytest.raises(KeyError, match="task 2 was never trained"):
        plugin.agnostic_scores(strategy, x, [0, 2])


def test_a_task_without_exemplars_is_scored_by_its_head():
    plugin, strategy, _, x = _ncm_setup()
    strategy.model.add_task(2, 2)
    with torch.no_grad():
        assert torch.equal(plugin.task_aware_scores(strategy, x, 2), strategy.model(x, 2))


# ------------------------------------------------------------------- loss, validation


def _two_task_strategy(recipe: RecipeConfig, epochs: int, *extra):
    """ICaRL on a two-task stream, a dropout-free trunk (so the loss can be recomputed)."""
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(64, 16), nn.ReLU())
    model = MultiHeadNet(trunk, 16, (2, 2))
    plugins = fast_plugins(TrainingRecipePlugin(recipe, lr=0.05), *extra)
    strategy = ICaRL(mem_size=20, model=model,
                     optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                     train_mb_size=16, train_epochs=epochs, eval_mb_size=32,
                     plugins=plugins, evaluator=quiet_evaluator())
    return strategy, make_stream(2, n_train=48)[0]


class _LossCheck(SupervisedPlugin):
    """Recomputes the paper's loss by hand at ``before_backward`` of the second task."""

    def __init__(self):
        super().__init__()
        self.teacher = None
        self.checked = 0
        self.mixed = 0

    def before_backward(self, strategy, **kwargs):
        if self.teacher is None:
            return
        x, y, _, t = strategy.mbatch
        with torch.no_grad():
            feats = strategy.model.trunk(x)
            logits = torch.cat([strategy.model.heads["0"](feats),
                                strategy.model.heads["1"](feats)], dim=1)
            q = torch.sigmoid(self.teacher.heads["0"](self.teacher.trunk(x)))
            onehot = F.one_hot(y, 2).double() * (t == 1).unsqueeze(1)
            target = torch.cat([q.double(), onehot], dim=1)
            p = torch.sigmoid(logits.double())
            hand = -(target * p.log() + (1 - target) * (1 - p).log()).sum(1).mean()
        torch.testing.assert_close(strategy.loss.double().reshape(()), hand, rtol=1e-5, atol=1e-6)
        self.checked += 1
        self.mixed += int((t == 0).any())


def test_training_loss_is_the_papers_sigmoid_distillation_loss():
    check = _LossCheck()
    strategy, bm = _two_task_strategy(RecipeConfig(mode="fixed"), 2, check)
    strategy.train(bm.train_stream[0])
    teacher = copy.deepcopy(strategy.model).eval()
    check.teacher = teacher
    strategy.train(bm.train_stream[1])
    # two epochs of ⌈(48 + 20 exemplars) / 16⌉ batches, some mixing both tasks
    assert check.checked == 2 * 5 and check.mixed > 0


def test_validation_loss_includes_the_distillation_term():
    """The recipe's validation loss (computed after every epoch, before any restore) is the
    paper's loss on the held-out samples: the own head's one-hot term plus the old head's
    distillation towards the previous network."""
    seen = []

    class Capture(SupervisedPlugin):
        def after_training_epoch(self, strategy, **kwargs):
            recipe = plugin_of(strategy, TrainingRecipePlugin)
            x, y, _ = materialize(recipe.valid_data)
            y = y.long()
            plugin = strategy.icarl_plugin
            if plugin.teacher is None:  # the first task: nothing to distil
                return
            with torch.no_grad():
                feats = strategy.model.trunk(x)
                new = strategy.model.heads["1"](feats)
                own = F.binary_cross_entropy_with_logits(new, F.one_hot(y, 2).float(),
                                                         reduction="none").sum(1).mean()
                old = strategy.model.heads["0"](feats)
                q = torch.sigmoid(plugin.teacher.heads["0"](plugin.teacher.trunk(x)))
                distil = F.binary_cross_entropy_with_logits(old, q, reduction="none")
                seen.append((recipe.last_valid_loss, float(own), float(distil.sum(1).mean())))

    strategy, bm = _two_task_strategy(RecipeConfig(valid_fraction=0.25), 3, Capture())
    strategy.train(bm.train_stream[0])
    seen.clear()
    strategy.train(bm.train_stream[1])
    valid, own, distil = seen[0]  # first epoch: no best-weights restore yet
    assert distil > 1e-3
    assert valid == pytest.approx(own + distil, rel=1e-5)


# -------------------------------------------------------------------------- the runner


@pytest.mark.parametrize("scenario", ["split-digits", "permuted-digits"])
def test_trains_both_embedded_scenarios_above_chance(scenario):
    rec = run_experiment(Experiment(scenario, "icarl", 0, FAST))
    acc = np.asarray(rec["accuracy"])
    chance = np.asarray(rec["random_accuracy"])
    assert acc.shape == (5, 5) and np.isfinite(acc).all()
    for t in range(5):  # every task trained so far, after every task
        assert (acc[t, : t + 1] > chance[: t + 1] + 0.2).all(), (t, acc[t])
    n_classes = 2 if scenario == "split-digits" else 10
    agnostic = rec["agnostic_accuracy"]
    assert [len(row) for row in agnostic] == [1, 2, 3, 4, 5]
    # one prediction among all classes seen: chance is 1 / (n_classes * (t + 1))
    assert all(np.mean(row) > 1 / (n_classes * len(row)) + 0.2 for row in agnostic)
    assert all(0 < m <= 200 for m in rec["memory_samples"])


def test_same_seed_same_record_and_memory(monkeypatch):
    built = _capture(monkeypatch)
    over = {"train": {"epochs": 2}, "icarl": {"mem_size": 40}}
    a = run_experiment(Experiment("split-digits", "icarl", 3, over))
    b = run_experiment(Experiment("split-digits", "icarl", 3, over))
    assert {k: v for k, v in a.items() if k not in TIMINGS} == \
        {k: v for k, v in b.items() if k not in TIMINGS}
    ma, mb = plugin_of(built[0], ICaRLPlugin).exemplars, plugin_of(built[1], ICaRLPlugin).exemplars
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    c = run_experiment(Experiment("split-digits", "icarl", 4, over))
    assert c["accuracy"] != a["accuracy"]
    # the state kept between tasks saves with torch.save and scores the same when loaded
    strategy, plugin = built[0], plugin_of(built[0], ICaRLPlugin)
    buf = io.BytesIO()
    torch.save(plugin.__dict__, buf)
    buf.seek(0)
    loaded = ICaRLPlugin(mem_size=1)
    loaded.__dict__.update(torch.load(buf, weights_only=False))
    x = get_scenario("split-digits").build(3, Path("data")).tasks[0].test_x
    strategy.model.eval()
    assert torch.equal(loaded.agnostic_scores(strategy, x, [0, 1, 2, 3, 4]),
                       plugin.agnostic_scores(strategy, x, [0, 1, 2, 3, 4]))
