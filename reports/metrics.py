"""Continual-learning metrics computed from accuracy matrices (pure numpy/scipy).

This is the single home of every formula the suite reports. The report (``reports``) and the
W&B tracker both call these functions, so a number means the same thing everywhere.

Conventions shared by every function:

* ``acc`` is a T×T matrix. Row ``t`` holds the test accuracies measured right after training
  task ``t`` (for the joint reference: after training jointly on tasks ``0..t``); column ``tau``
  is the task evaluated. Indices are 0-based in code; docstrings use the paper's 1-based
  ``t = 1..T`` where they quote the paper.
* ``rows`` (class-incremental, Class-IL) is a lower-triangular matrix as T rows: row ``t``
  holds t+1 accuracies, on tasks ``0..t`` after training task ``t`` (a record's
  ``agnostic_accuracy``).
* Accuracies are fractions in ``[0, 1]``. Each entry is one task's per-sample accuracy; a
  summary over tasks is the mean of those entries (a per-task mean, as mammoth reports), not
  the per-sample accuracy over every test sample seen (PyCIL's): records store per-task
  matrices, and for tasks of equal test size the two agree.
* No function emits numpy runtime warnings: undefined values are returned as NaN by an explicit
  rule that each docstring states.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "DEGENERATE_ATOL",
    "REDUCTION_MIN_BASELINE",
    "VALIDATION_CRITERION",
    "agnostic_final_accuracy",
    "auroc",
    "average_incremental_accuracy",
    "best_baseline",
    "bwt",
    "class_il_forgetting",
    "final_average_accuracy",
    "forgetting",
    "forgetting_ratio",
    "forgetting_reduction",
    "forgetting_reduction_abs",
    "forward_transfer",
    "intransigence",
    "last_accuracy",
    "mean_auroc",
    "reduction_is_relative",
    "mean_ci",
    "mean_forgetting_ratio",
    "random_stratified_accuracy",
    "triangular_forgetting_ratio",
    "triangular_mean_forgetting_ratio",
    "validation_criterion",
]

#: |A_J - A_R| at or below this value counts as "joint training is no better than chance":
#: the forgetting ratio is undefined there (NaN), see :func:`forgetting_ratio`.
DEGENERATE_ATOL = 1e-12


def _square(acc: object, name: str) -> np.ndarray:
    a = np.asarray(acc, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty T×T matrix, got shape {a.shape}")
    return a


def forgetting_ratio(
    acc: object, joint_acc: object, random_acc: object, *, atol: float = DEGENERATE_ATOL
) -> np.ndarray:
    """Per-task forgetting ratio ρ^{τ≤t} of the paper (Serrà et al. 2018, §4.1).

    ``rho[t, tau] = (acc[t, tau] - r[t, tau]) / (joint_acc[t, tau] - r[t, tau]) - 1`` for
    ``tau <= t``, with ``r[t, tau] = random_acc[tau]`` (task-incremental: the chance level of
    a task does not change as tasks are added) or ``random_acc[t, tau]`` when ``random_acc``
    is T×T (class-incremental: chance over every class of tasks ``0..t``).

    * ``rho = 0``: as good as joint (multitask) training on tasks ``0..t``;
      ``rho = -1``: as bad as the stratified random classifier; ``rho > 0`` is possible.
    * Entries above the diagonal (``tau > t``, tasks not learned yet) are NaN.
    * Degenerate reference rule: where ``|joint_acc[t, tau] - r[t, tau]| <= atol`` (or that
      difference is NaN) the joint model is no better than chance, the ratio has no meaning,
      and the entry is NaN (computed without a division, so no runtime warning is raised).

    Args:
        acc: T×T accuracies of the evaluated strategy.
        joint_acc: T×T accuracies of joint training, same scenario and seed.
        random_acc: accuracies of the stratified random classifier: length T (per task) or
            T×T (per task and number of tasks learned; only the lower triangle is read).
        atol: tolerance of the degenerate reference rule.

    Returns:
        T×T float array, NaN above the diagonal and at degenerate entries.
    """
    a = _square(acc, "acc")
    j = _square(joint_acc, "joint_acc")
    r = np.asarray(random_acc, dtype=float)
    if j.shape != a.shape:
        raise ValueError(f"joint_acc shape {j.shape} differs from acc shape {a.shape}")
    n = a.shape[0]
    if r.shape == (n,):
        r = np.broadcast_to(r[None, :], (n, n))
    elif r.shape != (n, n):
        raise ValueError(f"random_acc must have length {n} or be {n}×{n}, got shape {r.shape}")
    denom = j - r
    defined = np.tril(np.ones((n, n), dtype=bool)) & (np.abs(denom) > atol)  # NaN: False
    rho = np.full((n, n), np.nan)
    rho[defined] = (a - r)[defined] / denom[defined] - 1.0
    return rho


def mean_forgetting_ratio(
    acc: object, joint_acc: object, random_acc: object, *, atol: float = DEGENERATE_ATOL
) -> np.ndarray:
    """Forgetting ratio per number of tasks learned: ρ^{≤t} = mean over τ ≤ t of ρ^{τ≤t}.

    Returns a length-T vector whose entry ``t`` (0-based; the paper's t+1) averages row ``t``
    of :func:`forgetting_ratio` (same arguments) over ``tau = 0..t``. Entries that the
    degenerate reference rule made NaN are left out of the mean (the mean runs over the
    defined entries only); if no entry of the row is defined the result is NaN.
    """
    rho = forgetting_ratio(acc, joint_acc, random_acc, atol=atol)
    out = np.full(rho.shape[0], np.nan)
    for t in range(rho.shape[0]):
        row = rho[t, : t + 1]
        row = row[~np.isnan(row)]
        if row.size:
            out[t] = float(row.mean())
    return out


def _triangular(rows: object, name: str) -> np.ndarray:
    """T rows, row t of t+1 numbers (tasks 0..t after training task t), as a T×T array with
    NaN above the diagonal; ValueError naming ``name`` for any other shape."""
    if isinstance(rows, np.ndarray):
        rows = rows.tolist()
    if not isinstance(rows, Sequence) or isinstance(rows, str) or not rows:
        raise ValueError(f"{name} must be T >= 1 rows, row t holding t+1 accuracies; got "
                         f"{type(rows).__name__} {rows!r:.60}")
    n = len(rows)
    out = np.full((n, n), np.nan)
    for t, row in enumerate(rows):
        try:
            r = None if isinstance(row, str) else np.asarray(row, dtype=float)
        except (TypeError, ValueError):
            r = None
        if r is None or r.shape != (t + 1,):
            got = "no list of numbers" if r is None else f"shape {r.shape}"
            raise ValueError(f"{name} row {t} must hold {t + 1} accuracies (tasks 0..{t}), "
                             f"got {got}")
        out[t, : t + 1] = r
    return out


def last_accuracy(rows: object, *, name: str = "rows") -> float:
    """Last accuracy (the Class-IL literature's "last"): the mean of the last row of a
    triangular matrix ``rows`` (row t holds the accuracies on tasks 0..t after training task
    t), i.e. the mean over every task of its accuracy after the last task.

    A per-task mean (each task's per-sample accuracy, averaged over tasks; see the module
    docstring). NaN entries propagate. Raises ValueError (naming ``name``) unless ``rows`` is
    T ≥ 1 rows, row t holding t+1 numbers.
    """
    m = _triangular(rows, name)
    return float(m[-1].mean())


def average_incremental_accuracy(rows: object) -> float:
    """Average incremental accuracy (Rebuffi et al. 2017, iCaRL): the mean over t of the mean
    of row t, ``1/T · Σ_t (1/(t+1) · Σ_{u≤t} rows[t][u])``: the accuracy over the tasks seen,
    averaged over every stage of the sequence (it rewards being good early as well as at the
    end).

    Each row's mean is a per-task mean (see the module docstring; PyCIL's per-sample
    accuracy weights tasks by their test sizes). NaN entries propagate. Raises ValueError
    unless ``rows`` is triangular (:func:`last_accuracy`).
    """
    m = _triangular(rows, "rows")
    return float(np.mean([m[t, : t + 1].mean() for t in range(m.shape[0])]))


def class_il_forgetting(rows: object) -> float:
    """Average forgetting (Chaudhry et al. 2018) of a triangular matrix: :func:`forgetting`'s
    formula, ``1/(T-1) · Σ_{u<T-1} (max_{t=u..T-2} rows[t][u] - rows[T-1][u])``, which reads
    the lower triangle only. 0.0 when T = 1 (one task: nothing learned before it to forget),
    where :func:`forgetting` gives NaN.

    NaN entries propagate. Raises ValueError unless ``rows`` is triangular
    (:func:`last_accuracy`).
    """
    m = _triangular(rows, "rows")
    return 0.0 if m.shape[0] == 1 else forgetting(m)


def triangular_forgetting_ratio(
    rows: object, joint_rows: object, random_rows: object, *, atol: float = DEGENERATE_ATOL
) -> np.ndarray:
    """The forgetting ratio ρ (:func:`forgetting_ratio`) of triangular matrices:
    ``rho[t, u] = (rows[t][u] - random_rows[t][u]) / (joint_rows[t][u] - random_rows[t][u]) - 1``
    with the same degenerate-reference rule. Class-IL: ``rows`` is a record's
    ``agnostic_accuracy``, ``joint_rows`` that of the ``joint`` record trained in the same
    protocol (seed and scenario), ``random_rows`` the record's ``agnostic_random_accuracy``
    (chance over every class of tasks 0..t, so it falls as t grows).

    Returns a T×T array, NaN above the diagonal and at degenerate entries. Raises ValueError
    unless all three are triangular with the same T.
    """
    a = _triangular(rows, "rows")
    j = _triangular(joint_rows, "joint_rows")
    r = _triangular(random_rows, "random_rows")
    return forgetting_ratio(a, j, r, atol=atol)


def triangular_mean_forgetting_ratio(
    rows: object, joint_rows: object, random_rows: object, *, atol: float = DEGENERATE_ATOL
) -> np.ndarray:
    """ρ^{≤t} of triangular matrices (:func:`mean_forgetting_ratio` of
    :func:`triangular_forgetting_ratio`'s entries): a length-T vector, entry t the mean over
    the defined entries of row t, NaN when none is."""
    a = _triangular(rows, "rows")
    j = _triangular(joint_rows, "joint_rows")
    r = _triangular(random_rows, "random_rows")
    return mean_forgetting_ratio(a, j, r, atol=atol)


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its Student-t confidence interval.

    ``half_width = t_{(1 + confidence)/2, n-1} * s / sqrt(n)`` with ``s`` the sample standard
    deviation (``ddof=1``) and ``n`` the number of values. NaN values are dropped first (a
    seed whose metric is undefined does not count). ``n = 0`` gives ``(nan, nan)``; ``n = 1``
    gives ``(value, nan)``: a confidence interval needs at least 2 values (seeds).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    v = np.asarray(list(values), dtype=float).ravel()
    v = v[~np.isnan(v)]
    n = v.size
    if n == 0:
        return math.nan, math.nan
    mean = float(v.mean())
    if n == 1:
        return mean, math.nan
    sd = float(v.std(ddof=1))
    return mean, _t_quantile((1.0 + confidence) / 2.0, n - 1) * sd / math.sqrt(n)


@functools.lru_cache(maxsize=256)
def _t_quantile(p: float, dof: int) -> float:
    """Quantile ``p`` of Student's t distribution with ``dof`` degrees of freedom."""
    from scipy.special import stdtrit  # imported on first use: scipy is slow to import

    return float(stdtrit(dof, p))


def final_average_accuracy(acc: object) -> float:
    """Average accuracy after the last task: ``mean_tau acc[T-1, tau]`` (mean of the last row)."""
    a = _square(acc, "acc")
    return float(a[-1].mean())


#: What :func:`validation_criterion` measures, in words (hyperparameter selection, reports).
VALIDATION_CRITERION = "mean validation accuracy over all tasks after the last task"


def validation_criterion(valid_acc: object) -> float:
    """Criterion of hyperparameter selection: the mean of the last row of the T×T validation
    accuracy matrix (``valid_acc[T-1, tau]``: accuracy on task ``tau``'s validation split after
    training the last task), i.e. the mean validation accuracy over all tasks after the last
    task. Higher is better. Raises ValueError unless ``valid_acc`` is a non-empty square matrix.
    """
    a = _square(valid_acc, "valid_acc")
    return float(a[-1].mean())


def bwt(acc: object) -> float:
    """Backward transfer (Lopez-Paz & Ranzato 2017).

    ``BWT = 1/(T-1) * sum_{tau=0}^{T-2} (acc[T-1, tau] - acc[tau, tau])``: how the final
    accuracy on each earlier task differs from its accuracy right after it was learned
    (negative = forgetting). NaN when T = 1 (no earlier task).
    """
    a = _square(acc, "acc")
    n = a.shape[0]
    if n < 2:
        return math.nan
    idx = np.arange(n - 1)
    return float((a[-1, idx] - a[idx, idx]).mean())


def forgetting(acc: object) -> float:
    """Average forgetting, max-based (Chaudhry et al. 2018).

    ``F = 1/(T-1) * sum_{tau=0}^{T-2} ( max_{t = tau..T-2} acc[t, tau] - acc[T-1, tau] )``:
    for each earlier task, the drop from its best accuracy at any point from when it was
    learned until before the last task, to its final accuracy (positive = forgetting; it can be
    negative when the final accuracy exceeds every earlier one). NaN when T = 1.
    """
    a = _square(acc, "acc")
    n = a.shape[0]
    if n < 2:
        return math.nan
    drops = [float(a[tau : n - 1, tau].max() - a[n - 1, tau]) for tau in range(n - 1)]
    return float(np.mean(drops))


def _same_shape(acc: np.ndarray, ref: object, name: str) -> np.ndarray:
    r = _square(ref, name)
    if r.shape != acc.shape:
        raise ValueError(f"{name} shape {r.shape} differs from acc shape {acc.shape}: both "
                         "must come from runs of the same scenario (same T)")
    return r


def forward_transfer(acc: object, single_acc: object) -> float:
    """Forward transfer (Lopez-Paz & Ranzato 2017, §5.1) against single-task models.

    ``FWT = 1/(T-1) * sum_{t=2..T} (acc[t, t] - single_acc[t, t])`` (1-based t, as the paper:
    the first task has no earlier task to transfer from): how much better task t is learned
    after tasks 1..t-1 than by a model trained on task t alone from the same initialisation
    (positive = earlier tasks help, negative = they get in the way).

    The paper's FWT averages ``R_{t-1,t} - b_t``, the zero-shot accuracy on task t *before*
    training it minus a reference ``b_t``. In the suite's multi-head protocol a task's head
    does not exist before its training, so ``R_{t-1,t}`` is undefined; the accuracy right
    after training task t takes its place, and ``b_t`` is ``single_acc[t, t]``: the
    ``single`` reference record (row t: task t trained alone, same initialisation and seed).

    Only the diagonals are read. NaN when T = 1 (no task after the first); NaN entries
    propagate. Raises ValueError unless both are T×T matrices of the same T.
    """
    a = _square(acc, "acc")
    s = _same_shape(a, single_acc, "single_acc")
    n = a.shape[0]
    if n < 2:
        return math.nan
    idx = np.arange(1, n)
    return float((a[idx, idx] - s[idx, idx]).mean())


def intransigence(acc: object, joint_acc: object) -> float:
    """Intransigence (Chaudhry et al. 2018, RWalk §4, ``I_k = a*_k - a_{k,k}``), averaged over
    the tasks ``k = 1..T``.

    ``I = 1/T * sum_k (joint_acc[k, k] - acc[k, k])``: ``a*_k`` is the accuracy on task k of
    the joint reference trained on tasks 1..k (row k of the ``joint`` record), ``a_{k,k}`` the
    evaluated run's accuracy on task k right after training it. Positive = the run learns new
    tasks less well than joint training would (it resists new knowledge); 0 for the joint
    reference against itself; negative = it learns them better.

    Only the diagonals are read; NaN entries propagate. Raises ValueError unless both are T×T
    matrices of the same T.
    """
    a = _square(acc, "acc")
    j = _same_shape(a, joint_acc, "joint_acc")
    return float((np.diag(j) - np.diag(a)).mean())


def agnostic_final_accuracy(agnostic: object) -> float:
    """Task-agnostic average accuracy after the last task: :func:`last_accuracy` of a
    record's ``agnostic_accuracy`` (row t, after training task t, holds the accuracies on
    tasks 0..t of one prediction over every class seen, without the task label).

    NaN entries propagate. Raises ValueError unless ``agnostic`` is T ≥ 1 rows, row t holding
    t+1 numbers (a lower-triangular matrix as rows).
    """
    return last_accuracy(agnostic, name="agnostic")


def best_baseline(
    rho_by_strategy: Mapping[str, float], exclude: Sequence[str] = ("hat", "joint", "single")
) -> str | None:
    """The baseline with the least forgetting: the strategy, not in ``exclude`` (by default
    HAT and the references), with mean ρ
    closest to 0, i.e. the smallest |ρ| (this is the highest ρ whenever all ρ ≤ 0, the usual
    case). NaN entries are ignored; ties go to the alphabetically first name. Returns None when
    no baseline has a defined ρ.
    """
    cands = [
        (abs(v), name)
        for name, v in rho_by_strategy.items()
        if name not in exclude and v is not None and not math.isnan(v)
    ]
    return min(cands)[1] if cands else None


def forgetting_reduction(rho_hat: float, rho_baseline: float) -> float:
    """Reduction of forgetting of HAT against a baseline, in percent.

    ``100 * (1 - |rho_hat| / |rho_baseline|)``: 100 % = no forgetting left; 0 % = as much as
    the baseline; negative = more. NaN when either value is NaN or ``rho_baseline == 0``.
    """
    if math.isnan(rho_hat) or math.isnan(rho_baseline) or rho_baseline == 0.0:
        return math.nan
    return 100.0 * (1.0 - abs(rho_hat) / abs(rho_baseline))


#: Below this |ρ| of the best baseline (it forgets less than 1 % of what joint training gains
#: over chance) a reduction *relative* to it is not meaningful: it explodes as the baseline's ρ
#: approaches 0 (e.g. −13072 % for ρ_baseline ≈ −0.0001, ρ_hat ≈ −0.013); the report gives the
#: difference :func:`forgetting_reduction_abs` instead.
REDUCTION_MIN_BASELINE = 0.01


def reduction_is_relative(rho_baseline: float) -> bool:
    """Whether HAT's reduction of forgetting against a baseline of mean ``rho_baseline`` is
    given in percent (:func:`forgetting_reduction`): ``|rho_baseline| >=``
    :data:`REDUCTION_MIN_BASELINE`. False for NaN."""
    return not math.isnan(rho_baseline) and abs(rho_baseline) >= REDUCTION_MIN_BASELINE


def forgetting_reduction_abs(rho_hat: float, rho_baseline: float) -> float:
    """Reduction of forgetting in units of ρ: ``|rho_baseline| - |rho_hat|`` (positive: HAT
    forgets less, negative: more). NaN when either value is NaN."""
    if math.isnan(rho_hat) or math.isnan(rho_baseline):
        return math.nan
    return abs(rho_baseline) - abs(rho_hat)


def random_stratified_accuracy(train_counts: object, test_counts: object) -> float:
    """Expected accuracy A_R of a classifier that guesses labels with the training class
    frequencies: ``sum_c p_train(c) * p_test(c)``, from per-class sample counts (same class
    order in both). NaN when either count vector sums to 0.
    """
    tr = np.asarray(train_counts, dtype=float)
    te = np.asarray(test_counts, dtype=float)
    if tr.shape != te.shape or tr.ndim != 1:
        raise ValueError(f"class count vectors must have equal 1-D shapes: {tr.shape}, {te.shape}")
    if tr.sum() <= 0 or te.sum() <= 0:
        return math.nan
    return float((tr / tr.sum()) @ (te / te.sum()))


def auroc(positive: object, negative: object) -> float:
    """Area under the ROC curve of a score separating ``positive`` from ``negative`` samples:
    the probability that a random positive scores above a random negative, ties counting
    one half (the Mann-Whitney U statistic over ``len(positive) * len(negative)``). Task
    inference's per-task AUROC: a task's own test samples against the other tasks', scored
    by that task's score. NaN when either side is empty."""
    pos = np.asarray(positive, dtype=float).ravel()
    neg = np.asarray(negative, dtype=float).ravel()
    if pos.size == 0 or neg.size == 0:
        return math.nan
    both = np.concatenate([pos, neg])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(both.size, dtype=float)
    sorted_vals = both[order]
    # average ranks over ties (1-based)
    start = 0
    while start < both.size:
        end = start
        while end + 1 < both.size and sorted_vals[end + 1] == sorted_vals[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def mean_auroc(auroc_per_task: object) -> float:
    """Mean AUROC over tasks of task inference after the last task: the mean of a record's
    per-task ``auroc`` list (task u's test samples against the other tasks', by u's score;
    :func:`auroc`). An entry that is undefined (null or NaN: a task without samples on
    either side, e.g. T = 1) is left out of the mean; NaN when no entry is defined. Raises
    ValueError unless ``auroc_per_task`` is a non-empty list of numbers or nulls."""
    if not isinstance(auroc_per_task, list | tuple) or not auroc_per_task:
        raise ValueError("auroc must be a non-empty list of per-task numbers")
    values = []
    for v in auroc_per_task:
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"auroc entries must be numbers or null, got {v!r}")
        if not math.isnan(v):
            values.append(float(v))
    return float(np.mean(values)) if values else math.nan
