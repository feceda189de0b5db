"""The six baselines on CUDA with the paper's AlexNet-like network (skipped without a GPU).

Earlier tasks' outputs stay bit-identical for the parameter-isolation baselines (SGD-F, PNN,
PathNet) under AdamW with weight decay; every baseline trains with finite outputs. cuDNN is
put in deterministic mode for the comparisons (the same weights and inputs must give the same
outputs; that is a property of the kernels, not of the methods).
"""

from __future__ import annotations

import time

import pytest
import torch

from benchmark.networks import alexnet_trunk
from strategies import MultiHeadNet, TrainConfig, get_strategy
from strategies.registry import BuildContext
from tests.support.trunks import fast_plugins, make_stream, quiet_evaluator

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SHAPE = (3, 32, 32)
BASELINES = ["sgd-f", "imm-mean", "imm-mode", "lfl", "pathnet", "pnn"]


@pytest.fixture(autouse=True)
def deterministic_cudnn():
    old = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


def alexnet(n_tasks: int) -> MultiHeadNet:
    return MultiHeadNet(alexnet_trunk(SHAPE, 2048), 2048, [2] * n_tasks).cuda()


def build(name: str, n_tasks: int = 3, overrides=None):
    torch.manual_seed(0)
    model = alexnet(n_tasks)
    train = TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.01, batch_size=32,
                        epochs=2, recipe="fixed")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    ctx = BuildContext(model=model, optimizer=optimizer, train=train, plugins=fast_plugins(),
                       device="cuda", evaluator=quiet_evaluator())
    spec = get_strategy(name)
    return spec.build(ctx, spec.config(overrides or {}))


@torch.no_grad()
def outputs(model, x, task):
    model.eval()
    out = model(x.cuda(), task).clone()
    model.train()
    return out


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_train_on_cuda_with_the_alexnet_like_net(name):
    bm, _, test = make_stream(3, SHAPE, n_train=64, n_test=32)
    strategy = build(name)
    model = strategy.model
    assert next(model.parameters()).is_cuda
    isolated = name in ("sgd-f", "pnn", "pathnet")
    seen = {}
    for t in range(3):
        start = time.perf_counter()
        strategy.train(bm.train_stream[t])
        torch.cuda.synchronize()
        print(f"{name} task {t}: {time.perf_counter() - start:.2f} s")
        seen[t] = outputs(model, test[t][0], t)
        assert torch.isfinite(seen[t]).all()
        if isolated:
            for u in range(t):
                assert torch.equal(outputs(model, test[u][0], u), seen[u]), (name, t, u)


@pytest.mark.parametrize("name", ["naive", "pnn", "pathnet"])
def test_step_time_on_the_alexnet_like_net(name):
    """Not an assertion: ms per training step at batch 64 for the 10th of 10 tasks, only what
    that task trains having ``requires_grad`` (as the plugins arrange)."""
    from strategies import PathNetNet, ProgressiveNet
    from strategies.common.multihead import freeze_all_but

    torch.manual_seed(0)
    base = alexnet(10)
    if name == "pnn":
        model = ProgressiveNet.from_multihead(base)
        freeze_all_but(model, model.task_parameters(9))
    elif name == "pathnet":
        model = PathNetNet.from_multihead(base)
        freeze_all_but(model, model.trainable_parameters(9))
    else:
        model = base
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    x = torch.randn(64, *SHAPE, device="cuda")
    y = torch.randint(0, 2, (64,), device="cuda")
    for i in range(60):
        if i == 10:
            torch.cuda.synchronize()
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x, 9), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {1000 * (time.perf_counter() - start) / 50:.2f} ms/step, "
          f"{n_params / 1e6:.2f} M parameters")
