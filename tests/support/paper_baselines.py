"""Helpers shared by the tests of the paper's remaining baselines (SGD-F, IMM, LFL, PathNet,
PNN; tests/strategies/baselines/): the registry's strategy on a multi-head model with every
head created up front (as the runner builds it), a tiny task-incremental stream, and a
PathNet small enough for a test."""

from __future__ import annotations

import torch

from strategies import (
    RecipeConfig,
    TrainConfig,
    TrainingRecipePlugin,
    get_strategy,
)
from strategies.registry import BuildContext
from tests.support.trunks import (
    OPTIMIZERS,
    TRUNKS,
    fast_plugins,
    make_stream,
    multihead_net,
    quiet_evaluator,
)

#: a PathNet small enough for a test (the paper's is 16/3/20)
SMALL_PATHNET = {"modules": 4, "active": 2, "generations": 2, "path_epochs": 0.5}


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
