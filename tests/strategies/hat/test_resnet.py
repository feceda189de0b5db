"""HAT on residual networks: gate groups across skip connections, per-task BatchNorm, a stock
torchvision ResNet-18 in a stock Avalanche script.

Bit-identical protection of earlier tasks under four optimizers, with a Naive control, is in
``test_protection`` (parametrised over the ResNets too).
"""

from __future__ import annotations

import pytest
import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from torch import nn
from torchvision.models import resnet18

from strategies import HAT, HATError, HATNet, HATPlugin
from strategies.hat.layers import HAT_LAYERS, HATBatchNorm2d
from tests.support.trunks import (
    CONV_SHAPE,
    RESNET18_SHAPE,
    RESNETS,
    conv_bn_trunk,
    fast_plugins,
    hat_net,
    keep_subnormals,  # noqa: F401 (fixture)
    logits,
    make_stream,
    quiet_evaluator,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _stock_resnet18(heads=(2, 2)) -> HATNet:
    torch.manual_seed(0)
    return HATNet.wrap(resnet18(num_classes=10), RESNET18_SHAPE, heads, classifier="fc")


def test_wrapped_torchvision_resnet18_shares_gates_across_each_stage_sum():
    model = _stock_resnet18()
    names = {m: n for n, m in model.trunk.named_modules()}
    assert len(model.gated_layers) == 20 and len(model.task_norms) == 20
    # stem + the stage's second convs (+ its downsample) share a gate; each block's first
    # conv has its own: 4 stage groups + 8 block-internal ones
    assert len(model.gate_layers) == 12
    groups = [[names[model.gated_layers[i]] for i in g] for g in model.gate_graph.groups]
    assert ["conv1", "layer1.0.conv2", "layer1.1.conv2"] in groups
    assert ["layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"] in groups
    # embeddings only on the group's first layer; the others use them
    for layer in model.gated_layers:
        owner = layer.gate_owner
        assert (len(layer.embeddings) == 2) == (owner is layer)
        assert layer.embedding(1) is owner.embedding(1)
    # the classifier went to the per-task heads; parameters: the stock convs, one BatchNorm
    # per task, one embedding per gate unit and task
    assert isinstance(model.trunk.fc, nn.Identity) and model.feature_dim == 512
    stock = resnet18(num_classes=10)
    convs = sum(m.weight.numel() for m in stock.modules() if isinstance(m, nn.Conv2d))
    bns = sum(p.numel() for m in stock.modules() if isinstance(m, nn.BatchNorm2d)
              for p in m.parameters())
    assert sum(m.weight.numel() for m in model.gated_layers) == convs
    assert sum(p.numel() for n in model.task_norms for p in n.parameters()) == 2 * bns
    embeddings = sum(p.numel() for n, p in model.named_parameters() if ".embeddings." in n)
    assert embeddings == 2 * sum(g.units for g in model.gate_layers) == 2 * 2880


@pytest.mark.parametrize("name", sorted(RESNETS))
def test_a_unit_its_task_masks_is_exactly_zero_at_every_residual_sum(name):
    """After a block's sum (and ReLU) a channel the task's gate masks is exactly 0: both
    operands of the sum carry the same gate (a shortcut under another gate would leak)."""
    make_trunk, shape = RESNETS[name]
    torch.manual_seed(0)
    model = hat_net(make_trunk(), shape, head_sizes=[2, 2])
    blocks = [m for m in model.trunk.modules() if type(m).__name__ == "BasicBlock"]
    outs: dict[nn.Module, torch.Tensor] = {}
    hooks = [b.register_forward_hook(lambda m, i, o: outs.__setitem__(m, o)) for b in blocks]
    # the owner of the gate group a block's output belongs to: the block's last gated layer
    last = {b: [m for m in b.modules() if isinstance(m, HAT_LAYERS)][-1] for b in blocks}
    x = torch.randn(4, *shape)
    checked = 0
    for task in (0, 1):
        logits(model, x, task)
        for b in blocks:
            off = last[b].mask(task, model.smax, True) == 0
            checked += int(off.sum())
            assert torch.equal(outs[b][:, off], torch.zeros_like(outs[b][:, off]))
    for h in hooks:
        h.remove()
    assert checked > 0


def test_mask_statistics_count_the_weights_between_active_units_of_each_gate_group():
    model = _stock_resnet18()
    with torch.no_grad():  # task 1 keeps about half of every group's units
        for layer in model.gate_layers:
            layer.embedding(1).copy_(torch.randn(layer.units))
    stats = model.mask_statistics([1])
    masks = {id(layer): layer.mask(1, model.smax, True) > 0 for layer in model.gated_layers}
    kept = total = 0
    for i, layer in enumerate(model.gated_layers):
        out = masks[id(layer)]
        src = layer.__dict__["_input_owner"]
        inp = torch.ones(layer.in_width, dtype=torch.bool) if src is None else masks[id(src)]
        entries = (out[:, None] & inp[None, :])[..., None, None].expand_as(layer.weight)
        assert stats["layer_weights_kept"][i][0] == pytest.approx(
            float(entries.float().mean()), abs=1e-12)
        assert stats["used"][i][0] == pytest.approx(float(out.float().mean()))
        kept += int(entries.sum())
        total += entries.numel()
    assert stats["weights_kept"][0] == pytest.approx(kept / total)
    # units: each gate group once
    on = sum(int(masks[id(g)].sum()) for g in model.gate_layers)
    assert stats["units_kept"][0] == pytest.approx(on / sum(g.units for g in model.gate_layers))
    assert stats["groups"] == model.gate_graph.group_of


def test_stock_avalanche_script_trains_a_wrapped_torchvision_resnet18_with_the_plugin():
    """The README's recipe: torchvision model → HATNet.wrap → Avalanche's own Naive with
    HATPlugin; heads come from Avalanche's model adaptation, evaluation from its evaluator."""
    torch.manual_seed(0)
    bm, _, test = make_stream(2, RESNET18_SHAPE, n_train=32, n_test=16)
    model = HATNet.wrap(resnet18(num_classes=10), RESNET18_SHAPE, classifier="fc")
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05,
                                                              momentum=0.9),
                     train_mb_size=16, train_epochs=1, eval_mb_size=16,
                     plugins=[HATPlugin(smax=100)],
                     evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]))
    strategy.train(bm.train_stream[0])
    before = logits(model, test[0][0], 0)
    strategy.train(bm.train_stream[1])
    results = strategy.eval(bm.test_stream)
    assert model.tasks == [0, 1]
    assert torch.equal(logits(model, test[0][0], 0), before)
    acc = [v for k, v in results.items() if k.startswith("Top1_Acc_Exp/eval_phase/test_stream")]
    assert len(acc) == 2 and all(0.0 <= a <= 1.0 for a in acc)


