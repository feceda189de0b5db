"""Checkpoint and resume: stopping after task 2 and resuming in a fresh process-like setup
(fresh model, optimizer, strategy and plugin) must give exactly the uninterrupted result.

Also the mask statistics (HATNet.mask_statistics, the paper's capacity / compression
monitoring) against hand computation, and across a resume.
"""

from __future__ import annotations

import io

import pytest
import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from strategies import (
    HAT,
    HATError,
    HATLinear,
    HATNet,
    RecipeConfig,
    TrainingRecipePlugin,
)
from tests.support.trunks import (
    ALL_TRUNKS,
    CONV_SHAPE,
    MLP_SHAPE,
    accuracy,
    conv_trunk,
    fast_plugins,
    hat_net,
    logits,
    make_stream,
    mlp_trunk,
    quiet_evaluator,
)

pytestmark = pytest.mark.usefixtures("one_thread")

N_TASKS, SPLIT = 4, 2

#: name -> (optimizer factory, use the paper's recipe (optimizer rebuilt every experience))
SETUPS = {
    "sgd-fixed": (lambda ps: torch.optim.SGD(ps, lr=0.1), False),
    "adam-recipe": (lambda ps: torch.optim.Adam(ps, lr=0.01), True),
    "adamw-fixed": (lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.01), False),
}


def _strategy(model, optimizer, recipe: bool):
    plugins = [TrainingRecipePlugin(RecipeConfig(valid_fraction=0.25, patience=1), lr=0.01)
               ] if recipe else []
    return HAT(
        model=model, optimizer=optimizer, smax=50.0, train_mb_size=16, train_epochs=2,
        plugins=fast_plugins(*plugins), evaluator=quiet_evaluator(),
    )


def _train(strategy, model, bm, test, tasks, acc):
    for i in tasks:
        strategy.train(bm.train_stream[i])
        acc.append([accuracy(model, test[j][0], test[j][1], j) for j in range(i + 1)])


def _param_names_in_optimizer_order(optimizer, model) -> list[list[str]]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [[name_of[id(p)] for p in g["params"]] for g in optimizer.param_groups]


def _checkpoint(strategy, model) -> bytes:
    buf = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": strategy.optimizer.state_dict(),
            "optimizer_params": _param_names_in_optimizer_order(strategy.optimizer, model),
            "hat": strategy.hat_plugin.state_dict(),
            "rng": torch.get_rng_state(),
        },
        buf,
    )
    return buf.getvalue()


def _resume(blob: bytes, make_trunk, shape, make_opt, recipe: bool):
    ck = torch.load(io.BytesIO(blob), weights_only=False)
    torch.manual_seed(12345)  # the fresh objects' own random init must not matter
    model = hat_net(make_trunk(), shape)  # no tasks: load_state_dict recreates them
    assert model.tasks == []
    model.load_state_dict(ck["model"])
    # same parameters in the same order as the saved optimizer (Avalanche appended each
    # task's parameters when it appeared), so that its state maps to the right tensors
    named = dict(model.named_parameters())
    groups = [[named[n] for n in names] for names in ck["optimizer_params"]]
    optimizer = make_opt(groups[0])
    optimizer.load_state_dict(ck["optimizer"])
    strategy = _strategy(model, optimizer, recipe)
    # Avalanche resets the optimizer state on a strategy's first experience unless it
    # already knows which parameters the optimizer covers
    strategy.optimized_param_id = dict(model.named_parameters())
    strategy.hat_plugin.load_state_dict(ck["hat"])
    torch.set_rng_state(ck["rng"])
    return model, strategy


@pytest.mark.parametrize(
    ("setup", "trunk"),
    [("sgd-fixed", "mlp"), ("adam-recipe", "mlp"), ("adamw-fixed", "mlp"), ("adamw-fixed", "conv"),
     ("adam-recipe", "conv_bn"), ("adamw-fixed", "resnet32")],
)
def test_resume_after_two_tasks_is_exact(setup, trunk):
    make_opt, recipe = SETUPS[setup]
    make_trunk, shape = ALL_TRUNKS[trunk]
    bm, _, test = make_stream(N_TASKS, shape, n_train=48)

    torch.manual_seed(0)
    model = hat_net(make_trunk(), shape)
    strategy = _strategy(model, make_opt(model.parameters()), recipe)
    acc_full: list[list[float]] = []
    _train(strategy, model, bm, test, range(N_TASKS), acc_full)
    out_full = [logits(model, test[j][0], j) for j in range(N_TASKS)]
    stats_full = model.mask_statistics()

    torch.manual_seed(0)
    model = hat_net(make_trunk(), shape)
    strategy = _strategy(model, make_opt(model.parameters()), recipe)
    acc_resumed: list[list[float]] = []
    _train(strategy, model, bm, test, range(SPLIT), acc_resumed)
    blob = _checkpoint(strategy, model)
    del model, strategy

    model, strategy = _resume(blob, make_trunk, shape, make_opt, recipe)
    assert model.tasks == list(range(SPLIT))
    _train(strategy, model, bm, test, range(SPLIT, N_TASKS), acc_resumed)
    out_resumed = [logits(model, test[j][0], j) for j in range(N_TASKS)]

    assert acc_resumed == acc_full
    for j in range(N_TASKS):
        assert torch.equal(out_resumed[j], out_full[j]), f"task {j} differs after resume"
    assert model.mask_statistics() == stats_full
    # the plugin state came along: an already trained task is still refused
    with pytest.raises(HATError, match="already trained"):
        strategy.train(bm.train_stream[0])


