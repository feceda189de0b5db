"""The per-run W&B summary (benchmark/tracking/summary.py): computed from the run's own record
alone; the values that need other runs' records are the report's."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmark import tracking
from benchmark.records import record_path
from reports import load_records, metrics
from reports.tables import compute_report

SCENARIO = "split-digits"


def _write(out: Path, rec: dict) -> None:
    from benchmark.records import write_record

    write_record(record_path(out, rec["scenario"], rec["strategy"], rec["seed"],
                             rec["tag"]), rec)


def test_summary_is_pure_and_references_are_the_reports(tmp_path):
    """The W&B summary of a run is computed from its record alone, whatever records exist;
    FWT and intransigence come from the report, against the references of the same scenario
    and seed, untagged."""
    from reports.synthetic import make_costs, make_record

    def rec(strategy, seed=0, tag="", scenario=SCENARIO):
        return make_record(scenario, strategy, seed, 3, tag=tag,
                           extra=make_costs(strategy, 3, seed, scenario))

    run = rec("replay")
    before = tracking.run_summary(run)  # the references have not finished yet
    assert not {"forward_transfer", "intransigence", "forgetting_ratio"} & set(before)
    _write(tmp_path, run)
    for other in (rec("single", seed=1), rec("joint", seed=1), rec("single", tag="x.a=1"),
                  rec("joint", scenario="permuted-digits")):
        _write(tmp_path, other)
    assert tracking.run_summary(run) == before
    single, joint = rec("single"), rec("joint")
    _write(tmp_path, single)
    _write(tmp_path, joint)
    assert tracking.run_summary(run) == before
    after = compute_report(load_records(tmp_path))[SCENARIO].summary["replay"]
    a, s, j = run["accuracy"], single["accuracy"], joint["accuracy"]
    assert after["fwt"].mean == pytest.approx(((a[1][1] - s[1][1]) + (a[2][2] - s[2][2])) / 2)
    assert after["intransigence"].mean == pytest.approx(
        sum(j[k][k] - a[k][k] for k in range(3)) / 3)
    other_seed = rec("single", seed=1)["accuracy"]
    assert after["fwt"].mean != pytest.approx(metrics.forward_transfer(a, other_seed))
    # the cost and task-agnostic values, from the record alone
    assert before["memory_samples"] == max(run["memory_samples"])
    assert before["state_mb"] == pytest.approx(max(run["state_mb"]))
    assert before["peak_memory_mb"] == pytest.approx(max(run["peak_memory_mb"]))
    assert before["seconds_per_task"] == pytest.approx(sum(run["seconds"]) / 3)
    last = run["agnostic_accuracy"][-1]
    assert before["agnostic_final_accuracy"] == pytest.approx(sum(last) / len(last))


def test_summary_of_an_older_record_has_no_new_values(tmp_path):
    """A record of an older schema (no agnostic_accuracy, peak_memory_mb, state_mb,
    memory_samples) and one whose lists have a null entry (a diverged number)."""
    from reports.synthetic import make_record

    old = make_record(SCENARIO, "naive", 0, 3)
    summary = tracking.run_summary(old)
    assert summary["seconds_per_task"] == pytest.approx(0.1)
    assert not {"agnostic_final_accuracy", "peak_memory_mb", "state_mb", "memory_samples"} & (
        set(summary))
    partial = dict(old, peak_memory_mb=[None, 30.0, 20.0], memory_samples=None,
                   agnostic_accuracy=None)
    summary = tracking.run_summary(partial)
    assert summary["peak_memory_mb"] == 30.0 and "memory_samples" not in summary


def test_class_record_summary_has_the_class_il_tables_keys():
    """A class-incremental record's summary carries the per-run columns of the report's
    Class-IL table (same numbers) under class_il/* and task_il/last, and none of the task
    protocol's accuracy keys; a task record has no class key."""
    from reports.synthetic import make_class_record, make_record

    rows = [[0.9], [0.95, 0.8], [0.7, 0.5, 0.95]]
    valid = [[0.8], [0.7, 0.6], [0.5, 0.4, 0.3]]
    run = make_class_record(SCENARIO, "replay", 0, 3, agnostic_accuracy=rows,
                            valid_agnostic_accuracy=valid,
                            valid_accuracy=[[0.5] * 3] * 3)
    joint = make_class_record(SCENARIO, "joint", 0, 3)
    summary = tracking.run_summary(run)
    assert summary["class_il/last"] == pytest.approx((0.7 + 0.5 + 0.95) / 3)
    assert summary["class_il/average_incremental"] == pytest.approx(
        (0.9 + 0.875 + (0.7 + 0.5 + 0.95) / 3) / 3)
    assert summary["class_il/forgetting"] == pytest.approx((0.25 + 0.30) / 2)
    assert summary["task_il/last"] == pytest.approx(sum(run["accuracy"][-1]) / 3)
    assert summary["valid_criterion"] == pytest.approx(0.4)  # the class protocol's criterion
    assert not {"final_average_accuracy", "bwt", "forgetting", "agnostic_final_accuracy"} & (
        set(summary))
    table = compute_report([run, joint])[SCENARIO].class_il.stats["replay"]
    for metric, key in tracking.summary.CLASS_IL_KEYS.items():
        if metric == "task_prediction":  # task inference only
            assert key not in summary
            continue
        assert summary[key] == pytest.approx(table[metric].mean), key
    cols, data = tracking.summary.run_tables(run)["class_il_matrix"]
    assert cols == ["after_task", *run["task_names"]]
    assert data[0] == ["task0", 0.9, None, None] and data[2][1:] == rows[2]

    task = make_record(SCENARIO, "replay", 0, 3, valid_accuracy=[[0.5] * 3] * 3)
    plain = tracking.run_summary(task)
    assert not [k for k in plain if k.startswith(("class_il/", "task_il/"))]
    assert {"final_average_accuracy", "bwt", "forgetting"} <= set(plain)
    assert plain["valid_criterion"] == pytest.approx(0.5)
    assert "class_il_matrix" not in tracking.summary.run_tables(task)


def test_task_inference_record_summary_has_its_task_prediction():
    """A class record of a strategy predicting by task inference carries
    ``class_il/task_prediction``: the report's task-prediction column for the same record."""
    from reports.synthetic import make_class_record

    hat = make_class_record(SCENARIO, "hat", 0, 3, valid_accuracy=[[0.5] * 3] * 3)
    summary = tracking.run_summary(hat)
    last = hat["task_prediction_accuracy"][-1]
    assert summary["class_il/task_prediction"] == pytest.approx(sum(last) / len(last))
    table = compute_report([hat])[SCENARIO].class_il.stats["hat"]
    for metric, key in tracking.summary.CLASS_IL_KEYS.items():
        assert summary[key] == pytest.approx(table[metric].mean), key
