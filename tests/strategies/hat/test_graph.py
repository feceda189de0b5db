"""Gate groups from the traced module graph (residual networks under HAT)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from strategies import HATError
from strategies.hat.graph import gate_groups
from tests.support.trunks import TRUNKS


def _gated(trunk: nn.Module) -> list[nn.Module]:
    return [m for m in trunk.modules() if type(m) in (nn.Linear, nn.Conv2d)]


@pytest.mark.parametrize("name", sorted(TRUNKS))
def test_a_chain_has_one_group_per_layer_each_fed_by_the_previous(name):
    trunk = TRUNKS[name][0]()
    graph = gate_groups(trunk, _gated(trunk))
    n = len(_gated(trunk))
    assert graph.groups == [[i] for i in range(n)]
    assert graph.feeds == [None] + list(range(n - 1))


class _Block(nn.Module):
    """A basic residual block: conv-BN-ReLU-conv-BN, plus the input or a 1×1 projection."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.proj = None if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        out = out + (x if self.proj is None else self.proj(x))
        return torch.relu(out)


def test_residual_sums_share_one_gate_and_inputs_are_fed_by_the_stream():
    trunk = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), _Block(4, 4), _Block(4, 8),
                          _Block(8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    layers = _gated(trunk)
    names = {id(m): n for n, m in trunk.named_modules()}
    graph = gate_groups(trunk, layers)
    groups = [[names[id(layers[i])] for i in g] for g in graph.groups]
    assert groups == [["0", "2.conv2"], ["2.conv1"], ["3.conv1"],
                      ["3.conv2", "3.proj", "4.conv2"], ["4.conv1"], ["7"]]
    feeds = {names[id(m)]: graph.feeds[i] for i, m in enumerate(layers)}
    assert feeds == {"0": None, "2.conv1": 0, "2.conv2": 1, "3.conv1": 0, "3.conv2": 2,
                     "3.proj": 0, "4.conv1": 3, "4.conv2": 4, "7": 3}


def test_torchvision_resnet18_trunk():
    model = torchvision.models.resnet18(num_classes=10)
    trunk = nn.Sequential(*list(model.children())[:-1], nn.Flatten())
    layers = _gated(trunk)
    graph = gate_groups(trunk, layers)
    names = [n for n, m in trunk.named_modules() if type(m) is nn.Conv2d]
    assert len(layers) == 20 and len(graph.groups) == 12
    streams = [[names[i] for i in g] for g in graph.groups if len(g) > 1]
    assert streams == [["0", "4.0.conv2", "4.1.conv2"]] + [
        [f"{s}.0.conv2", f"{s}.0.downsample.0", f"{s}.1.conv2"] for s in (5, 6, 7)]
    # every block's first conv has a gate of its own and reads the stream before the block
    for i, name in enumerate(names):
        if name.endswith("conv1") and name != "0":
            assert graph.groups[graph.group_of[i]] == [i]
            stage, block = int(name[0]), int(name[2])
            before = names.index(f"{stage}.0.conv2" if block == 1 else
                                 ("0" if stage == 4 else f"{stage - 1}.0.conv2"))
            assert graph.feeds[i] == graph.group_of[before]


class _Wrap(nn.Module):
    def __init__(self, fn, *mods):
        super().__init__()
        self.mods = nn.ModuleList(mods)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.mods, x)


@pytest.mark.parametrize(("fn", "match"), [
    (lambda m, x: m[1](torch.cat([m[0](x), m[2](x)], 1)), "'cat'"),
    (lambda m, x: m[1](torch.tanh(m[0](x))), "'tanh'"),
    (lambda m, x: m[1](m[0](x) + x), "not two gated"),
    (lambda m, x: m[1](m[0](x) * m[2](x)), "'mul'"),
    (lambda m, x: m[1](m[0](m[0](x))), "runs twice"),
    (lambda m, x: m[1](m[0](x).view(-1, 4)), "reshapes other than"),  # units into the batch
    (lambda m, x: m[1](torch.flatten(m[0](x))), "reshapes other than"),  # from dim 0
])
def test_graphs_hat_cannot_condition_are_refused(fn, match):
    width = 8 if "cat" in match else 4
    trunk = _Wrap(fn, nn.Linear(4, 4), nn.Linear(width, 2), nn.Linear(4, 4))
    with pytest.raises(HATError, match=match):
        gate_groups(trunk, list(trunk.mods))


def test_batchnorm_must_normalise_a_layer_output():
    trunk = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(HATError, match="directly follow"):
        gate_groups(trunk, _gated(trunk))
    trunk = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    with pytest.raises(HATError, match="Tanh"):
        gate_groups(trunk, _gated(trunk))


@pytest.mark.parametrize("family", ["mlp", "alexnet"])
def test_the_suites_wrapped_networks_are_chains(family):
    """HAT-converted trunks (HAT layers, the suite's Dropout, per-task norms) trace too."""
    from benchmark.networks import ModelConfig, build_model

    shape = (1, 8, 8) if family == "mlp" else (3, 32, 32)
    net = build_model(ModelConfig(family=family, hidden=16), shape, [2], gated=True)
    graph = gate_groups(net.trunk, net.gated_layers)
    n = len(net.gated_layers)
    assert graph.groups == [[i] for i in range(n)]
    assert graph.feeds == [None] + list(range(n - 1))


def test_batch_preserving_views_and_shape_queries_are_accepted():
    lin_a, lin_b = nn.Linear(4, 4), nn.Linear(4, 2)
    for fn in (lambda m, x: m[1](m[0](x).view(x.size(0), -1)),
               lambda m, x: m[1](m[0](x).reshape(x.shape[0], -1)),
               lambda m, x: m[1](torch.flatten(m[0](x), 1))):
        trunk = _Wrap(fn, lin_a, lin_b)
        assert gate_groups(trunk, [lin_a, lin_b]).feeds == [None, 0]


def test_a_normalised_layer_output_has_no_other_use():
    """The norm applies the layer's gate: a second reader would get the ungated output."""

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.d = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
            self.bn = nn.BatchNorm1d(4)

        def forward(self, x):
            h = self.a(x)
            return self.d(torch.relu(self.bn(h) + self.b(h)))

    trunk = Two()
    with pytest.raises(HATError, match="only use"):
        gate_groups(trunk, [trunk.a, trunk.b, trunk.d])
