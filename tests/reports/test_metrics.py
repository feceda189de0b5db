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


# --- forward transfer, intransigence, task-agnostic accuracy -------------------------------------

# single-task references: row t = task t trained alone (only the diagonal is read)
S3 = [[0.85, 0.50, 0.50], [0.50, 0.70, 0.50], [0.50, 0.50, 0.99]]
J3 = [[0.92, 0.10, 0.10], [0.93, 0.90, 0.10], [0.91, 0.88, 0.97]]


def test_forward_transfer_by_hand():
    # tasks 2..T (1-based): (0.80 - 0.70) + (0.95 - 0.99), over T - 1 = 2; task 1 is left out
    assert metrics.forward_transfer(A3, S3) == pytest.approx((0.10 - 0.04) / 2)
    assert metrics.forward_transfer(ACC, [[0.1, 0.2], [0.3, 0.90]]) == pytest.approx(0.05)
    assert math.isnan(metrics.forward_transfer([[0.9]], [[0.8]]))  # no task after the first


def test_intransigence_by_hand():
    # every task k = 1..T: a*_k (joint after tasks 1..k, on task k) - a_{k,k}
    want = ((0.92 - 0.90) + (0.90 - 0.80) + (0.97 - 0.95)) / 3
    assert metrics.intransigence(A3, J3) == pytest.approx(want)
    assert metrics.intransigence([[0.9]], [[0.95]]) == pytest.approx(0.05)  # defined at T = 1
    # the paper's JOINT above: 0.95 - 0.90 and 0.92 - 0.95
    assert metrics.intransigence(ACC, JOINT) == pytest.approx((0.05 - 0.03) / 2)


def test_forward_transfer_ignores_the_first_task_intransigence_does_not():
    changed = [row[:] for row in A3]
    changed[0][0] = 0.10
    assert metrics.forward_transfer(changed, S3) == pytest.approx(metrics.forward_transfer(A3, S3))
    assert metrics.intransigence(changed, J3) == pytest.approx(
        metrics.intransigence(A3, J3) + 0.80 / 3)


def _square_pair(n_max: int = 6):
    mat = lambda n: st.lists(  # noqa: E731
        st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n), min_size=n, max_size=n)
    return st.integers(1, n_max).flatmap(lambda n: st.tuples(mat(n), mat(n), mat(n)))


@settings(max_examples=80, deadline=None)
@given(_square_pair(), st.floats(-0.5, 0.5))
def test_transfer_properties(mats, delta):
    acc, ref, other = (np.asarray(m) for m in mats)
    n = acc.shape[0]
    # a run equal to its reference: no transfer, no intransigence
    fwt_self = metrics.forward_transfer(acc, acc)
    assert math.isnan(fwt_self) if n == 1 else fwt_self == 0.0
    assert metrics.intransigence(acc, acc) == 0.0
    # only the diagonals count: off-diagonal entries of either matrix change nothing
    mixed_acc = np.where(np.eye(n, dtype=bool), acc, other)
    mixed_ref = np.where(np.eye(n, dtype=bool), ref, other.T)
    assert metrics.intransigence(mixed_acc, mixed_ref) == pytest.approx(
        metrics.intransigence(acc, ref))
    # signs: learning every task delta better raises FWT and lowers intransigence by delta
    better = acc + delta * np.eye(n)
    assert metrics.intransigence(better, ref) == pytest.approx(
        metrics.intransigence(acc, ref) - delta)
    if n > 1:
        assert metrics.forward_transfer(mixed_acc, mixed_ref) == pytest.approx(
            metrics.forward_transfer(acc, ref))
        assert metrics.forward_transfer(better, ref) == pytest.approx(
            metrics.forward_transfer(acc, ref) + delta)
        # antisymmetric in its arguments; with a joint J and single S on tasks 2..T:
        # (T-1)·FWT(acc, S) + Σ (J_tt - acc_tt) = Σ (J_tt - S_tt), whatever acc is
        assert metrics.forward_transfer(ref, acc) == pytest.approx(
            -metrics.forward_transfer(acc, ref))
        joint, single = other, ref
        lhs = (n - 1) * metrics.forward_transfer(acc, single) + sum(
            joint[t, t] - acc[t, t] for t in range(1, n))
        assert lhs == pytest.approx(sum(joint[t, t] - single[t, t] for t in range(1, n)))


