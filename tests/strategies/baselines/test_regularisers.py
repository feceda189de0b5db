"""The baselines follow the reference implementation (joansj/hat, ``src/approaches``) where
Avalanche's plugins differ from it:

1. LwF's teacher predicts in evaluation mode (Avalanche keeps a training-mode copy: dropout);
2. EWC's Fisher sees the training part only, never the held-out validation samples;
3. the recipe's validation loss includes each strategy's own penalty (the reference's
   ``eval()`` uses its training criterion): EWC, SI, IMM, LwF, LFL;
4. per-strategy gradient clipping of the global norm before the optimizer step.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.models import avalanche_forward
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import (
    EWC,
    IMM,
    REFERENCE_CLIPGRAD,
    STRATEGIES,
    EWCPlugin,
    GradientClipPlugin,
    LessForgetfulLearning,
    LFLPlugin,
    LwF,
    LwFPlugin,
    RecipeConfig,
    TrainingRecipePlugin,
    materialize,
)
from strategies.baselines.imm import IMMPlugin
from strategies.baselines.si import SIPlugin, SynapticIntelligence
from strategies.training.recipe import split_indices
from tests.support.trunks import (
    MLP_SHAPE,
    fast_plugins,
    logits,
    make_stream,
    mlp_trunk,
    multihead_net,
    quiet_evaluator,
)

pytestmark = pytest.mark.usefixtures("one_thread")

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


def _plugin(strategy, cls):
    return next(p for p in strategy.plugins if isinstance(p, cls))


# ------------------------------------------------------------------ 1. LwF teacher
class TeacherProbe(SupervisedPlugin):
    """Before LwF adds its term: the teacher's mode and two of its predictions of the batch."""

    def __init__(self):
        super().__init__()
        self.task0_model = None
        self.modes: list[bool] = []
        self.pairs: list[tuple[dict, dict]] = []
        self.task0_outputs: list[torch.Tensor] = []

    def after_training_exp(self, strategy, **kwargs):
        if self.task0_model is None:  # runs before LwF's copy: the same (restored) weights
            self.task0_model = copy.deepcopy(strategy.model)

    @torch.no_grad()
    def before_backward(self, strategy, **kwargs):
        teacher = _plugin(strategy, LwFPlugin).lwf.prev_model
        if teacher is None:
            return
        self.modes.append(any(m.training for m in teacher.modules()))
        x = strategy.mb_x
        self.pairs.append((avalanche_forward(teacher, x, None),
                           avalanche_forward(teacher, x, None)))
        self.task0_outputs.append(logits(self.task0_model, x, 0))


def test_lwf_teacher_predicts_in_eval_mode():
    """The reference calls ``model_old.eval()``: deterministic targets, the task-1 model's
    evaluation-mode outputs (Avalanche's copy keeps dropout on)."""
    bm, _, _ = make_stream(2, MLP_SHAPE, n_train=N_TRAIN)
    probe = TeacherProbe()
    strategy = LwF(alpha=2.0, temperature=1.0, **_common(_model(), _recipe(), probe))
    strategy.train(bm.train_stream[0])
    strategy.train(bm.train_stream[1])
    assert probe.pairs and not any(probe.modes)
    for (first, second), want in zip(probe.pairs, probe.task0_outputs, strict=True):
        assert torch.equal(first[0], second[0])
        assert torch.equal(first[0], want)
    teacher = _plugin(strategy, LwFPlugin).lwf.prev_model
    assert not any(p.requires_grad for p in teacher.parameters())


