"""Helpers shared by the regularisation baselines' tests (EWC, SI, IMM, LwF, LFL;
tests/strategies/baselines/): a tiny multi-head MLP, the common strategy arguments and the
training recipe with a held-out validation part."""

from __future__ import annotations

import torch

from strategies import (
    RecipeConfig,
    TrainingRecipePlugin,
)
from tests.support.trunks import (
    MLP_SHAPE,
    fast_plugins,
    mlp_trunk,
    multihead_net,
    quiet_evaluator,
)

N_TRAIN = 48


VALID = 0.25  # 12 validation samples per task


def _model(n_tasks: int = 2):
    torch.manual_seed(0)
    model = multihead_net(mlp_trunk(), MLP_SHAPE)  # dropout 0.2 inside the trunk
    for t in range(n_tasks):
        model.add_task(t, 2)
    return model


def _common(model, *plugins, epochs: int = 2, lr: float = 0.05, eval_mb: int = 5) -> dict:
    return dict(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=lr),
                train_mb_size=8, train_epochs=epochs, eval_mb_size=eval_mb, device="cpu",
                plugins=fast_plugins(*plugins), evaluator=quiet_evaluator())


def _recipe(mode: str = "paper") -> TrainingRecipePlugin:
    return TrainingRecipePlugin(RecipeConfig(mode=mode, valid_fraction=VALID, patience=5),
                                lr=0.05)
