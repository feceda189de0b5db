"""The paper's remaining baselines: SGD-F, IMM-mean, IMM-mode, LFL, PathNet, PNN.

Each is trained on a tiny task-incremental stream through the registry (as the runner builds
it: every head created up front), with the optimizers and training recipe of the suite.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from strategies import (
    STRATEGIES,
    ConfigError,
    MultiHeadNet,
    PathNetNet,
    ProgressiveNet,
    RecipeConfig,
    TrainConfig,
    TrainingRecipePlugin,
    get_strategy,
)
from strategies.baselines.imm import diagonal_fisher
from strategies.registry import BuildContext
from tests.support.trunks import (
    OPTIMIZERS,
    TRUNKS,
    clone_params,
    fast_plugins,
    logits,
    make_stream,
    multihead_net,
    quiet_evaluator,
)

BASELINES = ["sgd-f", "imm-mean", "imm-mode", "lfl", "pathnet", "pnn"]
#: a PathNet small enough for a test (the paper's is 16/3/20)
SMALL_PATHNET = {"modules": 4, "active": 2, "generations": 2, "path_epochs": 0.5}


pytestmark = pytest.mark.usefixtures("one_thread")


def build(name: str, *, trunk: str = "mlp", opt: str = "sgd", recipe: bool = False,
          n_tasks: int = 3, extra=(), overrides=None, epochs: int = 2):
    """The registry's strategy on a multi-head model with ``n_tasks`` heads (as the runner)."""
    torch.manual_seed(0)
    make_trunk, shape = TRUNKS[trunk]
    model = multihead_net(make_trunk(), shape)
    for t in range(n_tasks):
        model.add_task(t, 2)
    train = TrainConfig(lr=0.05, batch_size=16, epochs=epochs, eval_batch_size=64,
                        recipe="paper" if recipe else "fixed", patience=1)
    plugins = [TrainingRecipePlugin(RecipeConfig(valid_fraction=0.25, patience=1))] \
        if recipe else []
    ctx = BuildContext(model=model, optimizer=OPTIMIZERS[opt](model.parameters()),
                       train=train, plugins=fast_plugins(*plugins, *extra), device="cpu",
                       evaluator=quiet_evaluator())
    spec = get_strategy(name)
    return spec.build(ctx, spec.config(overrides or {}))


def stream(trunk: str = "mlp", n_tasks: int = 3):
    return make_stream(n_tasks, TRUNKS[trunk][1], n_train=48, n_test=32)


def trunk_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.trunk.named_parameters()}


# ------------------------------------------------------------------------ registry
def test_registry_lists_the_six_baselines_with_the_papers_defaults():
    for name in BASELINES:
        assert name in STRATEGIES and name == name.lower()
        spec = STRATEGIES[name]
        assert spec.name == name
        assert spec.description and "\n" not in spec.description
        assert dataclasses.is_dataclass(spec.params)
        assert not spec.gated and not spec.joint
    defaults = {name: get_strategy(name).defaults() for name in BASELINES}
    assert defaults["sgd-f"] == {}
    assert defaults["imm-mean"] == {"lambda": 1e-4}
    assert defaults["imm-mode"]["lambda"] == 0.01
    assert defaults["lfl"]["lambda"] == 0.05
    assert {k: defaults["pathnet"][k] for k in ("modules", "active", "generations")} == {
        "modules": 16, "active": 3, "generations": 20}
    assert defaults["pnn"] == {"width": None}


@pytest.mark.parametrize(
    ("name", "overrides", "match"),
    [
        ("pathnet", {"active": "17"}, "pathnet.active"),
        ("pathnet", {"population": "1"}, "pathnet.population"),
        ("pathnet", {"path_epochs": "0"}, "pathnet.path_epochs"),
        ("pnn", {"width": "1.5"}, "pnn.width"),
        ("imm-mode", {"eps": "0"}, "imm-mode.eps"),
        ("imm-mean", {"lambda": "-1"}, "imm-mean.lambda"),
        ("lfl", {"features": "both"}, "choose one of eval, train"),
    ],
)
def test_bad_baseline_parameters_are_rejected(name, overrides, match):
    with pytest.raises(ConfigError, match=match):
        get_strategy(name).config(overrides)