# --------------------------------------------------------- 2. EWC Fisher on training
class FisherProbe(SupervisedPlugin):
    """Just before EWC's ``after_training_exp`` (it is appended after this one): the Fisher
    Avalanche's estimator gives on the training indices, computed by hand."""

    def __init__(self, x_train: torch.Tensor, y_train: torch.Tensor, mode: str):
        super().__init__()
        self.x, self.y, self.mode = x_train, y_train, mode
        self.fisher: dict[str, torch.Tensor] = {}
        self.fisher_all: dict[str, torch.Tensor] = {}

    def _fisher(self, model, x, y, batch: int) -> dict[str, torch.Tensor]:
        names, params = zip(*model.named_parameters(), strict=True)
        out = {n: torch.zeros_like(p) for n, p in zip(names, params, strict=True)}
        was = model.training
        model.eval()
        n_batches = 0
        for i in range(0, len(x), batch):
            loss = F.cross_entropy(model(x[i:i + batch], 0), y[i:i + batch])
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for n, g in zip(names, grads, strict=True):
                if g is not None:
                    out[n] += g ** 2
            n_batches += 1
        model.train(was)
        return {n: f / n_batches for n, f in out.items()}

    def after_training_exp(self, strategy, **kwargs):
        if self.fisher:
            return
        idx = torch.arange(len(self.x))
        if self.mode == "paper":
            idx = torch.as_tensor(split_indices(len(self.x), VALID, 0, 0)[0])
        self.fisher = self._fisher(strategy.model, self.x[idx], self.y[idx],
                                   strategy.train_mb_size)
        self.fisher_all = self._fisher(strategy.model, self.x, self.y, strategy.train_mb_size)


@pytest.mark.parametrize("mode", ["paper", "fixed"])
def test_ewc_fisher_uses_the_training_part_only(monkeypatch, mode):
    bm, train, _ = make_stream(1, MLP_SHAPE, n_train=N_TRAIN)
    x, y = train[0]
    seen = []
    # Avalanche's estimator itself: the dataset it finally computes the Fisher on
    from avalanche.training.plugins import EWCPlugin as AvalancheEWCPlugin

    original = AvalancheEWCPlugin.compute_importances

    def spy(self, model, criterion, optimizer, dataset, *args, **kwargs):
        seen.append(materialize(dataset)[0].clone())
        return original(self, model, criterion, optimizer, dataset, *args, **kwargs)

    monkeypatch.setattr(AvalancheEWCPlugin, "compute_importances", spy)
    probe = FisherProbe(x, y, mode)
    strategy = EWC(ewc_lambda=100.0, **_common(_model(1), _recipe(mode), probe))
    strategy.train(bm.train_stream[0])

    train_idx, valid_idx = split_indices(N_TRAIN, VALID, 0, 0)
    want = x[torch.as_tensor(train_idx)] if mode == "paper" else x
    assert len(seen) == 1 and torch.equal(seen[0], want)  # exactly the training samples
    if mode == "paper":
        valid = x[torch.as_tensor(valid_idx)]
        assert not (seen[0][:, None] == valid[None]).all(-1).any()  # no validation sample
    importances = _plugin(strategy, EWCPlugin).importances[0]
    for name, fisher in probe.fisher.items():
        torch.testing.assert_close(importances[name].data, fisher, rtol=1e-5, atol=1e-12)
    if mode == "paper":  # the check can tell the two apart
        assert any(not torch.allclose(probe.fisher[n], probe.fisher_all[n], rtol=1e-3)
                   for n in probe.fisher)


# ------------------------------------------------- 3. penalties in the validation loss
class ValidationCheck(SupervisedPlugin):
    """After each epoch (after the recipe): the recipe's validation loss, the plain mean
    cross-entropy and the strategy's penalty computed here by hand."""

    def __init__(self, recipe: TrainingRecipePlugin, penalty):
        super().__init__()
        self.recipe, self.penalty = recipe, penalty
        self.snapshot = None  # the model after the first task, in evaluation mode
        self.anchor: list[torch.Tensor] | None = None  # IMM: the trunk the task starts from
        self.seen: list[tuple[int, float, float, float]] = []

    def before_training_exp(self, strategy, **kwargs):
        self.anchor = [p.detach().clone() for p in strategy.model.trunk.parameters()]

    def after_training_exp(self, strategy, **kwargs):
        if self.snapshot is None:
            self.snapshot = copy.deepcopy(strategy.model).eval()

    @torch.no_grad()
    def after_training_epoch(self, strategy, **kwargs):
        model = strategy.model
        task = strategy.clock.train_exp_counter
        x, y, _ = materialize(self.recipe.valid_data)
        model.eval()
        ce = float(F.cross_entropy(model(x, task), y))
        penalty = float(self.penalty(strategy, self, x)) if task > 0 else 0.0
        model.train()
        self.seen.append((task, self.recipe.validation_loss(strategy), ce, penalty))


