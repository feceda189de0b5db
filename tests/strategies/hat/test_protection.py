"""HAT's strongest claim: earlier tasks' outputs are bit-identical after training later ones.

The optimizer is created once and never rebuilt between experiences (no recipe plugin), so
momentum buffers, Adam moments and weight decay are carried over, as Avalanche does by default
(hat-reference §1, "Why the optimiser matters"). Naive fine-tuning of the same trunk under the
same protocol must change the earlier outputs: otherwise the check would prove nothing.
"""

from __future__ import annotations

import pytest
import torch
from avalanche.training import Naive

from strategies import HAT
from tests.support.trunks import (
    ALL_TRUNKS,
    MLP_SHAPE,
    OPTIMIZERS,
    ChangeRecorder,
    accuracy,
    fast_plugins,
    hat_net,
    logits,
    make_stream,
    mlp_trunk,
    multihead_net,
    quiet_evaluator,
)

pytestmark = pytest.mark.usefixtures("one_thread")

N_TASKS = 3
EPOCHS = 2


def _train_and_record(model, strategy, bm, test):
    """Train task by task; after each, the eval logits of every task trained so far."""
    outputs = []
    for i in range(N_TASKS):
        strategy.train(bm.train_stream[i])
        outputs.append([logits(model, test[j][0], j) for j in range(i + 1)])
    return outputs


@pytest.mark.parametrize("trunk_name", sorted(ALL_TRUNKS))
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_hat_keeps_earlier_tasks_bit_identical(trunk_name, opt_name):
    torch.manual_seed(0)
    make_trunk, shape = ALL_TRUNKS[trunk_name]
    bm, _, test = make_stream(N_TASKS, shape)
    model = hat_net(make_trunk(), shape)
    optimizer = OPTIMIZERS[opt_name](model.parameters())
    strategy = HAT(
        model=model, optimizer=optimizer, train_mb_size=16, train_epochs=EPOCHS,
        plugins=fast_plugins(recorder := ChangeRecorder()), evaluator=quiet_evaluator(),
    )
    outputs = _train_and_record(model, strategy, bm, test)

    # the optimizer was never replaced: its state really was carried across experiences
    assert strategy.optimizer is optimizer
    for i in range(1, N_TASKS):
        for j in range(i):
            for task in range(j + 1):
                assert torch.equal(outputs[j][task], outputs[i][task]), (
                    f"{opt_name}/{trunk_name}: output of task {task} changed between the end "
                    f"of experience {j} and the end of experience {i}"
                )

    # protection is not trivially from not training: every experience moved the shared
    # trunk and the task's own head and embeddings
    trunk_weights = {n for n, _ in model.trunk.named_parameters() if "embeddings" not in n}
    assert len(recorder.changed) == N_TASKS
    for i, names in enumerate(recorder.changed):
        assert names & {f"trunk.{n}" for n in trunk_weights}, f"experience {i}: trunk frozen"
        assert f"heads.{i}.weight" in names, f"experience {i}: head {i} did not train"
        assert any(n.endswith(f"embeddings.{i}") for n in names), f"experience {i}: no e^{i}"
        # and nothing of another task moved
        for t in range(N_TASKS):
            if t != i:
                assert not any(n.startswith(f"heads.{t}.") for n in names)
                assert not any(n.endswith(f"embeddings.{t}") for n in names)


@pytest.mark.parametrize("trunk_name", sorted(ALL_TRUNKS))
def test_naive_on_the_same_trunk_changes_earlier_outputs(trunk_name):
    """The control: without HAT the very same protocol does change earlier tasks."""
    torch.manual_seed(0)
    make_trunk, shape = ALL_TRUNKS[trunk_name]
    bm, _, test = make_stream(N_TASKS, shape)
    model = multihead_net(make_trunk(), shape)
    strategy = Naive(
        model=model, optimizer=OPTIMIZERS["adamw"](model.parameters()), train_mb_size=16,
        train_epochs=EPOCHS, eval_mb_size=16, plugins=fast_plugins(), evaluator=quiet_evaluator(),
    )
    outputs = _train_and_record(model, strategy, bm, test)
    for i in range(1, N_TASKS):
        assert not torch.equal(outputs[0][0], outputs[i][0])
        assert not torch.equal(outputs[i - 1][i - 1], outputs[i][i - 1])


def test_hat_learns_every_task_and_keeps_its_accuracy():
    """HAT really learns the easy tasks (well above chance) and keeps each task's accuracy."""
    torch.manual_seed(0)
    bm, _, test = make_stream(N_TASKS, MLP_SHAPE)
    model = hat_net(mlp_trunk(), MLP_SHAPE)
    strategy = HAT(
        model=model, optimizer=torch.optim.Adam(model.parameters(), lr=0.01), train_mb_size=16,
        train_epochs=5, plugins=fast_plugins(), evaluator=quiet_evaluator(),
    )
    acc = []
    for i in range(N_TASKS):
        strategy.train(bm.train_stream[i])
        acc.append([accuracy(model, test[j][0], test[j][1], j) for j in range(i + 1)])
    for i in range(N_TASKS):
        assert acc[i][i] >= 0.85, f"task {i} not learned: accuracy {acc[i][i]} (chance 0.5)"
        assert acc[-1][i] == acc[i][i]


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_per_task_batchnorm_trains_its_task_and_then_stays_frozen(opt_name):
    """Each task's BatchNorm (affine parameters and running statistics) moves while its task
    trains and is bit-identical afterwards; a unit a task masks outputs exactly 0 after the
    norm (the gate comes after the normalisation)."""
    from tests.support.trunks import CONV_SHAPE, conv_bn_trunk

    torch.manual_seed(0)
    bm, _, test = make_stream(N_TASKS, CONV_SHAPE)
    model = hat_net(conv_bn_trunk(), CONV_SHAPE)
    strategy = HAT(model=model, optimizer=OPTIMIZERS[opt_name](model.parameters()),
                   train_mb_size=16, train_epochs=EPOCHS, plugins=fast_plugins(),
                   evaluator=quiet_evaluator())
    norms = model.task_norms
    assert [type(n).__name__ for n in norms] == ["HATBatchNorm2d", "HATBatchNorm1d"]
    states = []
    for i in range(N_TASKS):
        strategy.train(bm.train_stream[i])
        states.append([{k: v.clone() for k, v in n.norm(i).state_dict().items()} for n in norms])
        fresh = type(norms[0].norm(i))(norms[0].num_features).state_dict()
        assert not torch.equal(states[i][0]["running_mean"], fresh["running_mean"])
        assert not torch.equal(states[i][0]["weight"], fresh["weight"])  # γ trained
    for i in range(N_TASKS):
        for n, saved in zip(norms, states[i], strict=True):
            now = n.norm(i).state_dict()
            assert all(torch.equal(now[k], saved[k]) for k in saved), f"task {i}'s BN changed"
    # after the norm, the gate: units a task masks are exactly 0 for that task
    seen = {}
    hook = norms[0].register_forward_hook(lambda m, i, o: seen.update(out=o))
    model.eval()
    masked = 0
    for task in range(N_TASKS):
        logits(model, test[task][0], task)
        off = model.masks(task)[0] == 0
        masked += int(off.sum())
        assert torch.equal(seen["out"][:, off], torch.zeros_like(seen["out"][:, off]))
    hook.remove()
    assert masked > 0  # some task masked some unit: the check above saw zeros to verify