@pytest.mark.parametrize("trunk", ["conv", "conv_bn"])
def test_fresh_model_recreates_tasks_and_cumulative_masks_on_load(trunk):
    torch.manual_seed(0)
    make_trunk = ALL_TRUNKS[trunk][0]
    bm, _, test = make_stream(2, CONV_SHAPE, n_train=32)
    model = hat_net(make_trunk(), CONV_SHAPE)
    strategy = _strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), False)
    for exp in bm.train_stream:
        strategy.train(exp)
    fresh = hat_net(make_trunk(), CONV_SHAPE)
    fresh.load_state_dict(model.state_dict())
    assert fresh.tasks == [0, 1]
    for a, b in zip(fresh.cumulative_masks(), model.cumulative_masks(), strict=True):
        assert torch.equal(a, b)
    for t in (0, 1):
        assert torch.equal(logits(fresh, test[t][0], t), logits(model, test[t][0], t))
    # strict loading still catches a checkpoint of another architecture
    with pytest.raises(RuntimeError):
        hat_net(mlp_trunk(), MLP_SHAPE).load_state_dict(model.state_dict())


@pytest.mark.parametrize("soft", [False, True])
def test_resumed_strategy_evaluates_with_its_own_smax_and_mask_mode(soft):
    """Evaluating right after loading (before any training in the new session) uses the
    strategy's smax and mask mode, not the ones the model was built with."""

    class Outputs(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.out: list[torch.Tensor] = []

        def after_eval_forward(self, strategy, **kwargs):
            self.out.append(strategy.mb_output.detach().clone())

    def make(model, rec):
        return HAT(
            model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), smax=30.0,
            soft_masks=soft, train_mb_size=16, eval_mb_size=64, plugins=fast_plugins(rec),
            evaluator=quiet_evaluator(),
        )

    torch.manual_seed(0)
    bm, _, _ = make_stream(2, MLP_SHAPE, n_train=32)
    model, rec = hat_net(mlp_trunk(), MLP_SHAPE), Outputs()
    strategy = make(model, rec)
    strategy.train(bm.train_stream[0])
    strategy.eval(bm.test_stream[0])
    # the fresh model is built with the other mask mode (and smax 400): the strategy's
    # settings must win, whichever mode it uses
    fresh, rec2 = hat_net(mlp_trunk(), MLP_SHAPE, binary_masks=soft, smax=400.0), Outputs()
    fresh.load_state_dict(model.state_dict())
    make(fresh, rec2).eval(bm.test_stream[0])
    assert len(rec.out) == len(rec2.out) == 1
    assert torch.equal(rec2.out[0], rec.out[0])


# ----------------------------------------------------------- mask statistics
def _set_embeddings(model: HATNet, task: int, values: list[list[float]]):
    with torch.no_grad():
        for layer, v in zip(model.gated_layers, values, strict=True):
            layer.embedding(task).copy_(torch.tensor(v))


def test_mask_statistics_by_hand_linear():
    trunk = nn.Sequential(HATLinear(3, 4), nn.ReLU(), HATLinear(4, 2), nn.ReLU())
    model = HATNet(trunk, (3,), [2, 2])
    _set_embeddings(model, 0, [[1, -1, 1, -1], [1, -1]])  # units {0, 2} and {0}
    _set_embeddings(model, 1, [[1, 1, -1, -1], [1, 1]])  # units {0, 1} and {0, 1}
    stats = model.mask_statistics()
    assert stats["tasks"] == [0, 1]
    assert stats["units"] == [4, 2]
    assert len(stats["layers"]) == 2 and len(set(stats["layers"])) == 2
    assert stats["used"] == [[2 / 4, 2 / 4], [1 / 2, 2 / 2]]
    # task 1 reuses unit 0 of layer 1 (1 of its 2) and unit 0 of layer 2 (1 of its 2)
    assert stats["overlap"] == [[0.0, 1 / 2], [0.0, 1 / 2]]
    assert stats["cumulative"] == [[2 / 4, 3 / 4], [1 / 2, 2 / 2]]
    # weights: 4·3 + 2·4 = 20; task 0 keeps 2·3 (ungated input) + 1·2 = 8; task 1 6 + 2·2
    assert stats["weights_kept"] == pytest.approx([8 / 20, 10 / 20])
    assert stats["units_kept"] == pytest.approx([3 / 6, 4 / 6])
    # a subset and order of tasks
    assert model.mask_statistics([1])["overlap"] == [[0.0], [0.0]]


def test_mask_statistics_by_hand_conv_flatten_linear():
    model = hat_net(conv_trunk(), CONV_SHAPE, head_sizes=[2])  # conv 1→4 (3×3), fc 36→16
    fc_on = [1.0] * 5 + [-1.0] * 11
    _set_embeddings(model, 0, [[1, 1, -1, -1], fc_on])
    stats = model.mask_statistics()
    total = 4 * 1 * 9 + 16 * 36
    kept = 2 * 1 * 9 + 5 * (2 * 9)  # conv: 2 channels × 9 weights; fc: 5 units × 2 channels × 9
    assert stats["weights_kept"] == pytest.approx([kept / total])
    assert stats["used"] == [[0.5], [5 / 16]]
    assert stats["units_kept"] == pytest.approx([7 / 20])