def _ewc_penalty(strategy, check, x):
    ewc = _plugin(strategy, EWCPlugin)
    total = 0.0
    for tau in range(strategy.clock.train_exp_counter):
        for name, p in strategy.model.named_parameters():
            imp = ewc.importances[tau][name].data
            total += float((imp * (p - ewc.saved_params[tau][name].data) ** 2).sum())
    return ewc.ewc_lambda * total


def _si_penalty(strategy, check, x):
    si = _plugin(strategy, SIPlugin)
    star, imp = si.ewc_data
    total = sum(float((imp[n].data * (p.flatten() - star[n].data) ** 2).sum())
                for n, p in strategy.model.named_parameters())
    return si.si_lambda[-1] * total / 2


def _imm_penalty(strategy, check, x):
    imm = _plugin(strategy, IMMPlugin)
    total = sum(float(((p - a) ** 2).sum())
                for p, a in zip(strategy.model.trunk.parameters(), check.anchor, strict=True))
    return imm.lambda_ * total / 2


def _lwf_penalty(strategy, check, x):
    lwf = _plugin(strategy, LwFPlugin).lwf
    temp = lwf.temperature
    q = F.softmax(check.snapshot(x, 0) / temp, dim=1)  # the task-1 model, evaluation mode
    log_p = F.log_softmax(strategy.model(x, 0) / temp, dim=1)
    kl = (q * (q.log() - log_p)).sum(1).mean()  # KL(teacher || student), sample mean
    return lwf.alpha * float(kl)


def _lfl_penalty(strategy, check, x):
    lfl = _plugin(strategy, LFLPlugin)
    dist = ((strategy.model.trunk(x) - check.snapshot.trunk(x)) ** 2).sum(1)
    # the training formula (summed over a mini-batch) for a batch of train_mb_size samples
    return lfl.lambda_ * strategy.train_mb_size * float(dist.mean()) / 2


PENALTIES = {
    "ewc": (lambda kw: EWC(ewc_lambda=1000.0, **kw), _ewc_penalty),
    "si": (lambda kw: SynapticIntelligence(si_lambda=1e4, **kw), _si_penalty),
    "imm-mean": (lambda kw: IMM(mode="mean", lambda_=1.0, **kw), _imm_penalty),
    "lwf": (lambda kw: LwF(alpha=50.0, temperature=2.0, **kw), _lwf_penalty),
    "lfl": (lambda kw: LessForgetfulLearning(lambda_=0.05, **kw), _lfl_penalty),
}


@pytest.mark.parametrize("name", list(PENALTIES))
def test_validation_loss_includes_the_strategys_penalty(name):
    """Validation loss = mean CE + the penalty on the validation data (batches of 5 of the 12
    samples: the batch terms are weighted by batch size like the CE); the penalty is 0 on the
    first task and makes a difference on the second."""
    build, penalty = PENALTIES[name]
    bm, _, _ = make_stream(2, MLP_SHAPE, n_train=N_TRAIN)
    recipe = _recipe()
    check = ValidationCheck(recipe, penalty)
    strategy = build(_common(_model(), recipe, check, epochs=3))
    strategy.train(bm.train_stream[0])
    strategy.train(bm.train_stream[1])
    assert [task for task, *_ in check.seen] == [0] * 3 + [1] * 3
    for task, got, ce, pen in check.seen:
        assert math.isclose(got, ce + pen, rel_tol=1e-5, abs_tol=1e-7), (task, got, ce, pen)
        if task > 0:
            assert abs(got - ce) > 1e-4 * max(1.0, ce), (got, ce)


def test_validation_loss_without_penalties_is_the_plain_cross_entropy():
    """No plugin with a penalty: the recipe's number is the mean CE, as before."""
    from avalanche.training import Naive

    bm, _, _ = make_stream(2, MLP_SHAPE, n_train=N_TRAIN)
    recipe = _recipe()
    check = ValidationCheck(recipe, lambda *a: 0.0)
    strategy = Naive(**_common(_model(), recipe, check))
    strategy.train(bm.train_stream[0])
    strategy.train(bm.train_stream[1])
    for _task, got, ce, _ in check.seen:
        assert math.isclose(got, ce, rel_tol=1e-6)