# -------------------------------------------------------------------------- SGD-F
@pytest.mark.parametrize("recipe", [False, True], ids=["carried-state", "recipe"])
@pytest.mark.parametrize("opt", ["sgd_momentum", "adamw"])
def test_sgd_f_changes_only_the_new_heads(opt, recipe):
    bm, _, test = stream()
    strategy = build("sgd-f", opt=opt, recipe=recipe)
    model = strategy.model
    initial = clone_params(model)
    snaps, first = [], None
    for t in range(3):
        strategy.train(bm.train_stream[t])
        snaps.append(clone_params(model))
        first = logits(model, test[0][0], 0) if first is None else first
    trunk = [n for n in initial if n.startswith("trunk.")]
    assert any(not torch.equal(snaps[0][n], initial[n]) for n in trunk)  # task 1 trains it
    for t in (1, 2):
        for n in trunk:
            assert torch.equal(snaps[t][n], snaps[0][n]), n
        head = [n for n in initial if n.startswith(f"heads.{t}.")]
        assert all(not torch.equal(snaps[t][n], snaps[t - 1][n]) for n in head)
        for u in range(t):  # old heads bit-identical
            for n in (n for n in initial if n.startswith(f"heads.{u}.")):
                assert torch.equal(snaps[t][n], snaps[u][n]), n
    assert torch.equal(logits(model, test[0][0], 0), first)


# ---------------------------------------------------------------------------- IMM
class TrunkRecorder(SupervisedPlugin):
    """Trunk at the start of each experience and right after training (before any merge)."""

    def __init__(self):
        super().__init__()
        self.start: list[dict] = []
        self.trained: list[dict] = []
        self.heads: list[dict] = []

    def before_training_exp(self, strategy, **kwargs):
        self.start.append(trunk_state(strategy.model))

    def after_training_exp(self, strategy, **kwargs):
        self.trained.append(trunk_state(strategy.model))
        t = strategy.experience.task_labels[0]
        self.heads.append(clone_params(strategy.model.heads[str(t)]))


@pytest.mark.parametrize("recipe", [False, True], ids=["fixed", "recipe"])
def test_imm_mean_writes_the_exact_average_of_the_trained_trunks(recipe):
    bm, _, _ = stream()
    rec = TrunkRecorder()
    strategy = build("imm-mean", recipe=recipe, extra=(rec,))
    model = strategy.model
    merged = []
    for t in range(3):
        strategy.train(bm.train_stream[t])
        merged.append(trunk_state(model))
        for n, p in merged[-1].items():
            hand = torch.stack([rec.trained[u][n].double() for u in range(t + 1)]).mean(0)
            torch.testing.assert_close(p, hand.float(), rtol=1e-6, atol=1e-7)
        for n, v in rec.heads[t].items():  # heads are not averaged
            assert torch.equal(model.heads[str(t)].state_dict()[n], v)
    for t in (1, 2):  # each task starts from (and is pulled towards) the merged model
        for n, v in rec.start[t].items():
            assert torch.equal(v, merged[t - 1][n])
        assert any(not torch.equal(merged[t][n], rec.trained[t][n]) for n in merged[t])


def test_imm_l2_transfer_pulls_towards_the_merged_model():
    bm, _, _ = stream(n_tasks=2)

    def drift(lam):
        rec = TrunkRecorder()
        strategy = build("imm-mean", extra=(rec,), overrides={"lambda": lam}, epochs=3)
        strategy.train(bm.train_stream[0])
        strategy.train(bm.train_stream[1])
        return sum(float((rec.trained[1][n] - rec.start[1][n]).norm()) for n in rec.start[1])

    assert drift(5.0) < 0.5 * drift(0.0)


def test_diagonal_fisher_matches_a_hand_computation():
    torch.manual_seed(0)
    model = MultiHeadNet(nn.Sequential(nn.Linear(4, 3), nn.Tanh()), 3, [2])
    x, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    data = (x, y, torch.zeros(10, dtype=torch.long))
    params = dict(model.trunk.named_parameters())
    for batch in (1, 4):
        fisher = diagonal_fisher(model, params, data, batch)
        hand = {n: torch.zeros_like(p) for n, p in params.items()}
        for i in range(0, 10, batch):
            model.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + batch], 0), y[i:i + batch]).backward()
            for n, p in params.items():
                hand[n] += len(y[i:i + batch]) * p.grad ** 2 / 10
        for n in params:
            torch.testing.assert_close(fisher[n], hand[n])
            assert fisher[n].abs().sum() > 0