def test_a_trained_tasks_batchnorm_stays_frozen_in_training_mode_forwards():
    """Forwarding an earlier task in training mode (e.g. a user's own loop) normalises with
    its running statistics and leaves them as they were; the task being trained still
    updates its own."""
    torch.manual_seed(0)
    bm, _, test = make_stream(2, CONV_SHAPE)
    model = hat_net(conv_bn_trunk(), CONV_SHAPE)
    strategy = HAT(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                   train_mb_size=16, train_epochs=1, plugins=fast_plugins(),
                   evaluator=quiet_evaluator())
    strategy.train(bm.train_stream[0])
    norm = model.task_norms[0]
    assert norm.frozen == {0}
    saved = {k: v.clone() for k, v in norm.norm(0).state_dict().items()}
    model.train()
    model.s = 50.0
    model(test[0][0], 0)
    assert all(torch.equal(norm.norm(0).state_dict()[k], v) for k, v in saved.items())
    model.add_task(1, 2)
    before = norm.norm(1).running_mean.clone()
    model(test[1][0], 1)  # task 1 is not trained yet: its statistics move
    assert not torch.equal(norm.norm(1).running_mean, before)
    # the frozen set travels with the state dict
    fresh = hat_net(conv_bn_trunk(), CONV_SHAPE, head_sizes=[2, 2])
    fresh.load_state_dict(model.state_dict())
    assert fresh.task_norms[0].frozen == {0}


def test_per_task_batchnorm_needs_running_statistics():
    with pytest.raises(HATError, match="track_running_stats=True"):
        HATBatchNorm2d(4, track_running_stats=False)
    trunk = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False),
                          nn.ReLU(), nn.Flatten())
    with pytest.raises(HATError, match="track_running_stats=True"):
        HATNet.wrap(trunk, CONV_SHAPE)


def test_rewrapping_a_trunk_relinks_its_norms():
    """A HAT trunk given to HATNet again (e.g. rebuilt from its modules) gets fresh links."""
    first = hat_net(conv_bn_trunk(), CONV_SHAPE, head_sizes=[2])
    again = HATNet(first.trunk, CONV_SHAPE, [2])
    assert [n.__dict__["gated"] for n in again.task_norms] == [
        first.gated_layers[0], first.gated_layers[1]]


def test_a_shortcut_under_another_gate_is_refused():
    """A sum of a gated output and the raw input has no per-unit gate: refused."""

    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            return torch.flatten(torch.relu(self.conv(x)) + x, 1)

    with pytest.raises(HATError, match="both operands of a residual sum gated"):
        HATNet.wrap(Bad(), CONV_SHAPE)
