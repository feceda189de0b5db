"""Tests of the paper's networks (benchmark/networks.py, hat-reference §3) and the ResNets:
sizes computed by hand from the layer list, HAT and plain versions sharing the trunk, BatchNorm
placement and torch.fx tracing of the ResNets, ModelConfig validation."""

from __future__ import annotations

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import fx, nn

from benchmark.networks import (
    CifarResNet,
    Dropout,
    ModelConfig,
    alexnet_trunk,
    build_model,
    build_trunk,
    mlp_trunk,
    resnet18_trunk,
    resnet32_trunk,
)
from strategies import (
    ConfigError,
    HATBatchNorm2d,
    HATConv2d,
    HATLinear,
    HATNet,
    MultiHeadNet,
)

ALEXNET = ModelConfig(family="alexnet")
#: head sizes of the mixture's 8 tasks: CIFAR-10, CIFAR-100, MNIST, SVHN, Fashion-MNIST,
#: GTSRB, FaceScrub, notMNIST
MIXTURE_HEADS = [10, 100, 10, 10, 10, 43, 100, 10]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv(cin: int, cout: int, k: int) -> int:
    return cout * cin * k * k + cout


def fc(nin: int, nout: int) -> int:
    return nin * nout + nout


def alexnet_by_hand() -> tuple[int, list[tuple[int, ...]]]:
    """hat-reference §3 at 3×32×32: conv 64 k4, conv 128 k3, conv 256 k2, each followed by a
    2×2 max-pool; fc 2048, fc 2048. Spatial sizes: 32 → 29 → 14 → 12 → 6 → 5 → 2."""
    size = 32
    size = (size - 4 + 1) // 2
    assert size == 14
    size = (size - 3 + 1) // 2
    assert size == 6
    size = (size - 2 + 1) // 2
    assert size == 2
    flat = 256 * size * size
    total = conv(3, 64, 4) + conv(64, 128, 3) + conv(128, 256, 2) + fc(flat, 2048) + fc(2048, 2048)
    shapes = [(64, 3, 4, 4), (128, 64, 3, 3), (256, 128, 2, 2), (2048, flat), (2048, 2048)]
    return total, shapes


def weight_shapes(module: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(m.weight.shape) for m in module.modules()
            if isinstance(m, nn.Linear | nn.Conv2d)]


# ----------------------------------------------------------------------------- AlexNet


def test_alexnet_trunk_matches_the_paper():
    expected, shapes = alexnet_by_hand()
    trunk, features = build_trunk(ALEXNET, (3, 32, 32))
    assert features == 2048
    assert n_params(trunk) == expected
    assert 6.4e6 < expected < 6.6e6  # "about 6.5 M trunk parameters"
    assert weight_shapes(trunk) == shapes
    out = trunk.eval()(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 2048)


def test_alexnet_layer_order_and_dropout():
    trunk = alexnet_trunk((3, 32, 32))
    kinds = [type(m) for m in trunk]
    block = [nn.Conv2d, nn.ReLU, Dropout, nn.MaxPool2d]
    assert kinds == block * 3 + [nn.Flatten, nn.Linear, nn.ReLU, Dropout, nn.Linear,
                                 nn.ReLU, Dropout]
    drops = [m.p for m in trunk if isinstance(m, nn.Dropout)]
    assert drops == [0.2, 0.2, 0.5, 0.5, 0.5]
    assert [m.kernel_size for m in trunk if isinstance(m, nn.MaxPool2d)] == [2, 2, 2]
    assert not any(isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) for m in trunk.modules())


def test_alexnet_with_mixture_heads_is_about_7_1_million():
    trunk_count, _ = alexnet_by_hand()
    model = build_model(ALEXNET, (3, 32, 32), MIXTURE_HEADS, gated=False)
    expected = trunk_count + sum(fc(2048, k) for k in MIXTURE_HEADS)
    assert n_params(model) == expected
    assert round(expected / 1e6, 1) == 7.1