def test_imm_mode_writes_the_fisher_weighted_merge():
    bm, _, _ = stream()
    rec = TrunkRecorder()
    strategy = build("imm-mode", extra=(rec,))
    plugin = strategy.imm_plugin
    model = strategy.model
    fishers = []
    for t in range(3):
        strategy.train(bm.train_stream[t])
        fishers.append({n: f.clone() for n, f in plugin.last_fisher.items()})
        eps = plugin.eps
        for n, p in model.trunk.named_parameters():
            w = [fishers[u][n].double() + eps for u in range(t + 1)]
            num = sum(wu * rec.trained[u][n].double() for u, wu in enumerate(w))
            torch.testing.assert_close(p.detach(), (num / sum(w)).float(), rtol=1e-6, atol=1e-7)
    # the Fisher weighting matters: the merge is neither the last model nor the plain mean
    final = trunk_state(model)
    mean = {n: torch.stack([r[n] for r in rec.trained]).mean(0) for n in final}
    assert any(not torch.allclose(final[n], mean[n], atol=1e-5) for n in final)
    assert any(not torch.equal(final[n], rec.trained[-1][n]) for n in final)


# ---------------------------------------------------------------------------- LFL
class FeatureCheck(SupervisedPlugin):
    """Hand computation of LFL's penalty for each mini-batch (runs before the LFL plugin)."""

    def __init__(self):
        super().__init__()
        self.prev = None
        self.prevs: list[nn.Module] = []
        self.hand: list[torch.Tensor] = []
        self.seen: list[torch.Tensor] = []
        self.training_mode: list[bool] = []

    def after_training_exp(self, strategy, **kwargs):
        import copy

        self.prev = copy.deepcopy(strategy.model.trunk).eval()
        self.prevs.append(self.prev)

    @torch.no_grad()
    def before_backward(self, strategy, **kwargs):
        if self.prev is None:
            return
        trunk = strategy.model.trunk
        trunk.eval()
        now = trunk(strategy.mb_x)
        trunk.train()
        self.hand.append(((now - self.prev(strategy.mb_x)) ** 2).sum() / 2)

    def after_backward(self, strategy, **kwargs):
        lfl = next(p for p in strategy.plugins if hasattr(p, "last_penalty"))
        if self.prev is not None and lfl.last_penalty is not None:
            self.seen.append(lfl.last_penalty.clone())
            self.training_mode.append(strategy.model.training)


def test_lfl_penalty_is_the_summed_feature_distance_to_the_previous_model():
    bm, _, _ = stream(n_tasks=2)
    check = FeatureCheck()
    strategy = build("lfl", extra=(check,))
    strategy.train(bm.train_stream[0])
    strategy.train(bm.train_stream[1])
    assert len(check.hand) == len(check.seen) > 1
    assert float(check.seen[0]) == 0.0  # same weights, no dropout: identical features
    assert float(check.seen[-1]) > 0
    for hand, seen in zip(check.hand, check.seen, strict=True):
        torch.testing.assert_close(seen, hand)
    assert all(check.training_mode)  # dropout stays on for the training pass


def test_lfl_keeps_the_features_closer_to_the_previous_model():
    bm, train, _ = stream(n_tasks=2)
    x_new = train[1][0]

    def distance(overrides):
        check = FeatureCheck()
        strategy = build("lfl", extra=(check,), overrides=overrides, epochs=3)
        strategy.train(bm.train_stream[0])
        strategy.train(bm.train_stream[1])
        trunk = strategy.model.trunk.eval()
        with torch.no_grad():
            return float((trunk(x_new) - check.prevs[0](x_new)).norm())

    assert distance({"lambda": 0.05}) < 0.5 * distance({"lambda": 0.0})
    assert distance({"lambda": 0.05, "features": "train"}) < distance({"lambda": 0.0})


@pytest.mark.parametrize("mode", [True, False])
def test_lfl_feature_pass_leaves_the_trunk_in_its_mode(mode):
    """LFL computes the features in eval mode and restores the trunk's own mode (a sliced
    Sequential is always in training mode, so its mode must not be the one restored)."""
    from types import SimpleNamespace

    from strategies.baselines.lfl import LFLPlugin

    trunk = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Dropout(0.5), nn.Linear(3, 3),
                          nn.Dropout(0.5))
    model = SimpleNamespace(trunk=trunk, heads=nn.ModuleDict())
    x = torch.randn(5, 4)
    strategy = SimpleNamespace(model=model, mb_x=x,
                               experience=SimpleNamespace(task_labels=[0]))
    lfl = LFLPlugin(features="eval")
    trunk.train(mode)
    lfl.before_training_exp(strategy)
    feat = lfl._current_features(strategy)
    assert [m.training for m in trunk.modules()] == [mode] * 6
    with torch.no_grad():
        assert torch.equal(feat, trunk.eval()[:4](x))  # features without the last dropout


# ------------------------------------------------------------ PNN and PathNet
ISOLATION = [("pnn", {}), ("pathnet", SMALL_PATHNET)]


