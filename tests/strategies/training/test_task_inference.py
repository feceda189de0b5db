"""Task inference: each score against a hand computation, the choice of task and class, and
HAT's protection kept while inference runs between tasks."""

from __future__ import annotations

import math

import pytest
import torch

from strategies import HAT
from strategies.training.task_inference import (
    SCORES,
    infer,
    task_inference_accuracy,
    task_logits,
)
from tests.support.trunks import (
    MLP_SHAPE,
    fast_plugins,
    hat_net,
    logits,
    make_stream,
    mlp_trunk,
    quiet_evaluator,
)

Z = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]])


def test_each_score_by_hand():
    e2 = math.exp(2)
    p = [e2 / (e2 + 2), 1 / (e2 + 2), 1 / (e2 + 2)]
    want = {
        "max_softmax": [p[0], 1 / 3],
        "max_logit": [2.0, 1.0],
        "energy": [math.log(e2 + 2), math.log(3 * math.e)],
        "neg_entropy": [sum(q * math.log(q) for q in p), math.log(1 / 3)],
    }
    assert set(SCORES) == set(want)
    for name, values in want.items():
        assert SCORES[name](Z).tolist() == pytest.approx(values, abs=1e-6), name


def test_infer_takes_the_best_scored_task_then_its_class():
    # sample 0 fits task 1 (a sharp head), sample 1 fits task 0; widths differ per task
    z0 = torch.tensor([[0.1, 0.0], [5.0, 0.0]])
    z1 = torch.tensor([[0.0, 0.0, 4.0], [0.3, 0.2, 0.1]])
    for score in SCORES:
        out = infer([z0, z1], score)
        assert out.task.tolist() == [1, 0], score
        assert out.label.tolist() == [2, 0], score
        assert out.scores.shape == (2, 2)


def test_a_score_can_disagree_with_another():
    """max_logit and max_softmax pick different tasks when one head is large but flat."""
    flat_large = torch.tensor([[10.0, 10.0, 10.0, 10.0]])
    sharp_small = torch.tensor([[3.0, 0.0]])
    assert infer([flat_large, sharp_small], "max_logit").task.item() == 0
    assert infer([flat_large, sharp_small], "max_softmax").task.item() == 1


def test_inference_between_tasks_keeps_hat_earlier_tasks_bit_identical():
    torch.manual_seed(0)
    bm, _, test = make_stream(3, MLP_SHAPE)
    model = hat_net(mlp_trunk(), MLP_SHAPE)
    strategy = HAT(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                   train_mb_size=16, train_epochs=2, plugins=fast_plugins(),
                   evaluator=quiet_evaluator())
    sets = [(x, y) for x, y in test]
    before = None
    for i in range(3):
        strategy.train(bm.train_stream[i])
        model.train()  # inference restores the caller's mode
        task_inference_accuracy(model, sets, i + 1, "energy", "cpu")
        assert model.training
        now = [logits(model, test[j][0], j) for j in range(i + 1)]
        if before is not None:
            for j, old in enumerate(before):
                assert torch.equal(old, now[j]), f"task {j} changed after inference at {i}"
        before = now
    # and the per-task pass is the task-aware forward itself
    z = task_logits(model, test[0][0], [0, 1, 2])
    assert all(torch.equal(z[t], logits(model, test[0][0], t)) for t in range(3))


def test_class_il_counts_a_sample_only_when_task_and_class_are_both_right():
    class Fixed(torch.nn.Module):
        """Task t's logits: column 0 high for inputs > 0 when t == 0, else column 1."""

        def forward_single_task(self, x, t):
            sign = (x[:, 0] > 0).float()
            if t == 0:
                return torch.stack([5 * sign, torch.zeros_like(sign)], 1)
            return torch.stack([torch.zeros_like(sign), 1 - sign], 1)

    x0 = torch.tensor([[1.0], [1.0], [-1.0]])  # task 0: two inferred right, one wrong task
    y0 = torch.tensor([0, 1, 0])  # the second has the right task but the wrong class
    x1 = torch.tensor([[-1.0]])
    y1 = torch.tensor([1])
    class_il, task_pred = task_inference_accuracy(Fixed(), [(x0, y0), (x1, y1)], 2,
                                                  "max_logit", "cpu")
    assert task_pred == [pytest.approx(2 / 3), 1.0]
    assert class_il == [pytest.approx(1 / 3), 1.0]
