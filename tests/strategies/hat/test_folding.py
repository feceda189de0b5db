"""Folding the training gate into the parameters computes Eq. 1's function.

``HATMixin.fold_gate`` makes a training forward compute (W·a)x + b·a instead of (Wx + b)·a
(and, before a per-task BatchNorm, BN with γ·a and β·a instead of BN(x)·a). The plain path,
the gate on the output, is the reference: outputs and every gradient (weights, bias, gate,
input, BatchNorm's affine parameters) must agree with it to float rounding, BatchNorm's
running statistics exactly; HATPlugin must fold exactly where ``folding_pays`` says so,
and the protection tests (``test_protection``) must really run folded layers.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import HAT, HATConv2d, HATLinear, HATNet
from strategies.hat.layers import HATBatchNorm1d, HATBatchNorm2d
from strategies.hat.plugin import folding_pays
from tests.support.trunks import (
    ALL_TRUNKS,
    OPTIMIZERS,
    clone_params,
    conv_bn_trunk,
    fast_plugins,
    hat_net,
    make_stream,
    quiet_evaluator,
)

pytestmark = pytest.mark.usefixtures("one_thread")



def _close(a: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal to float32 rounding: sums of many products may cancel, so the absolute
    tolerance scales with the largest entry."""
    torch.testing.assert_close(a, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()) + 1e-7)


def _layer_pass(layer, x, gate, fold):
    """Output and gradients (input, weight, bias, gate) of one training forward and backward
    of a random linear function of the output."""
    layer.zero_grad()
    x = x.clone().requires_grad_(True)
    gate = gate.clone().requires_grad_(True)
    layer.train()
    layer.fold_gate = fold
    layer.current_gate = gate
    try:
        out = layer(x)
    finally:
        layer.current_gate = None
        layer.fold_gate = False
    torch.manual_seed(123)
    (out * torch.randn_like(out)).sum().backward()
    grads = [x.grad, layer.weight.grad, gate.grad]
    if layer.bias is not None:
        grads.append(layer.bias.grad)
    return out.detach(), grads


@settings(max_examples=30, deadline=None)
@given(
    conv=st.booleans(),
    batch=st.integers(1, 5),
    n_in=st.integers(1, 4),
    units=st.integers(1, 6),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_a_folded_layer_computes_the_gated_output_and_its_gradients(conv, batch, n_in, units,
                                                                    bias, seed):
    torch.manual_seed(seed)
    if conv:
        layer = HATConv2d(n_in, units, 3, padding=1, bias=bias)
        x = torch.randn(batch, n_in, 5, 5)
    else:
        layer = HATLinear(n_in, units, bias=bias)
        x = torch.randn(batch, n_in)
    gate = torch.sigmoid(3 * torch.randn(units))
    ref_out, ref_grads = _layer_pass(layer, x, gate, fold=False)
    out, grads = _layer_pass(layer, x, gate, fold=True)
    _close(out, ref_out)
    for g, ref in zip(grads, ref_grads, strict=True):
        _close(g, ref)


def test_folding_is_only_for_a_training_forward_with_one_gate():
    layer = HATConv2d(2, 3, 3)
    layer.fold_gate = True
    layer.current_gate = torch.full((3,), 0.5)
    assert layer.folds_now()
    layer.eval()
    assert not layer.folds_now()  # evaluation: the masks on the output, as always
    layer.train()
    layer.current_gate = torch.full((2, 3), 0.5)  # all tasks at once
    assert not layer.folds_now()
    lin = HATLinear(4, 3)
    lin.fold_gate = True
    lin.current_gate = torch.full((3,), 0.5)
    lin.row_grad_factor = torch.ones(3)  # the ∂L/∂z hook must not scale the gate's gradient
    assert not lin.folds_now()


def _norm_pass(bn_cls, affine, frozen, fold, x, gate, state):
    """A gated layer with a per-task BatchNorm after it: output, gradients of x, γ, β and
    the gate, and the BatchNorm's statistics after the pass."""
    gated = HATLinear(1, x.shape[1])  # only its gate and fold setting are read
    norm = bn_cls(x.shape[1], affine=affine)
    norm.add_task(0)
    bn = norm.norm(0)
    bn.load_state_dict(state)
    norm.__dict__["gated"] = gated
    norm.current_task = 0
    if frozen:
        norm.freeze(0)
    gated.train()
    norm.train()
    gated.fold_gate = fold
    x = x.clone().requires_grad_(True)
    gate = gate.clone().requires_grad_(True)
    gated.current_gate = gate
    out = norm(x)
    torch.manual_seed(7)
    (out * torch.randn_like(out)).sum().backward()
    grads = [x.grad, gate.grad] + ([bn.weight.grad, bn.bias.grad] if affine else [])
    stats = [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]
    return out.detach(), grads, stats


@pytest.mark.parametrize("bn_cls,shape", [(HATBatchNorm1d, (6, 4)), (HATBatchNorm2d, (6, 4, 3, 3))])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("frozen", [False, True])
def test_a_folded_per_task_batchnorm_matches_the_gate_after_it(bn_cls, shape, affine, frozen):
    torch.manual_seed(0)
    x = torch.randn(shape) * 2 + 1
    gate = torch.sigmoid(2 * torch.randn(shape[1]))
    ref_bn = bn_cls(shape[1], affine=affine)
    ref_bn.add_task(0)
    with torch.no_grad():  # non-trivial affine parameters and statistics
        b = ref_bn.norm(0)
        b.running_mean.normal_()
        b.running_var.uniform_(0.5, 2)
        if affine:
            b.weight.normal_()
            b.bias.normal_()
    state = {k: v.clone() for k, v in b.state_dict().items()}
    ref_out, ref_grads, ref_stats = _norm_pass(bn_cls, affine, frozen, False, x, gate, state)
    out, grads, stats = _norm_pass(bn_cls, affine, frozen, True, x, gate, state)
    _close(out, ref_out)
    for g, ref in zip(grads, ref_grads, strict=True):
        _close(g, ref)
    for s, ref in zip(stats, ref_stats, strict=True):  # statistics never see the gate
        assert torch.equal(s, ref)
    if not frozen:  # and the training pass really updated them
        assert not torch.equal(stats[0], state["running_mean"])


def test_a_folded_batchnorm_leaves_its_parameters_registered():
    torch.manual_seed(0)
    norm = HATBatchNorm2d(3)
    norm.add_task(0)
    gated = HATConv2d(1, 3, 1)
    norm.__dict__["gated"] = gated
    norm.current_task = 0
    gated.fold_gate, gated.current_gate = True, torch.full((3,), 0.5)
    norm(torch.randn(2, 3, 4, 4))
    bn = norm.norm(0)
    assert "weight" not in bn.__dict__ and "bias" not in bn.__dict__
    assert isinstance(bn.weight, torch.nn.Parameter)
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]