@pytest.mark.parametrize("fn", [metrics.forward_transfer, metrics.intransigence])
def test_transfer_metrics_reject_mismatched_shapes(fn):
    with pytest.raises(ValueError, match="differs from acc shape"):
        fn(A3, ACC)
    with pytest.raises(ValueError, match="acc must be a non-empty T×T matrix"):
        fn([[0.9, 0.5]], [[0.9, 0.5]])
    with pytest.raises(ValueError, match="must be a non-empty T×T matrix"):
        fn(ACC, [0.9, 0.5])


def test_transfer_metrics_propagate_nan_without_warnings():
    acc = [[0.9, 0.5], [0.7, float("nan")]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(metrics.forward_transfer(acc, ACC))
        assert math.isnan(metrics.intransigence(acc, JOINT))
        assert math.isnan(metrics.agnostic_final_accuracy([[0.9], [float("nan"), 0.5]]))


def test_agnostic_final_accuracy_by_hand():
    # the last row: task-agnostic accuracy on tasks 1..T after the last task
    assert metrics.agnostic_final_accuracy([[0.9], [0.4, 0.8], [0.3, 0.5, 0.7]]) == (
        pytest.approx(0.5))
    assert metrics.agnostic_final_accuracy([[0.6]]) == pytest.approx(0.6)
    assert metrics.agnostic_final_accuracy(np.array([[0.2]])) == pytest.approx(0.2)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 7).flatmap(lambda n: st.tuples(*(
    st.lists(st.floats(0.0, 1.0), min_size=t + 1, max_size=t + 1) for t in range(n)))))
def test_agnostic_final_accuracy_is_the_mean_of_the_last_row(rows):
    value = metrics.agnostic_final_accuracy(list(rows))
    assert value == pytest.approx(sum(rows[-1]) / len(rows[-1]))


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ([], "T >= 1 rows"),
        ("0.5", "T >= 1 rows"),
        (None, "T >= 1 rows"),
        (ACC, "row 0 must hold 1 accuracies"),  # a square matrix is not triangular
        ([[0.9], [0.5]], "row 1 must hold 2 accuracies"),
        ([[0.9], ["a", "b"]], r"row 1 .* no list of numbers"),
        ([0.9, 0.5], "row 0 must hold 1"),
    ],
)
def test_agnostic_final_accuracy_rejects_other_shapes(bad, match):
    with pytest.raises(ValueError, match=match):
        metrics.agnostic_final_accuracy(bad)


def test_best_baseline_excludes_the_references_by_default():
    assert metrics.best_baseline({"single": -0.001, "joint": 0.0, "ewc": -0.1}) == "ewc"


# --- class-incremental (triangular) metrics ------------------------------------------------------

# Class-IL rows: row t holds tasks 0..t after training task t
TRI = [[0.90], [0.95, 0.80], [0.70, 0.50, 0.95]]


def _triangles(n_max: int = 6, k: int = 1):
    """``k`` triangular matrices of one T (1..n_max), entries in [0, 1]."""
    def tri(n):
        return st.tuples(*(st.lists(st.floats(0.0, 1.0), min_size=t + 1, max_size=t + 1)
                           for t in range(n))).map(list)
    return st.integers(1, n_max).flatmap(lambda n: st.tuples(*(tri(n) for _ in range(k))))


def test_last_accuracy_by_hand_and_agnostic_final_accuracy_is_it():
    assert metrics.last_accuracy(TRI) == pytest.approx((0.70 + 0.50 + 0.95) / 3)
    assert metrics.last_accuracy([[0.4]]) == pytest.approx(0.4)
    assert metrics.agnostic_final_accuracy(TRI) == metrics.last_accuracy(TRI)
    with pytest.raises(ValueError, match="rows row 1 must hold 2 accuracies"):
        metrics.last_accuracy([[0.9], [0.5]])
    with pytest.raises(ValueError, match="agnostic row 0 must hold 1"):
        metrics.agnostic_final_accuracy(ACC)