@pytest.mark.parametrize(("name", "overrides"), ISOLATION, ids=["pnn", "pathnet"])
@pytest.mark.parametrize(("trunk", "opt", "recipe"), [
    ("mlp", "sgd_momentum", False), ("mlp", "adamw", True), ("conv", "adamw", False),
    ("conv", "sgd_momentum", True),
])
def test_earlier_tasks_outputs_stay_bit_identical(name, overrides, trunk, opt, recipe):
    bm, _, test = stream(trunk)
    strategy = build(name, trunk=trunk, opt=opt, recipe=recipe, overrides=overrides)
    model = strategy.model
    assert isinstance(model, ProgressiveNet if name == "pnn" else PathNetNet)
    assert model.tasks == [0, 1, 2]
    outs = {}
    for t in range(3):
        before = logits(model, test[t][0], t)
        strategy.train(bm.train_stream[t])
        outs[t] = logits(model, test[t][0], t)
        assert not torch.equal(outs[t], before)  # the task did train
        for u in range(t):
            assert torch.equal(logits(model, test[u][0], u), outs[u]), (t, u)


def test_pnn_columns_are_narrower_and_read_the_earlier_columns():
    bm, _, test = stream()
    strategy = build("pnn")
    model = strategy.model
    trunk_params = sum(p.numel() for p in multihead_net(TRUNKS["mlp"][0](), (64,))
                       .trunk.parameters())
    columns = sum(p.numel() for p in model.columns.parameters())
    assert columns <= trunk_params
    assert all(w < 32 for w in model.widths)  # narrower than the 32-unit trunk layers
    assert [len(model.columns[str(t)].adapters) for t in range(3)] == [0, 1, 1]
    for t in range(3):
        strategy.train(bm.train_stream[t])
    x = test[2][0]
    out = logits(model, x, 2)
    with torch.no_grad():
        model.columns["0"].layers[0].weight.add_(1.0)
    assert not torch.equal(logits(model, x, 2), out)  # laterals carry column 0 into task 2


def test_pathnet_evolves_paths_and_freezes_the_winners():
    bm, _, _ = stream()
    strategy = build("pathnet", overrides={**SMALL_PATHNET, "generations": 3})
    model = strategy.model
    plugin = strategy.pathnet_plugin
    assert (model.n_modules, model.n_active) == (4, 2)
    paths = []
    for t in range(3):
        strategy.train(bm.train_stream[t])
        paths.append(model.path(t))
        assert len(plugin.fitness[t]) == 3 and all(len(g) == 2 for g in plugin.fitness[t])
        for layer, path_layer in zip(model.frozen, paths[t], strict=True):
            assert set(path_layer) <= layer
    assert [model.path(t) for t in range(3)] == paths
    state = model.state_dict()  # paths and frozen modules survive a state_dict round trip
    fresh = PathNetNet.from_multihead(multihead_net(TRUNKS["mlp"][0](), (64,)), model.width,
                                      4, 2)
    for t in range(3):
        fresh.add_task(t, 2)
    fresh.load_state_dict(state)
    assert [fresh.path(t) for t in range(3)] == paths and fresh.frozen == model.frozen


def test_pathnet_default_width_matches_the_trunk_size():
    model = multihead_net(TRUNKS["conv"][0](), (1, 8, 8))
    model.add_task(0, 2)
    net = PathNetNet.from_multihead(model)
    modules = sum(p.numel() for p in net.layers.parameters())
    trunk = sum(p.numel() for p in model.trunk.parameters())
    assert modules <= trunk
    assert len(net.layers) == 2 and all(len(layer) == 16 for layer in net.layers)


# -------------------------------------------------------------------- end to end
def test_cli_runs_the_six_baselines_on_split_digits(tmp_path, monkeypatch):
    from benchmark import cli
    from benchmark.records import read_record, record_path

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "res"
    code = cli.main(["run", "--scenario", "split-digits", "--strategies", ",".join(BASELINES),
                     "--seeds", "0", "--epochs", "3", "--out", str(out), "--wandb", "disabled",
                     "--no-progress"])
    assert code == 0
    for name in BASELINES:
        rec = read_record(record_path(out, "split-digits", name, 0))  # validates
        assert (rec["strategy"], rec["seed"]) == (name, 0)
        acc = torch.tensor(rec["accuracy"])
        assert acc.shape == (5, 5) and ((acc >= 0) & (acc <= 1)).all()
        assert acc.diagonal().max() > 0.9, name  # it learns (3 epochs: not every task yet)
        assert max(rec["epochs"]) <= 3
