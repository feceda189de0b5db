"""Shared helpers for the strategy tests: tiny task-incremental streams, trunks, strategies.

Everything is small (tens of samples, a few epochs) so that the whole suite runs in seconds.
The synthetic tasks are easy (one Gaussian cluster per class, different per task), so that
a working learner beats chance clearly within a few steps.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import pytest
import torch
from avalanche.benchmarks import tensors_benchmark
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from torch import nn

from strategies import FastDataPlugin, HATNet, MultiHeadNet

MLP_SHAPE = (64,)
CONV_SHAPE = (1, 8, 8)


def quiet_evaluator() -> EvaluationPlugin:
    """An evaluator without loggers (and without its 'No loggers specified' warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EvaluationPlugin()


def task_data(
    n: int, shape: Sequence[int], task: int, seed: int, n_classes: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples of an easy task fixed by (seed, task): Gaussian clusters, one per class.

    The class means are far enough apart for a trained network to be nearly perfect, and
    close enough that an untrained (random) network stays near chance.
    """
    g = torch.Generator().manual_seed(1000 * seed + task)
    dim = 1
    for d in shape:
        dim *= d
    means = 0.5 * torch.randn(n_classes, dim, generator=g)
    y = torch.arange(n) % n_classes
    y = y[torch.randperm(n, generator=g)]
    x = torch.randn(n, dim, generator=g) + means[y]
    return x.view(n, *shape), y


def make_stream(
    n_tasks: int = 3,
    shape: Sequence[int] = MLP_SHAPE,
    n_train: int = 64,
    n_test: int = 32,
    seed: int = 0,
    n_classes: int | Sequence[int] = 2,
):
    """A task-incremental benchmark: experience i has task label i.

    Returns ``(benchmark, train_tensors, test_tensors)``; test inputs of task t are
    ``test_tensors[t][0]``.
    """
    sizes = [n_classes] * n_tasks if isinstance(n_classes, int) else list(n_classes)
    train, test = [], []
    for t in range(n_tasks):
        x, y = task_data(n_train + n_test, shape, t, seed, sizes[t])
        train.append((x[:n_train], y[:n_train]))
        test.append((x[n_train:], y[n_train:]))
    bm = tensors_benchmark(
        train_tensors=train,
        test_tensors=test,
        task_labels=list(range(n_tasks)),
        complete_test_set_only=False,
    )
    return bm, train, test


def mlp_trunk() -> nn.Sequential:
    """Linear 64-32, ReLU, Dropout, Linear 32-32, ReLU."""
    return nn.Sequential(
        nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 32), nn.ReLU()
    )


def conv_trunk() -> nn.Sequential:
    """Conv2d(1→4, 3) → ReLU → MaxPool(2) → Flatten → Linear(36→16) → ReLU, on 1×8×8."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 16),
        nn.ReLU(),
    )


def conv_bn_trunk() -> nn.Sequential:
    """``conv_trunk`` with BatchNorm after each layer (per task under HAT, shared otherwise)."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(4 * 3 * 3, 16), nn.BatchNorm1d(16), nn.ReLU(),
    )


#: small image inputs for the ResNets: cheap on CPU, every stage still runs
RESNET18_SHAPE = (3, 16, 16)
RESNET32_SHAPE = (3, 8, 8)


def resnet18_trunk() -> nn.Module:
    """torchvision's stock ResNet-18 (ImageNet stem) without its classifier: residual
    blocks, 1×1 downsample shortcuts, a BatchNorm after every conv (11.2 M parameters)."""
    from torchvision.models import resnet18

    model = resnet18(num_classes=10)
    model.fc = nn.Identity()
    return model


def resnet32_trunk() -> nn.Module:
    """The suite's CIFAR ResNet-32 (5 blocks per stage, widths 16/32/64)."""
    from benchmark.networks import resnet32_trunk as build

    return build(RESNET32_SHAPE)


#: chains of gated layers (each its own gate group)
TRUNKS = {"mlp": (mlp_trunk, MLP_SHAPE), "conv": (conv_trunk, CONV_SHAPE),
          "conv_bn": (conv_bn_trunk, CONV_SHAPE)}
#: residual networks (gate groups across the skip connections)
RESNETS = {"resnet18": (resnet18_trunk, RESNET18_SHAPE),
           "resnet32": (resnet32_trunk, RESNET32_SHAPE)}
ALL_TRUNKS = {**TRUNKS, **RESNETS}


def feature_dim(trunk: nn.Module, shape: Sequence[int]) -> int:
    with torch.no_grad():
        was = trunk.training
        trunk.eval()
        out = trunk(torch.zeros(1, *shape))
        trunk.train(was)
    return out.shape[1]


def hat_net(trunk: nn.Module, shape: Sequence[int], **kw) -> HATNet:
    return HATNet.wrap(trunk, shape, **kw)


def multihead_net(
    trunk: nn.Module, shape: Sequence[int], head_sizes: Sequence[int] = ()
) -> MultiHeadNet:
    return MultiHeadNet(trunk, feature_dim(trunk, shape), head_sizes)


OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1),
    "sgd_momentum": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=0.01),
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.01),
}


def fast_plugins(*more) -> list:
    """FastDataPlugin first (other plugins must see its loader), then ``more``."""
    return [FastDataPlugin(), *more]


def plugin_of(strategy, cls):
    """The first plugin of class ``cls`` in ``strategy``."""
    return next(p for p in strategy.plugins if isinstance(p, cls))


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor, task: int) -> torch.Tensor:
    """Evaluation-mode outputs of head ``task``; the model's mode is restored."""
    was = model.training
    model.eval()
    try:
        return model(x, task).clone()
    finally:
        model.train(was)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: int) -> float:
    return float((logits(model, x, task).argmax(dim=1) == y).float().mean())


def clone_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class ChangeRecorder(SupervisedPlugin):
    """Records, per training experience, the names of the parameters that changed in it.

    The snapshot is taken in ``before_training_exp``, after Avalanche's model adaptation, so
    that heads and embeddings created for the experience are included.
    """

    def __init__(self):
        super().__init__()
        self.changed: list[set[str]] = []
        self._before: dict[str, torch.Tensor] = {}

    def before_training_exp(self, strategy, **kwargs):
        self._before = clone_params(strategy.model)

    def after_training_exp(self, strategy, **kwargs):
        after = clone_params(strategy.model)
        before = self._before
        self.changed.append(
            {n for n, v in after.items() if n in before and not torch.equal(v, before[n])}
        )


def flushing_denormals() -> bool:
    """Whether denormal floats are flushed to zero now (``torch.set_flush_denormal``)."""
    return bool((torch.tensor([1e-39], dtype=torch.float32) * 2.0 == 0).item())


@pytest.fixture(autouse=True)
def keep_subnormals():
    """Subnormal floats on for the test (hypothesis refuses to draw floats without them),
    whatever earlier code in this process set (the runner flushes them process-wide); the
    previous mode is restored afterwards. Import it into a test module to use it."""
    was = flushing_denormals()
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(was)