def test_average_incremental_accuracy_by_hand():
    # row means 0.90, 0.875, 0.7167, averaged over t (not the mean of every entry: 0.80)
    want = (0.90 + (0.95 + 0.80) / 2 + (0.70 + 0.50 + 0.95) / 3) / 3
    assert metrics.average_incremental_accuracy(TRI) == pytest.approx(want)
    assert want != pytest.approx(sum(map(sum, TRI)) / 6)
    assert metrics.average_incremental_accuracy([[0.3]]) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="row 2 must hold 3"):
        metrics.average_incremental_accuracy([[0.9], [0.5, 0.5], [0.5]])


@settings(max_examples=60, deadline=None)
@given(_triangles())
def test_average_incremental_accuracy_properties(mats):
    (rows,) = mats
    n = len(rows)
    aia = metrics.average_incremental_accuracy(rows)
    means = [sum(r) / len(r) for r in rows]
    assert min(means) - 1e-12 <= aia <= max(means) + 1e-12
    # T·AIA = (T-1)·AIA of the first T-1 rows + the last accuracy
    if n > 1:
        assert n * aia == pytest.approx(
            (n - 1) * metrics.average_incremental_accuracy(rows[:-1])
            + metrics.last_accuracy(rows), abs=1e-9)
    else:
        assert aia == pytest.approx(metrics.last_accuracy(rows))


def test_class_il_forgetting_by_hand():
    # task 0: best before the last task 0.95 (not its diagonal 0.90) - 0.70; task 1: 0.80 - 0.50
    assert metrics.class_il_forgetting(TRI) == pytest.approx((0.25 + 0.30) / 2)
    # the max runs over t < T-1 only: 0.6 - 0.8 = -0.2 (the task improved)
    assert metrics.class_il_forgetting([[0.6], [0.8, 0.9]]) == pytest.approx(-0.2)
    assert metrics.class_il_forgetting([[0.6]]) == 0.0  # one task: nothing to forget
    with pytest.raises(ValueError, match="T >= 1 rows"):
        metrics.class_il_forgetting([])


@settings(max_examples=60, deadline=None)
@given(_triangles(), st.floats(0.0, 1.0))
def test_class_il_forgetting_is_forgetting_of_the_lower_triangle(mats, fill):
    (rows,) = mats
    n = len(rows)
    square = [row + [fill] * (n - len(row)) for row in rows]  # the upper entries are not read
    got = metrics.class_il_forgetting(rows)
    if n == 1:
        assert got == 0.0
    else:
        assert got == pytest.approx(metrics.forgetting(square))
        # a sequence where no task ever drops below its accuracy before the last task
        kept = [row[:] for row in rows]
        for u in range(n - 1):
            kept[-1][u] = max(rows[t][u] for t in range(u, n))
        assert metrics.class_il_forgetting(kept) <= 1e-12


# Class-IL with chance falling as classes are added: 1/2 after task 1, 1/4 after task 2
TRI_A = [[0.90], [0.60, 0.80]]
TRI_J = [[0.95], [0.90, 0.85]]
TRI_R = [[0.50], [0.25, 0.25]]


def test_triangular_forgetting_ratio_by_hand():
    rho = metrics.triangular_forgetting_ratio(TRI_A, TRI_J, TRI_R)
    assert rho[0, 0] == pytest.approx(0.40 / 0.45 - 1)
    # the chance level of task 0 after task 1 is 0.25, not its 0.50 after task 0
    assert rho[1, 0] == pytest.approx(0.35 / 0.65 - 1)
    assert rho[1, 1] == pytest.approx(0.55 / 0.60 - 1)
    assert math.isnan(rho[0, 1])
    curve = metrics.triangular_mean_forgetting_ratio(TRI_A, TRI_J, TRI_R)
    assert curve == pytest.approx([0.40 / 0.45 - 1, (0.35 / 0.65 + 0.55 / 0.60 - 2) / 2])


