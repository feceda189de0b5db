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
    TASK_INFERENCE_OWN,
    class_il_metrics,
    own_metrics,
    per_task,
    run_metrics,
    task_inference_metrics,
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


def test_task_prediction_of_a_task_inference_record():
    """The mean of the last row of ``task_prediction_accuracy``; – for a record without it
    (any strategy but task inference), a malformed one noted."""
    rec = make_class_record("syn", "hat", 0, 3)
    rows = [[1.0], [0.9, 0.8], [0.6, 0.7, 0.95]]
    out = class_il_metrics(dict(rec, task_prediction_accuracy=rows))
    assert out["task_prediction"] == (pytest.approx((0.6 + 0.7 + 0.95) / 3), "")
    assert out["last"][0] == pytest.approx(sum(rec["agnostic_accuracy"][-1]) / 3)
    replay = class_il_metrics(make_class_record("syn", "replay", 0, 3))
    assert math.isnan(replay["task_prediction"][0]) and replay["task_prediction"][1] == NO_DATA
    notes: list[str] = []
    bad = class_il_metrics(dict(rec, task_prediction_accuracy=[[1.0], [0.5]],
                                _source="b.json"), notes)
    assert bad["task_prediction"][1] == NO_DATA and not math.isnan(bad["last"][0])
    assert notes == ["b.json: malformed task_prediction_accuracy (3 rows expected); left out"]


def test_task_inference_metrics_read_every_score():
    rec = make_class_record("syn", "packnet", 0, 3, task_score="energy")
    chosen, by_score = task_inference_metrics(rec)
    assert chosen == "energy" and list(by_score) == list(rec["task_inference"]["scores"])
    for score, block in rec["task_inference"]["scores"].items():
        got = by_score[score]
        assert tuple(got) == TASK_INFERENCE_OWN
        assert got["last"] == pytest.approx(sum(block["agnostic_accuracy"][-1]) / 3)
        assert got["task_prediction"] == pytest.approx(
            sum(block["task_prediction_accuracy"][-1]) / 3)
        assert got["valid_criterion"] == pytest.approx(
            sum(block["valid_agnostic_accuracy"][-1]) / 3)
        assert got["auroc"] == pytest.approx(sum(block["auroc"]) / 3)
    # the headline fields are the chosen score's
    energy = rec["task_inference"]["scores"]["energy"]
    assert rec["task_prediction_accuracy"] == energy["task_prediction_accuracy"]
    assert rec["agnostic_accuracy"] == energy["agnostic_accuracy"]
    # null values, a null AUROC entry and a malformed matrix
    ti = rec["task_inference"]
    odd = {"score": "max_logit", "scores": {
        "max_logit": dict(ti["scores"]["max_logit"], valid_agnostic_accuracy=None,
                          auroc=[0.5, None, 1.0]),
        "energy": dict(ti["scores"]["energy"], agnostic_accuracy=[[0.5]])}}
    notes: list[str] = []
    chosen, by_score = task_inference_metrics(dict(rec, task_inference=odd, _source="o.json"),
                                              notes)
    assert chosen == "max_logit"
    assert math.isnan(by_score["max_logit"]["valid_criterion"])
    assert by_score["max_logit"]["auroc"] == pytest.approx(0.75)
    assert math.isnan(by_score["energy"]["last"])
    assert not math.isnan(by_score["energy"]["task_prediction"])
    assert len(notes) == 1 and notes[0].startswith(
        "o.json: malformed task_inference score 'energy' agnostic_accuracy")
    assert task_inference_metrics(make_class_record("syn", "replay", 0, 3)) == (None, {})
