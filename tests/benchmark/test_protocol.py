"""The class-incremental protocol: global labels, its random reference, every strategy trained
and measured in it (or refused in one line), and task-incremental records left as they were."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmark.data.protocol import class_incremental, class_offsets, class_random_accuracy
from benchmark.data.scenarios import Scenario, TaskData
from benchmark.experiment import Experiment, resolve_for
from benchmark.tuning import validation_matrix
from reports.schema import field_names, protocol_of, validate
from strategies import ConfigError
from strategies.registry import INFERENCE, STRATEGIES
from strategies.training.task_inference import SCORES
from tests.support import ROOT
from tests.support.runs import run_cached

CLASS = {"train": {"epochs": 1}, "scenario": {"protocol": "class"}}
RUNS_CLASS = sorted(s for s, spec in STRATEGIES.items() if spec.class_protocol is not None)
REFUSE_CLASS = sorted(s for s, spec in STRATEGIES.items() if spec.class_protocol is None)


def _task(n_classes: int, train: list[int], test: list[int]) -> TaskData:
    def labels(counts):
        return torch.cat([torch.full((c,), k) for k, c in enumerate(counts)]).long()

    ytr, yte = labels(train), labels(test)
    return TaskData("t", n_classes, torch.zeros(len(ytr), 1, 1, 1), ytr,
                    torch.zeros(len(yte), 1, 1, 1), yte)


_counts = st.integers(1, 4).flatmap(lambda k: st.tuples(
    st.lists(st.integers(1, 9), min_size=k, max_size=k),
    st.lists(st.integers(1, 9), min_size=k, max_size=k)))


@settings(max_examples=40, deadline=None)
@given(st.lists(_counts, min_size=1, max_size=4))
def test_global_labels_and_the_random_reference_over_every_class_seen(tasks):
    scenario = Scenario("s", 0, (1, 1, 1), [_task(len(a), a, b) for a, b in tasks], 0.1)
    offsets = class_offsets(scenario.classes_per_task)
    glob = class_incremental(scenario)
    for u, (task, g) in enumerate(zip(scenario.tasks, glob.tasks, strict=True)):
        assert torch.equal(g.train_y, task.train_y + offsets[u])
        assert torch.equal(g.test_y, task.test_y + offsets[u])
    rows = class_random_accuracy(scenario)
    # oracle: the class frequencies of every training sample of tasks 0..t, one global vector
    train = [np.array(a, float) for a, _ in tasks]
    test = [np.array(b, float) for _, b in tasks]
    for t, row in enumerate(rows):
        p_train = np.concatenate(train[: t + 1]) / sum(a.sum() for a in train[: t + 1])
        assert len(row) == t + 1
        for u in range(t + 1):
            p_test = np.zeros_like(p_train)
            p_test[offsets[u]:offsets[u] + len(test[u])] = test[u] / test[u].sum()
            assert row[u] == pytest.approx(float(p_train @ p_test), abs=1e-12)


@pytest.mark.parametrize("scenario", ["split-digits", "permuted-digits"])
@pytest.mark.parametrize("strategy", RUNS_CLASS)
def test_every_strategy_trains_and_is_measured_in_the_class_protocol(scenario, strategy):
    rec = run_cached(scenario, strategy, 0, CLASS)
    validate(rec, strict=True)
    assert protocol_of(rec) == "class" and rec["params"]["scenario"] == {"protocol": "class"}
    # the contract's fields in its order; task inference's only for the strategies that use it
    infers = STRATEGIES[strategy].class_protocol == INFERENCE
    inference_fields = {"task_prediction_accuracy", "task_inference"}
    assert tuple(rec) == tuple(f for f in field_names("class")
                               if infers or f not in inference_fields)
    n = len(rec["task_names"])
    if infers:
        ti = rec["task_inference"]
        assert ti["score"] == rec["params"][strategy]["task_score"] == "max_softmax"
        assert set(ti["scores"]) == set(SCORES)
        assert ti["scores"][ti["score"]]["agnostic_accuracy"] == rec["agnostic_accuracy"]
        assert rec["task_prediction_accuracy"] == (
            ti["scores"][ti["score"]]["task_prediction_accuracy"])
        for block in ti["scores"].values():
            # right in Class-IL needs the task right
            for t in range(n):
                for u in range(t + 1):
                    assert (block["agnostic_accuracy"][t][u]
                            <= block["task_prediction_accuracy"][t][u] + 1e-12)
    assert [len(r) for r in rec["agnostic_accuracy"]] == list(range(1, n + 1))
    assert [len(r) for r in rec["agnostic_random_accuracy"]] == list(range(1, n + 1))
    valid = rec["valid_agnostic_accuracy"]
    assert (valid is None) == (rec["valid_accuracy"] is None)
    # a sample right over every class seen is right among its own task's classes: Class-IL
    # accuracy never exceeds the Task-IL accuracy read from the same model
    for t in range(n):
        for u in range(t + 1):
            assert rec["agnostic_accuracy"][t][u] <= rec["accuracy"][t][u] + 1e-12
            if valid is not None:
                assert valid[t][u] <= rec["valid_accuracy"][t][u] + 1e-12


@pytest.mark.parametrize("strategy", REFUSE_CLASS)
def test_strategies_without_a_class_prediction_refuse_in_one_line(strategy):
    with pytest.raises(ConfigError) as err:
        resolve_for(Experiment("split-digits", strategy, 0, CLASS))
    msg = str(err.value)
    assert "\n" not in msg and strategy in msg and "scenario.protocol=task" in msg


def test_a_task_record_keeps_its_fields_and_says_nothing_of_the_protocol():
    rec = run_cached("split-digits", "naive", 0, {"train": {"epochs": 1}})
    assert protocol_of(rec) == "task" and "scenario" not in rec["params"]
    assert tuple(rec) == field_names("task")
    assert "agnostic_random_accuracy" not in rec and "valid_agnostic_accuracy" not in rec
    assert validation_matrix(rec) is rec["valid_accuracy"]


def test_naive_forgets_every_earlier_class_in_the_class_protocol_but_not_its_task_heads():
    """The protocol makes a difference the field reports: fine-tuning over one expanding head
    predicts the newest classes for every input, while the same run read with the task label
    keeps earlier tasks far above chance."""
    rec = run_cached("split-digits", "naive", 0,
                     {"train": {"epochs": 10}, "scenario": {"protocol": "class"}})
    last = rec["agnostic_accuracy"][-1]
    assert max(last[:-1]) < 0.2 and last[-1] > 0.8
    assert min(rec["accuracy"][-1]) > 0.6
    assert validation_matrix(rec) is rec["valid_agnostic_accuracy"]


def test_the_run_line_of_a_class_record_gives_its_class_il_numbers_first():
    from benchmark.run.executors import summarize

    rec = run_cached("split-digits", "naive", 0, CLASS)
    line = summarize(rec)
    last = sum(rec["agnostic_accuracy"][-1]) / len(rec["task_names"])
    task = sum(rec["accuracy"][-1]) / len(rec["task_names"])
    assert f"final Class-IL acc {last:.3f}" in line and f"Task-IL acc {task:.3f}" in line
    assert "final acc" in summarize(run_cached("split-digits", "naive", 0,
                                               {"train": {"epochs": 1}}))


def test_both_protocols_share_a_results_folder_and_the_report_keeps_them_apart(
        in_tmp, capsys):
    from benchmark import cli
    from benchmark.records import read_record, record_path
    from reports.cli import main as report_main

    common = ["--seeds", "0", "--epochs", "1", "--out", "res", "--no-progress",
              "--wandb", "disabled"]
    assert cli.main(["run", "--scenario", "split-digits", "--strategies", "naive,joint",
                     *common]) == 0
    assert cli.main(["run", "--config", str(ROOT / "configs/embedded/class.yaml"),
                     "--strategies", "naive,replay,joint", *common]) == 0
    task = read_record(record_path(in_tmp / "res", "split-digits", "naive", 0))
    cls = read_record(record_path(in_tmp / "res", "split-digits", "naive", 0,
                                  protocol="class"))
    assert protocol_of(task) == "task" and protocol_of(cls) == "class"
    assert cli.main(["run", "--scenario", "split-digits", "--strategies", "single", "--set",
                     "scenario.protocol=class", *common]) == 2
    err = capsys.readouterr().err
    assert "single has no class-incremental prediction" in err
    assert report_main(["--results", "res"]) == 0
    folder = in_tmp / "res/report/split-digits"
    table = (folder / "class_il.md").read_text()
    assert "class-incremental protocol" in table and "replay" in table
    assert "replay" not in (folder / "summary.md").read_text()  # task records only there
    assert (folder / "class_il_vs_t.png").exists()
    index = (in_tmp / "res/report/index.md").read_text()
    assert "class_il.md" in index


def test_one_task_alone_is_refused_in_the_class_protocol():
    exp = Experiment("split-digits", "naive", 0,
                     {"scenario": {"protocol": "class", "task": "digits:0-1"}})
    with pytest.raises(ConfigError, match="drop scenario.task"):
        resolve_for(exp)


def test_a_strategy_registered_without_a_class_reading_is_refused(monkeypatch):
    import dataclasses

    from strategies import registry

    toy = dataclasses.replace(registry.STRATEGIES["naive"], name="toy", class_protocol=None)
    monkeypatch.setitem(registry.STRATEGIES, "toy", toy)
    with pytest.raises(ConfigError, match="declares no class_protocol"):
        resolve_for(Experiment("split-digits", "toy", 0, CLASS))


def test_protocol_is_not_a_grid_key_and_tune_drops_the_strategies_that_refuse(in_tmp, capsys,
                                                                             monkeypatch):
    from benchmark import cli

    common = ["--seeds", "0", "--epochs", "1", "--out", "res", "--no-progress",
              "--wandb", "disabled"]
    assert cli.main(["run", "--scenario", "split-digits", "--strategies", "naive",
                     "--grid", "scenario.protocol=task,class", *common]) == 2
    assert "scenario.protocol cannot be a --grid key" in capsys.readouterr().err
    assert not (in_tmp / "res").exists()
    # the default tune list, in the class protocol: the strategies that run in it
    import dataclasses

    from benchmark.cli.args import TUNE_STRATEGIES, build_parser
    from benchmark.cli.tune import plan_tune

    monkeypatch.setitem(STRATEGIES, "hat",
                        dataclasses.replace(STRATEGIES["hat"], class_protocol=None))
    args = build_parser().parse_args(["tune", "--scenario", "split-digits", "--set",
                                      "scenario.protocol=class", "--out", "t"])
    plan = plan_tune(args)
    ran = {e.strategy for e in plan.experiments}
    assert "hat" in TUNE_STRATEGIES and "hat" not in ran and "ewc" in ran


def test_calibration_uses_a_recorded_memory_and_changes_no_training():
    base = {"train": {"epochs": 2}, "scenario": {"protocol": "class"}}
    raw = run_cached("split-digits", "hat", 0, base)
    cal = run_cached("split-digits", "hat", 0, {**base, "hat": {"calibration_samples": 50}})
    validate(cal, strict=True)
    assert raw["memory_samples"] is None and cal["memory_samples"] == [50] * 5
    assert cal["params"]["hat"]["calibration_samples"] == 50
    assert cal["accuracy"] == raw["accuracy"]  # the same training and Task-IL reading
    assert cal["task_inference"]["scores"] != raw["task_inference"]["scores"]