def test_triangular_forgetting_ratio_degenerate_and_shapes():
    joint = [[0.95], [0.25, 0.85]]  # joint at chance on task 0 after task 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rho = metrics.triangular_forgetting_ratio(TRI_A, joint, TRI_R)
        curve = metrics.triangular_mean_forgetting_ratio(TRI_A, joint, TRI_R)
    assert math.isnan(rho[1, 0]) and rho[1, 1] == pytest.approx(0.55 / 0.60 - 1)
    assert curve[1] == pytest.approx(0.55 / 0.60 - 1)  # the undefined entry is left out
    with pytest.raises(ValueError, match="joint_rows row 0"):
        metrics.triangular_forgetting_ratio(TRI_A, JOINT, TRI_R)  # square, not triangular
    with pytest.raises(ValueError, match="differs from acc shape"):
        metrics.triangular_forgetting_ratio(TRI_A, TRI, [[0.5], [0.2, 0.2], [0.1, 0.1, 0.1]])
    with pytest.raises(ValueError, match="random_rows"):
        metrics.triangular_forgetting_ratio(TRI_A, TRI_J, [0.5, 0.25])


def test_forgetting_ratio_takes_a_random_matrix():
    # a T×T random matrix with equal rows is the length-T vector; only its lower triangle counts
    r = [[0.50, 0.25], [0.50, 0.25]]
    assert np.array_equal(metrics.forgetting_ratio(ACC, JOINT, r),
                          metrics.forgetting_ratio(ACC, JOINT, RANDOM), equal_nan=True)
    r_upper = [[0.50, 0.99], [0.50, 0.25]]
    assert np.array_equal(metrics.forgetting_ratio(ACC, JOINT, r_upper),
                          metrics.forgetting_ratio(ACC, JOINT, RANDOM), equal_nan=True)
    with pytest.raises(ValueError, match="random_acc must have length 2 or be 2×2"):
        metrics.forgetting_ratio(ACC, JOINT, [[0.5, 0.5, 0.5]] * 3)


@settings(max_examples=60, deadline=None)
@given(_triangles(k=3))
def test_triangular_forgetting_ratio_properties(mats):
    rows, joint, rnd = mats
    n = len(rows)
    rho = metrics.triangular_forgetting_ratio(rows, joint, rnd)
    lower = np.tril(np.ones((n, n), dtype=bool))
    assert np.isnan(rho[~lower]).all()
    for t in range(n):
        for u in range(t + 1):
            d = joint[t][u] - rnd[t][u]
            if abs(d) <= metrics.DEGENERATE_ATOL:
                assert math.isnan(rho[t, u])
            else:
                assert rho[t, u] == pytest.approx((rows[t][u] - rnd[t][u]) / d - 1)
    # anchors: as good as joint -> 0, as bad as chance -> -1 (where defined)
    own = metrics.triangular_forgetting_ratio(joint, joint, rnd)
    chance = metrics.triangular_forgetting_ratio(rnd, joint, rnd)
    defined = ~np.isnan(own)
    assert np.allclose(own[defined], 0.0) and np.allclose(chance[defined], -1.0)
    # with chance constant per task (the task protocol) it is the square version's lower triangle
    col = [rnd[-1][u] for u in range(n)]
    const = [[col[u] for u in range(t + 1)] for t in range(n)]
    square = [row + [0.5] * (n - len(row)) for row in rows]
    square_j = [row + [0.5] * (n - len(row)) for row in joint]
    assert np.array_equal(metrics.triangular_forgetting_ratio(rows, joint, const),
                          metrics.forgetting_ratio(square, square_j, col), equal_nan=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=12),
       st.lists(st.integers(-3, 3), min_size=1, max_size=12))
def test_auroc_is_the_share_of_positive_negative_pairs_ordered_right(pos, neg):
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p in pos for n in neg]
    assert metrics.auroc(pos, neg) == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)


def test_auroc_by_hand_and_without_samples():
    assert metrics.auroc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert metrics.auroc([0.1], [0.9, 0.1]) == 0.25  # one pair lost, one tied
    assert math.isnan(metrics.auroc([], [1.0]))


def test_mean_auroc_leaves_out_undefined_tasks():
    assert metrics.mean_auroc([0.5, 1.0, 0.75]) == pytest.approx(0.75)
    assert metrics.mean_auroc([0.5, None, float("nan"), 1.0]) == pytest.approx(0.75)
    assert math.isnan(metrics.mean_auroc([None]))
    for bad in ([], None, [0.5, "x"], [True]):
        with pytest.raises(ValueError):
            metrics.mean_auroc(bad)