# ------------------------------------------------------------- 4. gradient clipping
class GradProbe(SupervisedPlugin):
    """Raw gradients after the backward (before the clipping plugin, which acts in
    ``before_update``), the weights before the step."""

    def __init__(self):
        super().__init__()
        self.raw: list[list[torch.Tensor]] = []
        self.w_pre: list[list[torch.Tensor]] = []

    def after_backward(self, strategy, **kwargs):
        self.raw.append([p.grad.clone() for p in strategy.model.parameters()
                         if p.grad is not None])
        self.w_pre.append([p.detach().clone() for p in strategy.model.parameters()
                            if p.grad is not None])


class StepProbe(SupervisedPlugin):
    """The gradients the optimizer steps with (placed after the clipping plugin) and the
    weights after the step."""

    def __init__(self):
        super().__init__()
        self.used: list[list[torch.Tensor]] = []
        self.w_post: list[list[torch.Tensor]] = []

    def before_update(self, strategy, **kwargs):
        self.used.append([p.grad.clone() for p in strategy.model.parameters()
                          if p.grad is not None])

    def after_update(self, strategy, **kwargs):
        self.w_post.append([p.detach().clone() for p in strategy.model.parameters()
                           if p.grad is not None])


def _global_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


@pytest.mark.parametrize("max_norm", [1e-3, 1e6])
def test_gradient_clip_bounds_the_global_norm_before_the_step(max_norm):
    from avalanche.training import Naive

    bm, _, _ = make_stream(1, MLP_SHAPE, n_train=N_TRAIN)
    raw, step, lr = GradProbe(), StepProbe(), 0.05
    clip = GradientClipPlugin(max_norm)
    strategy = Naive(**_common(_model(1), raw, clip, step, epochs=1, lr=lr))
    strategy.train(bm.train_stream[0])
    assert len(raw.raw) == len(step.used) == N_TRAIN // 8
    for g_raw, g_used, before, after in zip(raw.raw, step.used, raw.w_pre, step.w_post,
                                            strict=True):
        norm = _global_norm(g_raw)
        if norm <= max_norm:  # multiplied by exactly 1.0: bit-identical
            assert all(torch.equal(a, b) for a, b in zip(g_used, g_raw, strict=True))
        else:  # scaled to the bound, all tensors by one factor
            assert math.isclose(float(_global_norm(g_used)), max_norm, rel_tol=1e-4)
            coef = max_norm / (norm + 1e-6)
            for a, b in zip(g_used, g_raw, strict=True):
                torch.testing.assert_close(a, b * coef)
        for w0, w1, g in zip(before, after, g_used, strict=True):  # the step used them
            assert torch.equal(w1, w0.add(g, alpha=-lr))
    norms = [float(_global_norm(g)) for g in raw.raw]
    assert (min(norms) > max_norm) if max_norm < 1 else (max(norms) < max_norm)


def test_reference_clipgrad_values_cover_the_registry():
    assert set(REFERENCE_CLIPGRAD) == set(STRATEGIES)
    assert REFERENCE_CLIPGRAD["ewc"] == REFERENCE_CLIPGRAD["lwf"] == 100
    assert REFERENCE_CLIPGRAD["lfl"] == 200
    assert REFERENCE_CLIPGRAD["imm-mode"] == REFERENCE_CLIPGRAD["pathnet"] == 1000
    assert {REFERENCE_CLIPGRAD[n] for n in ("naive", "sgd-f", "joint", "hat", "pnn",
                                            "imm-mean", "si")} == {10000}
    with pytest.raises(ValueError):
        GradientClipPlugin(0.0)