def _model_and_strategy(trunk_name: str, batch: int, fold: bool = True):
    make_trunk, shape = ALL_TRUNKS[trunk_name]
    torch.manual_seed(0)
    bm, _, _ = make_stream(2, shape)
    model = hat_net(make_trunk(), shape)
    strategy = HAT(model=model, optimizer=OPTIMIZERS["adam"](model.parameters()),
                   train_mb_size=batch, train_epochs=1, plugins=fast_plugins(),
                   evaluator=quiet_evaluator())
    strategy.hat_plugin.fold_gates = fold
    return model, strategy, bm


class _FoldSpy:
    """Which layers fold during the experience's training steps."""

    def __init__(self, model: HATNet):
        self.folded: set[int] = set()
        for k, layer in enumerate(model.gated_layers):
            layer.register_forward_pre_hook(
                lambda m, args, k=k: self.folded.add(k) if m.folds_now() else None)


@pytest.mark.parametrize("trunk_name", sorted(ALL_TRUNKS))
@pytest.mark.parametrize("batch", [16, 64])
def test_the_plugin_folds_where_it_pays_and_nowhere_after_the_experience(trunk_name, batch):
    model, strategy, bm = _model_and_strategy(trunk_name, batch)
    spy = _FoldSpy(model)
    strategy.train(bm.train_stream[0])
    expected = {k for k, layer in enumerate(model.gated_layers) if folding_pays(layer, batch)}
    assert spy.folded == expected
    assert not any(layer.fold_gate for layer in model.gated_layers)
    # layers after a per-task BatchNorm always fold; others by size
    for k, layer in enumerate(model.gated_layers):
        if layer.defer_gate:
            assert k in spy.folded
        else:
            n_out = layer.sample_sizes[1]
            assert (k in spy.folded) == (batch * n_out > layer.weight.numel())


@pytest.mark.parametrize("trunk_name", ["conv", "conv_bn", "resnet18", "resnet32"])
def test_the_protection_tests_run_folded_layers(trunk_name):
    """``test_protection`` trains these trunks at batch 16: its bit-identity claim covers the
    folded path only if some of their layers fold there."""
    model, strategy, bm = _model_and_strategy(trunk_name, 16)
    spy = _FoldSpy(model)
    strategy.train(bm.train_stream[0])
    assert spy.folded


def test_fold_gates_off_gates_every_output():
    model, strategy, bm = _model_and_strategy("conv_bn", 16, fold=False)
    spy = _FoldSpy(model)
    strategy.train(bm.train_stream[0])
    assert spy.folded == set()


def test_training_folded_and_unfolded_ends_at_the_same_parameters_to_rounding():
    """One experience of the conv + per-task BatchNorm trunk under SGD, both ways: the same
    trajectory up to float rounding (each step's gradients agree; see the layer tests)."""
    params = []
    for fold in (False, True):
        torch.manual_seed(0)
        bm, _, _ = make_stream(1, (1, 8, 8))
        model = hat_net(conv_bn_trunk(), (1, 8, 8))
        strategy = HAT(model=model, optimizer=OPTIMIZERS["sgd"](model.parameters()),
                       train_mb_size=16, train_epochs=2, plugins=fast_plugins(),
                       evaluator=quiet_evaluator())
        strategy.hat_plugin.fold_gates = fold
        strategy.train(bm.train_stream[0])
        params.append(clone_params(model))
    ref, folded = params
    assert ref.keys() == folded.keys()
    moved = 0
    for name in ref:
        torch.testing.assert_close(folded[name], ref[name], rtol=1e-4, atol=1e-5)
        moved += not torch.equal(folded[name], ref[name])
    assert moved  # rounding did differ: the two runs really took different paths