@pytest.mark.parametrize("heads", [[2, 2, 2], MIXTURE_HEADS])
def test_hat_alexnet_has_the_same_trunk_plus_embeddings(heads):
    plain = build_model(ALEXNET, (3, 32, 32), heads, gated=False)
    hat = build_model(ALEXNET, (3, 32, 32), heads, gated=True)
    assert weight_shapes(plain.trunk) == weight_shapes(hat.trunk)
    gated = [m for m in hat.trunk.modules() if isinstance(m, HATLinear | HATConv2d)]
    assert [m.units for m in gated] == [64, 128, 256, 2048, 2048]
    embeddings = len(heads) * (64 + 128 + 256 + 2048 + 2048)
    assert n_params(hat) == n_params(plain) + embeddings
    for task, k in enumerate(heads):
        assert hat.heads[str(task)].weight.shape == plain.heads[str(task)].weight.shape == (
            k, 2048)
        assert all(layer.embedding(task).shape == (layer.units,) for layer in gated)
    x = torch.randn(3, 3, 32, 32)
    hat.eval()
    plain.eval()
    assert hat(x, 1).shape == plain(x, 1).shape == (3, heads[1])


@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 28, 28), (3, 20, 20), (3, 40, 40)])
def test_alexnet_accepts_other_square_sizes(shape):
    trunk, features = build_trunk(ALEXNET, shape)
    assert trunk.eval()(torch.zeros(1, *shape)).shape == (1, features)
    hat = build_model(ALEXNET, shape, [3], gated=True).eval()
    assert hat(torch.zeros(2, *shape), 0).shape == (2, 3)


@pytest.mark.parametrize("shape", [(3, 8, 8), (3, 32, 28), (3, 15, 15), (1, 64)])
def test_alexnet_rejects_small_or_non_square_images(shape):
    with pytest.raises(ConfigError):
        build_model(ALEXNET, shape, [2], gated=False)


def test_alexnet_hidden_override():
    trunk, features = build_trunk(ModelConfig(family="alexnet", hidden=100), (3, 32, 32))
    assert features == 100
    assert weight_shapes(trunk)[-2:] == [(100, 1024), (100, 100)]


# ----------------------------------------------------------------------------- MLP


@pytest.mark.parametrize("hidden,layers", [(2000, 2), (800, 3), (100, 2), (5, 1)])
def test_mlp_sizes(hidden, layers):
    cfg = ModelConfig(family="mlp", hidden=hidden, layers=layers)
    trunk, features = build_trunk(cfg, (1, 28, 28))
    assert features == hidden
    widths = [784] + [hidden] * layers
    assert weight_shapes(trunk) == [(widths[i + 1], widths[i]) for i in range(layers)]
    assert n_params(trunk) == sum(fc(widths[i], widths[i + 1]) for i in range(layers))
    model = build_model(cfg, (1, 28, 28), [10, 10], gated=False)
    assert n_params(model) == n_params(trunk) + 2 * fc(hidden, 10)


def test_paper_mlp_parameter_count():
    trunk, _ = build_trunk(ModelConfig(family="mlp", hidden=2000, layers=2), (1, 28, 28))
    assert n_params(trunk) == 784 * 2000 + 2000 + 2000 * 2000 + 2000


def test_mlp_dropouts():
    trunk = mlp_trunk((1, 8, 8), hidden=100, layers=2, dropout=0.4, input_dropout=0.1)
    kinds = [type(m) for m in trunk]
    assert kinds == [nn.Flatten, Dropout] + [nn.Linear, nn.ReLU, Dropout] * 2
    assert [m.p for m in trunk if isinstance(m, nn.Dropout)] == [0.1, 0.4, 0.4]


def test_default_config_builds_the_paper_mlp():
    trunk, features = build_trunk(ModelConfig(), (1, 28, 28))
    assert features == 2000
    assert weight_shapes(trunk) == [(2000, 784), (2000, 2000)]


def test_hat_mlp_gates_every_hidden_layer():
    cfg = ModelConfig(family="mlp", hidden=50, layers=3)
    plain = build_model(cfg, (1, 8, 8), [2] * 5, gated=False)
    hat = build_model(cfg, (1, 8, 8), [2] * 5, gated=True)
    assert weight_shapes(plain.trunk) == weight_shapes(hat.trunk)
    assert len(hat.gated_layers) == 3
    assert n_params(hat) == n_params(plain) + 5 * 3 * 50


# ----------------------------------------------------------------------------- build_model


@pytest.mark.parametrize("cfg,shape", [(ModelConfig(family="mlp", hidden=20), (1, 8, 8)),
                                       (ALEXNET, (3, 32, 32))])
