"""reports.metrics: every formula against values computed by hand on small matrices."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reports import metrics

# Two tasks. Rows: after training task t; columns: evaluated task tau.
ACC = [[0.90, 0.50], [0.70, 0.95]]
JOINT = [[0.95, 0.50], [0.90, 0.92]]
RANDOM = [0.50, 0.25]  # different per task: catches a row/column mix-up


def test_forgetting_ratio_by_hand():
    rho = metrics.forgetting_ratio(ACC, JOINT, RANDOM)
    # (0.90 - 0.50) / (0.95 - 0.50) - 1 = 0.40 / 0.45 - 1
    assert rho[0, 0] == pytest.approx(-0.1111111111)
    # (0.70 - 0.50) / (0.90 - 0.50) - 1 = 0.5 - 1
    assert rho[1, 0] == pytest.approx(-0.5)
    # (0.95 - 0.25) / (0.92 - 0.25) - 1 = 0.70 / 0.67 - 1
    assert rho[1, 1] == pytest.approx(0.0447761194)
    assert math.isnan(rho[0, 1])  # task 2 not learned after task 1


def test_forgetting_ratio_anchors():
    """rho = 0 when as good as joint, -1 when as bad as chance."""
    assert np.allclose(np.tril(metrics.forgetting_ratio(JOINT, JOINT, RANDOM)), 0.0)
    chance = [[0.50, 0.25], [0.50, 0.25]]
    rho = metrics.forgetting_ratio(chance, JOINT, RANDOM)
    assert rho[0, 0] == pytest.approx(-1.0)
    assert rho[1, 0] == pytest.approx(-1.0) and rho[1, 1] == pytest.approx(-1.0)


def test_forgetting_ratio_degenerate_joint_is_nan_without_warnings():
    joint = [[0.95, 0.50], [0.50, 0.92]]  # joint no better than chance on task 1 after t = 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any RuntimeWarning (division by zero) fails
        rho = metrics.forgetting_ratio(ACC, joint, RANDOM)
        curve = metrics.mean_forgetting_ratio(ACC, joint, RANDOM)
    assert math.isnan(rho[1, 0])
    assert rho[0, 0] == pytest.approx(-0.1111111111)
    # the undefined entry is left out of the mean: row 2 = rho[1, 1] alone
    assert curve[1] == pytest.approx(0.0447761194)


def test_mean_forgetting_ratio_all_undefined_row_is_nan():
    joint = [[0.50, 0.50], [0.50, 0.25]]  # equals chance everywhere on the lower triangle
    curve = metrics.mean_forgetting_ratio(ACC, joint, RANDOM)
    assert np.isnan(curve).all()


def test_mean_forgetting_ratio_by_hand():
    curve = metrics.mean_forgetting_ratio(ACC, JOINT, RANDOM)
    assert curve.shape == (2,)
    assert curve[0] == pytest.approx(-0.1111111111)
    assert curve[1] == pytest.approx((-0.5 + 0.0447761194) / 2)


@pytest.mark.parametrize(
    ("acc", "joint", "rnd"),
    [
        ([[0.9, 0.5]], JOINT, RANDOM),  # not square
        (ACC, [[0.9]], RANDOM),  # joint of another size
        (ACC, JOINT, [0.5]),  # random of another length
    ],
)
def test_forgetting_ratio_rejects_shapes(acc, joint, rnd):
    with pytest.raises(ValueError):
        metrics.forgetting_ratio(acc, joint, rnd)


def test_mean_ci_by_hand():
    # mean 2, sample sd 1, t(0.975, 2 dof) = 4.3027 (table) -> 4.3027 / sqrt(3)
    mean, half = metrics.mean_ci([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(4.3027 / math.sqrt(3), abs=1e-3)
    # two values 0 and 2: sd sqrt(2); t(0.975, 1) = 12.706, t(0.95, 1) = 6.314
    assert metrics.mean_ci([0.0, 2.0])[1] == pytest.approx(12.706, abs=1e-3)
    assert metrics.mean_ci([0.0, 2.0], confidence=0.90)[1] == pytest.approx(6.314, abs=1e-3)


def test_mean_ci_small_samples():
    mean, half = metrics.mean_ci([0.7])
    assert mean == 0.7 and math.isnan(half)  # a CI needs >= 2 seeds
    assert all(math.isnan(x) for x in metrics.mean_ci([]))
    # NaN values (seeds whose metric is undefined) are dropped: n = 2
    assert metrics.mean_ci([0.0, float("nan"), 2.0]) == pytest.approx((1.0, 12.706), abs=1e-3)
    with pytest.raises(ValueError):
        metrics.mean_ci([1.0, 2.0], confidence=95)


A3 = [[0.90, 0.10, 0.10], [0.95, 0.80, 0.10], [0.70, 0.50, 0.95]]


def test_final_average_accuracy_by_hand():
    assert metrics.final_average_accuracy(A3) == pytest.approx((0.70 + 0.50 + 0.95) / 3)


def test_bwt_by_hand():
    # ((0.70 - 0.90) + (0.50 - 0.80)) / 2 : against the accuracy just after learning
    assert metrics.bwt(A3) == pytest.approx(-0.25)
    assert math.isnan(metrics.bwt([[0.9]]))


def test_forgetting_by_hand_uses_the_max():
    # task 1: best before the last task is 0.95 (not the diagonal 0.90) -> 0.95 - 0.70
    # task 2: 0.80 - 0.50
    assert metrics.forgetting(A3) == pytest.approx((0.25 + 0.30) / 2)
    assert math.isnan(metrics.forgetting([[0.9]]))


def test_forgetting_excludes_the_last_row_from_the_max():
    # the max runs over t < T only: 0.6 - 0.8 = -0.2 (negative when the task improved)
    assert metrics.forgetting([[0.6, 0.1], [0.8, 0.9]]) == pytest.approx(-0.2)


def test_best_baseline():
    rho = {"hat": -0.01, "ewc": -0.08, "sgd": -0.30, "joint": 0.0}
    assert metrics.best_baseline(rho) == "ewc"
    # closest to 0 in absolute value, also when a rho is above 0 (not simply the highest)
    assert metrics.best_baseline({"a": 0.10, "b": -0.06}) == "b"
    assert metrics.best_baseline({"a": 0.05, "b": -0.06}) == "a"
    assert metrics.best_baseline({"a": float("nan"), "b": -0.06}) == "b"
    assert metrics.best_baseline({"hat": -0.1, "joint": 0.0}) is None


def test_forgetting_reduction_by_hand():
    # the paper's mixture numbers: HAT -0.02 vs EWC -0.08 -> 75 %; -0.06 vs -0.11 -> 45.45 %
    assert metrics.forgetting_reduction(-0.02, -0.08) == pytest.approx(75.0)
    assert metrics.forgetting_reduction(-0.06, -0.11) == pytest.approx(45.4545, abs=1e-3)
    assert metrics.forgetting_reduction(-0.10, -0.05) == pytest.approx(-100.0)
    assert math.isnan(metrics.forgetting_reduction(-0.02, 0.0))
    assert math.isnan(metrics.forgetting_reduction(float("nan"), -0.1))


def test_random_stratified_accuracy_by_hand():
    # sum_c p_train(c) p_test(c)
    assert metrics.random_stratified_accuracy([50, 50], [10, 30]) == pytest.approx(0.5)
    assert metrics.random_stratified_accuracy([90, 10], [90, 10]) == pytest.approx(0.82)
    assert metrics.random_stratified_accuracy([1, 1, 2], [1, 1, 0]) == pytest.approx(0.25)
    assert math.isnan(metrics.random_stratified_accuracy([0, 0], [1, 1]))
    with pytest.raises(ValueError):
        metrics.random_stratified_accuracy([1, 2], [1, 2, 3])


def test_validation_criterion_by_hand():
    # mean of the last row: validation accuracy over all tasks after the last task
    assert metrics.validation_criterion(A3) == pytest.approx((0.70 + 0.50 + 0.95) / 3)
    assert metrics.validation_criterion([[0.9]]) == pytest.approx(0.9)
    assert metrics.validation_criterion(ACC) == pytest.approx((0.70 + 0.95) / 2)  # not the diag


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 7).flatmap(
        lambda n: st.lists(
            st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n), min_size=n, max_size=n
        )
    )
)
def test_validation_criterion_is_the_mean_of_the_last_row(valid):
    value = metrics.validation_criterion(valid)
    assert value == pytest.approx(sum(valid[-1]) / len(valid[-1]))
    assert 0.0 <= value <= 1.0


@pytest.mark.parametrize("bad", [[[0.9, 0.5]], [], [0.5, 0.5], [[[0.5]]]])
def test_validation_criterion_rejects_non_square(bad):
    with pytest.raises(ValueError, match="valid_acc must be a non-empty T×T matrix"):
        metrics.validation_criterion(bad)
