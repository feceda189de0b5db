"""Helpers shared by the rehearsal baselines' tests (tests/strategies/rehearsal/): the plugin
class of each method, a synthetic traceable sample stream, a minimal strategy stub for calling
a plugin's callbacks by hand, and a registry-built strategy on a tiny multi-head MLP."""

from __future__ import annotations

import torch
from torch import nn

from strategies import (
    AGEMPlugin,
    DERPlugin,
    ERACEPlugin,
    GDumbPlugin,
    RecipeConfig,
    ReplayPlugin,
    TrainConfig,
    TrainingRecipePlugin,
    get_strategy,
    make_optimizer,
)
from strategies.registry import BuildContext
from tests.support.trunks import (
    MLP_SHAPE,
    fast_plugins,
    mlp_trunk,
    multihead_net,
    quiet_evaluator,
)

PLUGINS = {"replay": ReplayPlugin, "agem": AGEMPlugin, "der": DERPlugin, "er-ace": ERACEPlugin,
           "gdumb": GDumbPlugin}


def _stream(batches: list[tuple[int, int, int]]):
    """Synthetic samples: ``(task, label, n)`` per batch; each sample's x encodes a unique id,
    its task and its label, so that the memory's rows can be traced back."""
    uid = 0
    for task, label, n in batches:
        ids = torch.arange(uid, uid + n, dtype=torch.float32)
        uid += n
        x = torch.stack((ids, torch.full_like(ids, task), torch.full_like(ids, label)), dim=1)
        yield x, torch.full((n,), label), torch.full((n,), task)


class _Stub:
    def __init__(self, model):
        self.model = model
        self._criterion = nn.CrossEntropyLoss()
        self.device = "cpu"


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