def test_build_model_types(cfg, shape):
    plain = build_model(cfg, shape, [2, 3], gated=False)
    hat = build_model(cfg, shape, [2, 3], gated=True)
    assert isinstance(plain, MultiHeadNet) and not isinstance(plain, HATNet)
    assert isinstance(hat, HATNet)
    assert plain.tasks == hat.tasks == [0, 1]
    x = torch.zeros(4, *shape)
    plain.eval()
    hat.eval()
    assert plain(x, 1).shape == hat(x, 1).shape == (4, 3)


def test_build_model_passes_hat_options():
    cfg = ModelConfig(family="mlp", hidden=30)
    hat = build_model(cfg, (1, 8, 8), [2, 2], gated=True, smax=25.0, binary_masks=False,
                      embedding_init="uniform")
    assert hat.smax == 25.0 and hat.binary_masks is False
    for layer in hat.gated_layers:
        for task in (0, 1):
            e = layer.embedding(task)
            assert (e >= 0).all() and (e <= 2).all()
    default = build_model(cfg, (1, 8, 8), [2], gated=True)
    assert default.smax == 400.0 and default.binary_masks is True


def test_build_model_is_seeded_by_torch():
    cfg = ModelConfig(family="mlp", hidden=30)
    torch.manual_seed(0)
    a = build_model(cfg, (1, 8, 8), [2], gated=True)
    torch.manual_seed(0)
    b = build_model(cfg, (1, 8, 8), [2], gated=True)
    torch.manual_seed(1)
    c = build_model(cfg, (1, 8, 8), [2], gated=True)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


# ----------------------------------------------------------------------------- ModelConfig


@pytest.mark.parametrize("kwargs,fragment", [
    ({"family": "resnet"}, "model.family"),
    ({"hidden": 0}, "model.hidden"),
    ({"hidden": -5}, "model.hidden"),
    ({"layers": 0}, "model.layers"),
    ({"dropout": 1.0}, "model.dropout"),
    ({"dropout": -0.1}, "model.dropout"),
    ({"input_dropout": 1.5}, "model.input_dropout"),
    ({"input_dropout": -1}, "model.input_dropout"),
    ({"family": "resnet34"}, "model.family must be one of mlp, alexnet, resnet18, resnet32"),
    ({"family": "resnet32", "blocks": 0}, "model.blocks must be >= 1"),
    ({"family": "mlp", "blocks": 2}, "model.blocks applies to resnet32 only"),
    ({"family": "resnet18", "blocks": 2}, "model.blocks applies to resnet32 only"),
    ({"family": "resnet32", "stem": "cifar"}, "model.stem applies to resnet18 only"),
    ({"family": "resnet18", "stem": "tiny"}, "model.stem must be one of auto, imagenet, cifar"),
    ({"family": "resnet18", "hidden": 64}, "model.hidden=64 does not apply to resnet18"),
])
def test_model_config_validation(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ModelConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [{}, {"family": "mlp"}, {"family": "alexnet", "hidden": 1},
                                    {"dropout": 0.0, "input_dropout": 0.0}, {"layers": 1},
                                    {"family": "resnet32", "blocks": 1, "hidden": 8},
                                    {"family": "resnet18", "stem": "cifar"}, {"blocks": 3}])
def test_model_config_accepts_valid_values(kwargs):
    cfg = ModelConfig(**kwargs)
    for key, value in kwargs.items():
        assert getattr(cfg, key) == value


def test_model_config_from_strings():
    from strategies.common.config import from_overrides

    cfg = from_overrides(ModelConfig, {"family": "alexnet", "hidden": "64", "layers": "3",
                                       "dropout": "0.25"}, "model")
    assert cfg == ModelConfig(family="alexnet", hidden=64, layers=3, dropout=0.25)
    cfg = from_overrides(ModelConfig, {"family": "resnet32", "blocks": "3", "hidden": "8"},
                         "model")
    assert cfg == ModelConfig(family="resnet32", blocks=3, hidden=8)
    cfg = from_overrides(ModelConfig, {"family": "resnet18", "stem": "imagenet"}, "model")
    assert cfg.stem == "imagenet"
    for bad in ({"family": "resnet"}, {"hidden": "many"}, {"hidden": "0"}, {"width": "3"},
                {"blocks": "1.5"}, {"stem": "big"}, {"family": "resnet18", "hidden": "8"}):
        with pytest.raises(ConfigError):
            from_overrides(ModelConfig, bad, "model")


