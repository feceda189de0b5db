"""Per-run reductions (reports/per_run.py): what one record gives on its own."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reports import metrics
from reports.per_run import (
    CLASS_IL_OWN,
    NO_DATA,
    NOT_APPLICABLE,
    OWN_METRICS,
    class_il_metrics,
    own_metrics,
    per_task,
    run_metrics,
)
from reports.synthetic import make_class_record, make_costs, make_record


def _rec(strategy: str = "replay", **extra) -> dict:
    return make_record("syn", strategy, 0, 3, extra={**make_costs(strategy, 3, 0), **extra})


def test_own_metrics_reduce_the_record():
    rec = _rec()
    acc = np.asarray(rec["accuracy"], dtype=float)
    out = own_metrics(rec)
    assert tuple(out) == OWN_METRICS
    assert out["final_acc"] == (metrics.final_average_accuracy(acc), "")
    assert out["bwt"] == (metrics.bwt(acc), "")
    assert out["forgetting"] == (metrics.forgetting(acc), "")
    assert out["agnostic_acc"] == (metrics.agnostic_final_accuracy(rec["agnostic_accuracy"]), "")
    assert out["seconds_per_task"] == (pytest.approx(sum(rec["seconds"]) / 3), "")
    assert out["peak_memory_mb"] == (max(rec["peak_memory_mb"]), "")
    assert out["state_mb"] == (max(rec["state_mb"]), "")
    assert out["memory_samples"] == (max(rec["memory_samples"]), "")


def test_null_fields_are_not_applicable_absent_fields_have_no_data():
    rec = _rec("hat")  # no task-agnostic prediction, no rehearsal memory
    out = own_metrics(rec)
    assert math.isnan(out["agnostic_acc"][0]) and out["agnostic_acc"][1] == NOT_APPLICABLE
    assert out["memory_samples"][1] == NOT_APPLICABLE
    old = make_record("syn", "hat", 0, 3)  # written before the cost fields existed
    out = own_metrics(old)
    for key in ("agnostic_acc", "peak_memory_mb", "state_mb", "memory_samples"):
        assert math.isnan(out[key][0]) and out[key][1] == NO_DATA


def test_lost_entries_are_skipped_by_maxima_but_void_the_mean_time():
    rec = _rec(peak_memory_mb=[None, 5.0, 3.0], seconds=[1.0, None, 2.0])
    out = own_metrics(rec)
    assert out["peak_memory_mb"] == (5.0, "")
    assert math.isnan(out["seconds_per_task"][0]) and out["seconds_per_task"][1] == NO_DATA
    assert per_task(rec, "seconds", 3)[0] == 1.0 and per_task(rec, "seconds", 2) is None


def test_a_malformed_agnostic_accuracy_is_noted_and_left_out():
    notes: list[str] = []
    out = own_metrics(dict(_rec(), _source="f.json", agnostic_accuracy=[[0.5]]), notes=notes)
    assert out["agnostic_acc"][1] == NO_DATA
    assert notes == ["f.json: malformed agnostic_accuracy (3 rows expected); left out"]


def test_transfer_needs_the_reference_matrices():
    rec = _rec()
    acc = np.asarray(rec["accuracy"], dtype=float)
    ref = np.asarray(make_record("syn", "joint", 0, 3)["accuracy"], dtype=float)
    out = run_metrics(rec, acc, ref, ref)
    assert out["fwt"] == (metrics.forward_transfer(acc, ref), "")
    assert out["intransigence"] == (metrics.intransigence(acc, ref), "")
    out = run_metrics(rec, acc, None, None)
    assert out["fwt"][1] == NO_DATA and out["intransigence"][1] == NO_DATA


def test_class_il_metrics_reduce_a_class_record():
    rows = [[0.9], [0.95, 0.8], [0.7, 0.5, 0.95]]
    rec = make_class_record("syn", "replay", 0, 3, agnostic_accuracy=rows)
    out = class_il_metrics(rec)
    assert tuple(out) == CLASS_IL_OWN
    assert out["last"] == (pytest.approx((0.7 + 0.5 + 0.95) / 3), "")
    assert out["average_incremental"][0] == pytest.approx(
        (0.9 + 0.875 + (0.7 + 0.5 + 0.95) / 3) / 3)
    assert out["forgetting"][0] == pytest.approx(0.275)
    assert out["task_il_last"][0] == pytest.approx(sum(rec["accuracy"][-1]) / 3)
    # without its Class-IL matrix (read leniently): no data, the Task-IL value still there
    notes: list[str] = []
    for rows in (None, [[0.5]], [[0.5], [0.5]] + [[0.5] * 3]):
        out = class_il_metrics(dict(rec, agnostic_accuracy=rows, _source="x.json"), notes)
        assert all(math.isnan(out[k][0]) and out[k][1] == NO_DATA for k in CLASS_IL_OWN[:3])
        assert out["task_il_last"][1] == ""
    assert len(notes) == 2 and all(n.startswith("x.json: malformed agnostic_accuracy")
                                   for n in notes)
