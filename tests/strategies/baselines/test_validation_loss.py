"""The training recipe's validation loss includes each strategy's own penalty, as the
reference implementation's ``eval()`` uses its training criterion (joansj/hat,
``src/approaches``): EWC, SI, IMM, LwF, LFL; without a penalty it is the plain
cross-entropy."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin

from strategies import (
    EWC,
    IMM,
    EWCPlugin,
    LessForgetfulLearning,
    LFLPlugin,
    LwF,
    LwFPlugin,
    TrainingRecipePlugin,
    materialize,
)
from strategies.baselines.imm import IMMPlugin
from strategies.baselines.si import SIPlugin, SynapticIntelligence
from tests.support.regularisers import N_TRAIN, _common, _model, _recipe
from tests.support.trunks import (
    MLP_SHAPE,
    make_stream,
    plugin_of,
)

pytestmark = pytest.mark.usefixtures("one_thread")


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
    ewc = plugin_of(strategy, EWCPlugin)
    total = 0.0
    for tau in range(strategy.clock.train_exp_counter):
        for name, p in strategy.model.named_parameters():
            imp = ewc.importances[tau][name].data
            total += float((imp * (p - ewc.saved_params[tau][name].data) ** 2).sum())
    return ewc.ewc_lambda * total


def _si_penalty(strategy, check, x):
    si = plugin_of(strategy, SIPlugin)
    star, imp = si.ewc_data
    total = sum(float((imp[n].data * (p.flatten() - star[n].data) ** 2).sum())
                for n, p in strategy.model.named_parameters())
    return si.si_lambda[-1] * total / 2


def _imm_penalty(strategy, check, x):
    imm = plugin_of(strategy, IMMPlugin)
    total = sum(float(((p - a) ** 2).sum())
                for p, a in zip(strategy.model.trunk.parameters(), check.anchor, strict=True))
    return imm.lambda_ * total / 2


def _lwf_penalty(strategy, check, x):
    lwf = plugin_of(strategy, LwFPlugin).lwf
    temp = lwf.temperature
    q = F.softmax(check.snapshot(x, 0) / temp, dim=1)  # the task-1 model, evaluation mode
    log_p = F.log_softmax(strategy.model(x, 0) / temp, dim=1)
    kl = (q * (q.log() - log_p)).sum(1).mean()  # KL(teacher || student), sample mean
    return lwf.alpha * float(kl)


def _lfl_penalty(strategy, check, x):
    lfl = plugin_of(strategy, LFLPlugin)
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