# ----------------------------------------------------------------------------- ResNets
RESNET32 = ModelConfig(family="resnet32")
RESNET18 = ModelConfig(family="resnet18")


def bn(channels: int) -> int:
    return 2 * channels


def resnet32_by_hand(in_ch: int, blocks: int, width: int) -> int:
    """He et al.'s CIFAR ResNet: conv3×3 + BN, 3 stages of ``blocks`` basic blocks (two
    bias-free 3×3 convs + BN each) of width, 2·width, 4·width channels; at the start of
    stages 2 and 3 a 1×1 conv + BN shortcut (option B). No fc (the heads are the last layer)."""
    total = in_ch * width * 9 + bn(width)
    ch = width
    for out in (width, 2 * width, 4 * width):
        for b in range(blocks):
            cin = ch if b == 0 else out
            total += cin * out * 9 + out * out * 9 + 2 * bn(out)
            if b == 0 and cin != out:
                total += cin * out + bn(out)
        ch = out
    return total


def bn_inputs(trunk: nn.Module) -> list[tuple[str, str, int]]:
    """For every BatchNorm of the traced trunk: (its target, the module feeding it, how many
    users that module's output has)."""
    gm = fx.symbolic_trace(trunk)
    mods = dict(gm.named_modules())
    out = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(mods[node.target], nn.BatchNorm2d):
            (src,) = node.all_input_nodes
            kind = type(mods[src.target]).__name__ if src.op == "call_module" else src.op
            out.append((node.target, kind, len(src.users)))
    return out


@pytest.mark.parametrize("blocks,width", [(5, 16), (1, 16), (2, 4), (3, 8)])
def test_resnet32_sizes_by_hand(blocks, width):
    trunk, features = build_trunk(ModelConfig(family="resnet32", blocks=blocks, hidden=width),
                                  (3, 32, 32))
    assert isinstance(trunk, CifarResNet)
    assert features == 4 * width
    assert n_params(trunk) == resnet32_by_hand(3, blocks, width)
    convs = [m for m in trunk.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.bias is None for m in convs)
    # 6n + 1 conv layers on the main path (+ the head: 6n + 2), two 1×1 shortcut convs
    assert sum(m.kernel_size == (3, 3) for m in convs) == 6 * blocks + 1
    assert [m.stride for m in convs if m.kernel_size == (1, 1)] == [(2, 2), (2, 2)]
    assert trunk.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 4 * width)


