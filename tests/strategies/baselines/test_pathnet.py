"""PathNet (strategies/baselines/pathnet.py): paths evolve and the winners are frozen; the
default width matches the trunk's size."""

from __future__ import annotations

import pytest

from strategies import PathNetNet
from tests.support.paper_baselines import SMALL_PATHNET, build, stream
from tests.support.trunks import (
    TRUNKS,
    multihead_net,
)

pytestmark = pytest.mark.usefixtures("one_thread")


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