# ------------------------------------------------------------------ SI's path integral
class PathIntegral(SupervisedPlugin):
    """Σ over steps of grad · (θ_after − θ_before) per parameter, by hand (Avalanche's
    ``post_update`` formula, parameter by parameter), checked against SI's at each task's end."""

    def __init__(self):
        super().__init__()
        self.total: dict[str, torch.Tensor] = {}
        self.checked = 0

    def before_training_exp(self, strategy, **kwargs):
        self.total = {n: torch.zeros(p.numel()) for n, p in strategy.model.named_parameters()}

    def before_training_iteration(self, strategy, **kwargs):
        self.before = {n: p.detach().flatten().clone()
                       for n, p in strategy.model.named_parameters()}

    def after_training_iteration(self, strategy, **kwargs):
        for n, p in strategy.model.named_parameters():
            if p.grad is not None:
                self.total[n] += p.grad.flatten() * (p.detach().flatten() - self.before[n])

    def after_training_exp(self, strategy, **kwargs):
        si = _plugin(strategy, SIPlugin)
        for n, t in self.total.items():
            assert torch.equal(si.syn_data["trajectory"][n].data, t), n
        assert any(bool(t.abs().sum() > 0) for t in self.total.values())
        self.checked += 1


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_si_path_integral_equals_the_per_parameter_formula_bit_for_bit(momentum):
    model = _model()
    probe = PathIntegral()
    kw = _common(model, probe)
    kw["optimizer"] = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum)
    strategy = SynapticIntelligence(si_lambda=1.0, **kw)
    for exp in make_stream(2, n_train=N_TRAIN)[0].train_stream:
        strategy.train(exp, eval_streams=[])
    assert probe.checked == 2


# ------------------------------------------------------------------ LwF's distillation term
@settings(max_examples=40, deadline=None)
@given(n_classes=st.integers(1, 12), batch=st.integers(1, 70), temperature=st.sampled_from(
    [0.5, 1.0, 2.0, 4.0]), subset=st.booleans(), seed=st.integers(0, 2**16))
def test_lwf_distillation_equals_avalanches_bit_for_bit(n_classes, batch, temperature, subset,
                                                        seed):
    from avalanche.training.regularization import LearningWithoutForgetting

    from strategies.baselines.lwf import _Distillation

    g = torch.Generator().manual_seed(seed)
    out = (torch.randn(batch, n_classes, generator=g) * 5).requires_grad_()
    prev = torch.randn(batch, n_classes, generator=g) * 5
    units = set(range(n_classes))
    if subset and n_classes > 1:  # classes seen: not every unit of the head
        units = set(torch.randperm(n_classes, generator=g)[: n_classes - 1].tolist())
    ours = _Distillation(1.0, temperature)._distillation_loss(out, prev, units)
    (grad,) = torch.autograd.grad(ours, out)
    theirs = LearningWithoutForgetting(1.0, temperature)._distillation_loss(out, prev, units)
    (grad_ref,) = torch.autograd.grad(theirs, out)
    assert torch.equal(ours, theirs) and torch.equal(grad, grad_ref)


# ------------------------------------------------------------------ penalties as one node
def _train_with_penalty(name: str, autograd: bool, opt: str) -> dict[str, torch.Tensor]:
    model = _model(3)
    kw = _common(model, epochs=2)
    params = model.parameters()
    kw["optimizer"] = {"sgd": lambda: torch.optim.SGD(params, lr=0.05),
                       "momentum": lambda: torch.optim.SGD(params, lr=0.05, momentum=0.9),
                       "adam": lambda: torch.optim.Adam(params, lr=1e-3)}[opt]()
    if name == "ewc":
        strategy = EWC(ewc_lambda=1e3, **kw)
        plugin = _plugin(strategy, EWCPlugin)
    else:
        strategy = SynapticIntelligence(si_lambda=1e2, **kw)
        plugin = _plugin(strategy, SIPlugin)
    plugin.autograd_penalty = autograd
    losses = []
    probe = type("LossProbe", (SupervisedPlugin,), {
        "after_backward": lambda self, s, **k: losses.append(float(s.loss))})()
    strategy.plugins.append(probe)
    torch.manual_seed(1)
    for exp in make_stream(3, n_train=N_TRAIN)[0].train_stream:
        strategy.train(exp, eval_streams=[])
    return {"losses": torch.tensor(losses),
            **{n: p.detach().clone() for n, p in model.named_parameters()}}


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("name", ["ewc", "si"])
def test_penalty_node_gives_autograds_numbers_bit_for_bit(name, opt):
    """EWC's and SI's penalties as one autograd node: the same loss values and parameters
    as autograd's own operations, over three tasks (two earlier Fishers for EWC)."""
    ref = _train_with_penalty(name, True, opt)
    fast = _train_with_penalty(name, False, opt)
    assert ref.keys() == fast.keys()
    differ = [k for k in ref  # float32 compared as int32: +0 and -0 differ too
              if not torch.equal(ref[k].view(torch.int32), fast[k].view(torch.int32))]
    assert not differ, differ
    assert len(ref["losses"]) > 0