def test_resnet32_is_about_0_46_million_parameters():
    trunk, features = build_trunk(RESNET32, (3, 32, 32))
    assert features == 64
    assert n_params(trunk) == resnet32_by_hand(3, 5, 16) == 466_256
    assert 0.46e6 <= n_params(trunk) < 0.47e6
    widths = [m.out_channels for m in trunk.modules()
              if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert widths == [16] * 11 + [32] * 10 + [64] * 10


def test_resnet32_spatial_sizes_and_any_image_size():
    trunk = resnet32_trunk((3, 32, 32)).eval()
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = tuple(output.shape[1:])
        return hook

    for name in ("layer1", "layer2", "layer3"):
        getattr(trunk, name).register_forward_hook(record(name))
    trunk(torch.zeros(1, 3, 32, 32))
    assert seen == {"layer1": (16, 32, 32), "layer2": (32, 16, 16), "layer3": (64, 8, 8)}
    for shape in ((3, 8, 8), (3, 28, 40), (2, 64, 64)):
        assert resnet32_trunk(shape).eval()(torch.zeros(1, *shape)).shape == (1, 64)


@pytest.mark.parametrize("stem,size,cifar", [
    ("cifar", 32, True), (None, 32, True), ("auto", 64, True), ("auto", 8, True),
    ("auto", 65, False), ("imagenet", 32, False), ("cifar", 96, True), (None, 96, False),
])
def test_resnet18_stem_variants(stem, size, cifar):
    trunk, features = build_trunk(ModelConfig(family="resnet18", stem=stem), (3, size, size))
    assert isinstance(trunk, torchvision.models.ResNet) and isinstance(trunk.fc, nn.Identity)
    assert features == 512
    if cifar:
        assert (trunk.conv1.kernel_size, trunk.conv1.stride, trunk.conv1.padding) == (
            (3, 3), (1, 1), (1, 1))
        assert isinstance(trunk.maxpool, nn.Identity)
    else:
        assert (trunk.conv1.kernel_size, trunk.conv1.stride, trunk.conv1.padding) == (
            (7, 7), (2, 2), (3, 3))
        assert isinstance(trunk.maxpool, nn.MaxPool2d)
    assert trunk.conv1.bias is None
    assert trunk.eval()(torch.zeros(2, 3, size, size)).shape == (2, 512)


def test_resnet18_parameter_counts():
    stock = torchvision.models.resnet18(weights=None)
    stock_trunk = n_params(stock) - n_params(stock.fc)
    imagenet = resnet18_trunk((3, 224, 224), cifar_stem=False)
    assert n_params(imagenet) == stock_trunk == 11_176_512
    cifar, _ = build_trunk(RESNET18, (3, 32, 32))
    # the 7×7 stem conv (64·3·49) becomes a 3×3 one (64·3·9)
    assert n_params(cifar) == stock_trunk - 64 * 3 * 49 + 64 * 3 * 9 == 11_168_832
    assert round(n_params(cifar) / 1e6, 2) == 11.17


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_resnet18_takes_one_channel_images(stem):
    trunk, _ = build_trunk(ModelConfig(family="resnet18", stem=stem), (1, 28, 28))
    k = 3 if stem == "cifar" else 7
    assert trunk.conv1.weight.shape == (64, 1, k, k)
    assert trunk.conv1.stride == ((1, 1) if stem == "cifar" else (2, 2))
    assert trunk.conv1.padding == ((1, 1) if stem == "cifar" else (3, 3))
    assert trunk.conv1.weight.std() > 0  # initialised
    assert trunk.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 512)
    assert n_params(trunk) == n_params(resnet18_trunk((3, 28, 28), stem == "cifar")) - (
        64 * 2 * k * k)


def test_resnet32_takes_one_channel_images():
    trunk, _ = build_trunk(ModelConfig(family="resnet32", blocks=1), (1, 8, 8))
    assert trunk.conv1.weight.shape == (16, 1, 3, 3)
    assert n_params(trunk) == resnet32_by_hand(1, 1, 16)
    assert trunk.eval()(torch.randn(3, 1, 8, 8)).shape == (3, 64)


@pytest.mark.parametrize("cfg,shape", [(RESNET18, (3, 32, 32)),
                                       (ModelConfig(family="resnet18", stem="imagenet"),
                                        (3, 64, 64)),
                                       (RESNET32, (3, 32, 32))],
                         ids=["resnet18-cifar", "resnet18-imagenet", "resnet32"])
def test_resnet_batchnorms_directly_follow_their_conv(cfg, shape):
    """What HAT's per-task BatchNorm needs: every BN's input is a conv output that nothing
    else uses, and every conv feeds a BN."""
    trunk, _ = build_trunk(cfg, shape)
    found = bn_inputs(trunk)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in trunk.modules())
    assert len(found) == n_bn > 0
    assert all(kind == "Conv2d" and users == 1 for _, kind, users in found), found
    n_conv = sum(isinstance(m, nn.Conv2d) for m in trunk.modules())
    assert n_conv == n_bn  # (none without its BN)


def test_bn_placement_check_catches_a_shared_conv_output():
    """The property test above can fail: a conv whose output also feeds the sum."""

    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    assert bn_inputs(Bad()) == [("bn", "Conv2d", 2)]


@pytest.mark.parametrize("cfg,shape", [(RESNET18, (3, 32, 32)), (RESNET32, (3, 32, 32)),
                                       (ModelConfig(family="resnet32", blocks=1), (1, 8, 8))],
                         ids=["resnet18", "resnet32", "resnet8-digits"])
def test_resnets_trace_with_torch_fx(cfg, shape):
    torch.manual_seed(0)
    trunk, _ = build_trunk(cfg, shape)
    trunk.eval()
    gm = fx.symbolic_trace(trunk)
    x = torch.randn(4, *shape)
    assert torch.equal(gm(x), trunk(x))
    adds = [n for n in gm.graph.nodes if n.op == "call_function" and "add" in str(n.target)]
    blocks = sum(isinstance(m, torchvision.models.resnet.BasicBlock | type(trunk.layer1[0]))
                 for m in trunk.modules())
    assert len(adds) == blocks  # one residual sum per block


@pytest.mark.parametrize("family", ["resnet18", "resnet32"])
@pytest.mark.parametrize("shape", [(64,), (1, 8), (3, 0, 8)])
def test_resnets_refuse_flat_inputs(family, shape):
    with pytest.raises(ConfigError, match=f"model.family={family} needs image inputs"):
        build_model(ModelConfig(family=family), shape, [2], gated=False)


@pytest.mark.parametrize("cfg,shape,features", [
    (ModelConfig(family="resnet32", blocks=1), (1, 8, 8), 64),
    (RESNET18, (3, 32, 32), 512),
], ids=["resnet32", "resnet18"])
def test_baseline_resnets_share_their_batchnorm(cfg, shape, features):
    """gated=False: the plain trunk under shared heads, ordinary BatchNorm whose running
    statistics every task's batches update."""
    torch.manual_seed(0)
    model = build_model(cfg, shape, [2, 3], gated=False)
    assert type(model) is MultiHeadNet and model.feature_dim == features
    norms = [m for m in model.trunk.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(type(m) is nn.BatchNorm2d for m in norms)
    assert n_params(model) == n_params(model.trunk) + (features + 1) * 5
    before = norms[0].running_mean.clone()
    model.train()
    model(torch.randn(8, *shape), 0)
    after_task0 = norms[0].running_mean.clone()
    model(torch.randn(8, *shape) + 1, 1)
    assert not torch.equal(before, after_task0)
    assert not torch.equal(after_task0, norms[0].running_mean)  # task 1 moves the same stats
    model.eval()
    assert model(torch.zeros(2, *shape), 1).shape == (2, 3)


# These wait on the HAT side (HATNet.wrap on any nn.Module, per-task BatchNorm, residual sums).
@pytest.mark.parametrize("cfg,shape", [
    (ModelConfig(family="resnet32", blocks=1), (1, 8, 8)),
    (ModelConfig(family="resnet32", blocks=2, hidden=4), (3, 32, 32)),
    (RESNET18, (3, 32, 32)),
    (ModelConfig(family="resnet18", stem="imagenet"), (1, 64, 64)),
], ids=["resnet8-digits", "resnet14-w4", "resnet18-cifar", "resnet18-imagenet-1ch"])
def test_hat_resnets_gate_every_conv_and_make_every_bn_per_task(cfg, shape):
    heads = [2, 3]
    torch.manual_seed(0)
    plain = build_model(cfg, shape, heads, gated=False)
    hat = build_model(cfg, shape, heads, gated=True, smax=50.0)
    assert isinstance(hat, HATNet) and hat.smax == 50.0
    assert weight_shapes(plain.trunk) == weight_shapes(hat.trunk)
    convs = [m for m in plain.trunk.modules() if isinstance(m, nn.Conv2d)]
    gated = [m for m in hat.trunk.modules() if isinstance(m, HATConv2d | HATLinear)]
    assert len(gated) == len(convs) and all(isinstance(m, HATConv2d) for m in gated)
    norms = [m for m in hat.trunk.modules() if isinstance(m, HATBatchNorm2d)]
    assert len(norms) == len(convs)
    # no BatchNorm is left shared: each one is a task's own inside a per-task norm
    inside = {id(b) for n in norms for b in n.modules() if b is not n}
    shared = [m for m in hat.trunk.modules()
              if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) and id(m) not in inside]
    assert not shared
    x = torch.randn(3, *shape)
    hat.eval()
    plain.eval()
    for task, k in enumerate(heads):
        assert hat(x, task).shape == plain(x, task).shape == (3, k)
        assert torch.isfinite(hat(x, task)).all()


# ------------------------------------------------------------------ dropout
@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_dropout_keeps_one_minus_p_and_scales_as_torch(p):
    torch.manual_seed(0)
    drop = Dropout(p)
    x = torch.ones(Dropout.CHUNK // 8)
    out = torch.cat([drop(x) for _ in range(8)])  # crosses a refill of the mask chunk
    kept = out != 0
    scale = 1 / (1 - p)
    assert len(out.unique()) == 2 and out.min() == 0.0
    assert torch.equal(out[kept], torch.full((int(kept.sum()),), scale, dtype=out.dtype))
    # kept fraction 1 - p within 5 standard deviations of a binomial over 2^20 draws
    n = out.numel()
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5


def test_dropout_masks_are_independent_between_calls_and_elements():
    torch.manual_seed(1)
    drop = Dropout(0.5)
    x = torch.ones(64, 100)
    a, b = (drop(x) != 0).float(), (drop(x) != 0).float()
    assert not torch.equal(a, b)
    # neighbouring elements (same 64-bit draw) and consecutive calls are uncorrelated
    n = 2000
    m = torch.stack([(drop(x) != 0).float().flatten() for _ in range(n)])
    c_elem = torch.corrcoef(torch.stack([m[:, 0], m[:, 1]]))[0, 1]
    c_call = torch.corrcoef(torch.stack([m[:-1, 0], m[1:, 0]]))[0, 1]
    assert abs(c_elem) < 5 / n**0.5 and abs(c_call) < 5 / n**0.5


def test_dropout_is_seeded_by_torch_and_copies_draw_their_own():
    import copy

    x = torch.ones(32, 50)
    torch.manual_seed(3)
    a = Dropout(0.3)
    first = [a(x) for _ in range(3)]
    torch.manual_seed(3)
    b = Dropout(0.3)
    assert all(torch.equal(f, b(x)) for f in first)
    c = copy.deepcopy(a)
    torch.manual_seed(4)
    assert not torch.equal(a(x), c(x))  # the copy did not inherit a's drawn masks


def test_dropout_backward_multiplies_by_the_forward_mask_and_eval_is_identity():
    torch.manual_seed(0)
    drop = Dropout(0.4)
    x = torch.randn(16, 30, requires_grad=True)
    out = drop(x)
    g = torch.randn_like(out)
    out.backward(g)
    mask = out.detach() / x.detach()
    assert torch.allclose(x.grad, g * mask)
    drop.eval()
    assert drop(x) is x or torch.equal(drop(x), x)


def test_dropout_large_inputs_and_other_dtypes():
    torch.manual_seed(0)
    big = torch.ones(Dropout.CHUNK)  # larger than a quarter chunk: its own draw
    out = Dropout(0.5)(big)
    assert abs((out != 0).float().mean().item() - 0.5) < 0.01
    x64 = torch.ones(10, 10, dtype=torch.float64)
    assert Dropout(0.5)(x64).dtype == torch.float64


# ------------------------------------------------------------ mixed-task batches
@settings(max_examples=25, deadline=None)
@given(widths=st.lists(st.integers(1, 6), min_size=2, max_size=5),
       seed=st.integers(0, 2**16))
def test_stacked_heads_equal_the_per_task_heads(widths, seed):
    """A mixed-task batch through the stacked heads gives each sample its own head's logits
    (-inf beyond it) and the heads the gradients the per-task loop gives (float rounding
    aside), heads absent from the batch none."""
    from strategies.common.multihead import MultiHeadNet

    torch.manual_seed(seed)
    net = MultiHeadNet(nn.Sequential(nn.Linear(5, 7), nn.ReLU()), 7, widths).eval()
    n = 16
    t = torch.randint(0, len(widths) - 1, (n,))  # the last head never appears
    x = torch.randn(n, 5)
    out = net(x, t)
    width = max(widths[int(k)] for k in t.unique())
    assert out.shape == (n, width)
    feats = net.trunk(x)
    for i in range(n):
        k = int(t[i])
        ref = net.heads[str(k)](feats[i : i + 1])[0]
        assert torch.allclose(out[i, : widths[k]], ref, atol=1e-6)
        assert torch.isinf(out[i, widths[k]:]).all()
    finite = torch.where(torch.isinf(out), torch.zeros_like(out), out)
    finite.sum().backward()
    assert net.heads[str(len(widths) - 1)].weight.grad is None
    for k in t.unique().tolist():
        sel = t == k
        expect = feats[sel].detach().sum(0).expand(widths[k], -1)
        assert torch.allclose(net.heads[str(k)].weight.grad, expect, atol=1e-5)
