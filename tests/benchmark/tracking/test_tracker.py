"""W&B tracking (benchmark/tracking/tracker.py): offline runs read back from their transaction
logs, failures that degrade tracking without failing training, runs complete on disk.

No test talks to a W&B server: HOME and every wandb folder point into tmp, no API key is set,
and WANDB_BASE_URL points at a closed local port.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

wandb = pytest.importorskip("wandb")

from benchmark import tracking  # noqa: E402
from benchmark.cli import main  # noqa: E402
from benchmark.records import read_record, record_path  # noqa: E402
from benchmark.tracking import wandb_log  # noqa: E402
from reports import load_records, metrics  # noqa: E402
from reports.schema import record_problem  # noqa: E402
from reports.tables import compute_report  # noqa: E402
from tests.support.wandb_offline import (  # noqa: E402
    isolate,
    offline_runs,
    read_transaction_log,
)

SCENARIO = "split-digits"


def _run_cli(out: Path, strategies: str, mode: str | None = "offline") -> tuple[int, list]:
    argv = ["run", "--scenario", SCENARIO, "--strategies", strategies, "--seeds", "0",
            "--epochs", "2", "--out", str(out), "--no-progress"]
    if mode is not None:
        argv += ["--wandb", mode]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(argv)
    return rc, [w for w in caught if issubclass(w.category, tracking.TrackingWarning)]


# ------------------------------------------------------------------ one offline benchmark
@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """joint, single, naive and hat on split-digits (seed 0, 2 epochs), tracked offline, and
    the report computed from their records (the values that need other runs: the forgetting
    ratio, intransigence and forward transfer)."""
    root = tmp_path_factory.mktemp("tracking")
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, root)
        out = root / "out"
        rc, warned = _run_cli(out, ",".join(RUN))
    assert rc == 0
    records = {s: read_record(record_path(out, SCENARIO, s, 0)) for s in RUN}
    runs = {r.run.job_type: r for r in offline_runs(out)}
    report = compute_report(load_records(out))[SCENARIO]
    return {"out": out, "records": records, "runs": runs, "warnings": warned, "report": report}


STRATS = ("joint", "naive", "hat")
#: what the bench runs, in this order: the references first (their order does not matter)
RUN = ("joint", "single", "naive", "hat")
#: W&B summary values that need other runs' records: the report's alone
CROSS_RUN = ("forgetting_ratio", "forward_transfer", "intransigence")


def test_one_offline_run_per_experiment_under_out(bench):
    assert bench["warnings"] == []
    assert sorted(bench["runs"]) == sorted(RUN)
    for s, run in bench["runs"].items():
        assert run.folder.parent == bench["out"] / "wandb"
        assert run.run.display_name == f"{s}-{SCENARIO}-s0"
        assert run.run.run_group == SCENARIO
        assert list(run.run.tags) == [SCENARIO, s, "seed0"]
        assert run.run.project == "hat-bench"
        assert run.exit_codes == [0]


@pytest.mark.parametrize("strategy", STRATS)
def test_config_is_record_params(bench, strategy):
    rec, run = bench["records"][strategy], bench["runs"][strategy]
    assert run.config == {**rec["params"], "scenario": SCENARIO, "strategy": strategy, "seed": 0}


@pytest.mark.parametrize("strategy", STRATS)
def test_per_task_accuracies_equal_record_rows(bench, strategy):
    rec, run = bench["records"][strategy], bench["runs"][strategy]
    rows = [h for h in run.history if "trained_tasks" in h]
    n = len(rec["task_names"])
    assert [h["trained_tasks"] for h in rows] == list(range(1, n + 1))
    for t, h in enumerate(rows):
        assert [h[f"acc/task_{u}"] for u in range(n)] == pytest.approx(rec["accuracy"][t])
        assert h["acc/avg"] == pytest.approx(np.mean(rec["accuracy"][t][: t + 1]))


@pytest.mark.parametrize("strategy", STRATS)
def test_epoch_history_equals_record_history(bench, strategy):
    rec, run = bench["records"][strategy], bench["runs"][strategy]
    rows = [h for h in run.history if "train/loss" in h]
    expected = [(t, e) for t, entries in enumerate(rec["history"]) for e in entries]
    assert len(rows) == len(expected) == sum(rec["epochs"])
    assert [h["global_step"] for h in rows] == list(range(1, len(rows) + 1))
    for h, (t, e) in zip(rows, expected, strict=True):
        assert (h["task"], h["epoch"]) == (t, e["epoch"])
        assert h["train/loss"] == pytest.approx(e["train_loss"])
        assert h["train/acc"] == pytest.approx(e["train_acc"])
        assert h["train/lr"] == pytest.approx(e["lr"])
        assert h.get("valid/loss") == pytest.approx(e["valid_loss"])
        if strategy == "hat":
            assert h["hat/s"] == pytest.approx(e["hat_s"])
            assert h["hat/reg"] == pytest.approx(e["hat_reg"])
        else:
            assert "hat/s" not in h


def _same(a, b) -> bool:
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return a is None
    return a == pytest.approx(b)


@pytest.mark.parametrize("strategy", STRATS)
def test_summary_values_computed_from_record(bench, strategy):
    rec, run = bench["records"][strategy], bench["runs"][strategy]
    acc = rec["accuracy"]
    assert _same(run.summary["final_average_accuracy"], metrics.final_average_accuracy(acc))
    assert _same(run.summary["bwt"], metrics.bwt(acc))
    assert _same(run.summary["forgetting"], metrics.forgetting(acc))
    assert run.summary["selected_on_validation"] is False  # no tuned preset here
    if rec["valid_accuracy"] is None:
        assert strategy == "joint" and "valid_criterion" not in run.summary
    else:
        assert _same(run.summary["valid_criterion"],
                     metrics.validation_criterion(rec["valid_accuracy"]))
    # the forgetting ratio needs the joint run's record: the report's, not the W&B summary's
    assert not any(k.startswith("forgetting_ratio") for k in run.summary)
    if strategy != "joint":
        rho = metrics.mean_forgetting_ratio(acc, bench["records"]["joint"]["accuracy"],
                                            rec["random_accuracy"])
        report_rho = bench["report"].rho[strategy]
        assert len(report_rho) == len(rho)
        for t, value in enumerate(rho):
            assert _same(report_rho[t].mean, value)


@pytest.mark.parametrize("strategy", STRATS)
def test_summary_transfer_and_cost_computed_from_records(bench, strategy):
    """FWT against the single run, intransigence against the joint run (in the report: they
    need those runs' records), task-agnostic final accuracy where the strategy has one, cost
    (in the W&B summary, from the run's own record)."""
    rec, run = bench["records"][strategy], bench["runs"][strategy]
    acc = rec["accuracy"]
    n = len(acc)
    single = bench["records"]["single"]["accuracy"]
    fwt = sum(acc[t][t] - single[t][t] for t in range(1, n)) / (n - 1)
    assert not {"forward_transfer", "intransigence"} & set(run.summary)
    report = bench["report"].summary[strategy]
    assert report["fwt"].mean == pytest.approx(fwt)
    joint = bench["records"]["joint"]["accuracy"]
    assert report["intransigence"].mean == pytest.approx(
        sum(joint[k][k] - acc[k][k] for k in range(n)) / n)
    if strategy == "hat":  # no task-agnostic prediction
        assert rec["agnostic_accuracy"] is None and "agnostic_final_accuracy" not in run.summary
    else:
        last = rec["agnostic_accuracy"][-1]
        assert run.summary["agnostic_final_accuracy"] == pytest.approx(sum(last) / len(last))
    assert run.summary["seconds_per_task"] == pytest.approx(sum(rec["seconds"]) / n)
    assert run.summary["peak_memory_mb"] == pytest.approx(max(rec["peak_memory_mb"]))
    assert "memory_samples" not in run.summary  # no rehearsal memory
    assert "forward_transfer" not in bench["runs"]["single"].summary


@pytest.mark.parametrize("strategy", RUN)
def test_summary_is_the_runs_own(bench, strategy):
    """Every summary value comes from the run's own record (the same whatever other runs
    finished before it), none needs another run's."""
    rec, run = bench["records"][strategy], bench["runs"][strategy]
    own = tracking.run_summary(rec)
    assert {k: run.summary.get(k) for k in own} == pytest.approx(own)
    assert not [k for k in run.summary if k.startswith(CROSS_RUN)]


def test_hat_mask_statistics_logged(bench):
    rec, run = bench["records"]["hat"], bench["runs"]["hat"]
    hat = rec["hat"]
    usage = run.table("hat_mask_usage")
    assert usage["columns"] == ["layer", "units", "task", "task_name", "used", "overlap",
                                "cumulative"]
    assert len(usage["data"]) == len(hat["layers"]) * len(hat["tasks"])
    for row in usage["data"]:
        li, ki = hat["layers"].index(row[0]), hat["tasks"].index(row[2])
        assert row[1] == hat["units"][li]
        assert row[4:] == pytest.approx([hat[k][li][ki] for k in ("used", "overlap",
                                                                 "cumulative")])
    comp = run.table("hat_compression")
    assert [r[2] for r in comp["data"]] == pytest.approx(hat["weights_kept"])
    assert [r[3] for r in comp["data"]] == pytest.approx(hat["units_kept"])
    assert run.summary["hat/weights_kept"] == pytest.approx(hat["weights_kept"][-1])
    for li, layer in enumerate(hat["layers"]):
        assert run.summary[f"hat/cumulative/{layer}"] == pytest.approx(hat["cumulative"][li][-1])
    assert not any(k.startswith("hat/") for k in bench["runs"]["naive"].summary)


@pytest.mark.parametrize("strategy", STRATS)
def test_accuracy_table_and_heatmap(bench, strategy):
    rec, run = bench["records"][strategy], bench["runs"][strategy]
    table = run.table("accuracy_matrix")
    assert table["columns"] == ["after_task", *rec["task_names"]]
    assert [r[0] for r in table["data"]] == rec["task_names"]
    assert [r[1:] for r in table["data"]] == [pytest.approx(row) for row in rec["accuracy"]]
    images = list((run.folder / "files" / "media" / "images").glob("accuracy_heatmap_*.png"))
    assert len(images) == 1 and images[0].read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("strategy", STRATS)
def test_record_artifact_and_summary_reconstruct_the_record(bench, strategy):
    rec, run = bench["records"][strategy], bench["runs"][strategy]
    (art,) = [a for a in run.artifacts if a.type == tracking.ARTIFACT_TYPE]
    (entry,) = art.manifest.contents
    assert entry.path == record_path(bench["out"], SCENARIO, strategy, 0).name
    assert json.loads(Path(entry.local_path).read_text()) == rec
    # the very text of the record file, not a serialisation of its own
    assert Path(entry.local_path).read_bytes() == record_path(
        bench["out"], SCENARIO, strategy, 0).read_bytes()
    from_summary = json.loads(run.summary[tracking.RECORD_KEY])
    assert from_summary == {k: v for k, v in rec.items() if k != "history"}
    assert record_problem(from_summary, strict=False) is None


# ------------------------------------------------------------------ failures
def test_init_failure_continues_without_tracking(isolated, monkeypatch):
    calls = []

    def broken_init(*args, **kwargs):
        calls.append(kwargs.get("mode"))
        raise RuntimeError("simulated W&B init failure")

    monkeypatch.setattr(wandb, "init", broken_init)
    out = isolated / "out"
    rc, warned = _run_cli(out, "naive,hat")
    assert rc == 0
    for s in ("naive", "hat"):
        read_record(record_path(out, SCENARIO, s, 0))
    assert len(warned) == 1 and "without tracking" in str(warned[0].message)
    assert calls == ["offline"]  # not retried for the second run
    assert offline_runs(out) == []


def _run_online(isolated, monkeypatch, online_init: Callable) -> tuple[Path, int, list, list]:
    """``naive,hat`` with ``--wandb online`` and an API key set ("logged in"; never checked):
    ``online_init(real_init, *args, **kwargs)`` stands in for every online ``wandb.init``.
    Returns the results folder, the exit code, the warnings and the modes asked of W&B."""
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    real_init, modes = wandb.init, []

    def init(*args, **kwargs):
        modes.append(kwargs.get("mode"))
        if kwargs.get("mode") == "online":
            return online_init(real_init, *args, **kwargs)
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    out = isolated / "out"
    rc, warned = _run_cli(out, "naive,hat", mode="online")
    return out, rc, warned, modes


def test_online_init_failure_falls_back_to_offline(isolated, monkeypatch):
    def no_network(real_init, *args, **kwargs):
        raise TimeoutError("simulated: no network")

    out, rc, warned, modes = _run_online(isolated, monkeypatch, no_network)
    assert rc == 0
    assert modes == ["online", "offline", "offline"]
    assert len(warned) == 1 and "offline" in str(warned[0].message)
    runs = {r.run.job_type: r for r in offline_runs(out)}
    assert sorted(runs) == ["hat", "naive"]
    assert all(r.exit_codes == [0] for r in runs.values())


def test_log_failure_continues_without_tracking(isolated, monkeypatch):
    def broken_log(self, *args, **kwargs):
        raise ConnectionError("simulated W&B log failure")

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", broken_log)
    out = isolated / "out"
    rc, warned = _run_cli(out, "naive,hat")
    assert rc == 0
    for s in ("naive", "hat"):
        rec = read_record(record_path(out, SCENARIO, s, 0))
        assert len(rec["accuracy"]) == len(rec["task_names"])
    assert len(warned) == 1 and "without tracking" in str(warned[0].message)
    runs = offline_runs(out)
    assert len(runs) == 1 and runs[0].exit_codes == [1]  # the broken run, finished as failed


class _FlakyRun:
    """A real (offline) run, posing as online, whose ``log`` fails from its 4th call on."""

    offline = False

    def __init__(self, run):
        self._run, self._calls = run, 0

    def log(self, *args, **kwargs):
        self._calls += 1
        if self._calls > 3:
            raise ConnectionError("simulated: connection lost")
        return self._run.log(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._run, name)


def test_online_log_failure_replays_into_offline_run(isolated, monkeypatch):
    def flaky(real_init, *args, **kwargs):  # stands in for an online run: offline, but flaky
        return _FlakyRun(real_init(*args, **{**kwargs, "mode": "offline"}))

    out, rc, warned, modes = _run_online(isolated, monkeypatch, flaky)
    assert rc == 0
    assert modes == ["online", "offline", "offline"]
    assert len(warned) == 1 and "offline" in str(warned[0].message)
    runs = offline_runs(out)
    assert sorted(r.exit_codes[0] for r in runs) == [0, 0, 1]
    good = {r.run.job_type: r for r in runs if r.exit_codes == [0]}
    for s in ("naive", "hat"):
        rec = read_record(record_path(out, SCENARIO, s, 0))
        rows = [h for h in good[s].history if "trained_tasks" in h]
        assert [[h[f"acc/task_{u}"] for u in range(len(rec["task_names"]))] for h in rows] == [
            pytest.approx(r) for r in rec["accuracy"]]
        assert len([h for h in good[s].history if "train/loss" in h]) == sum(rec["epochs"])


def test_abort_finishes_run_as_failed_and_never_raises(isolated):
    from benchmark.experiment import Experiment

    factory = tracking.tracker_factory("offline", out=isolated / "out")
    tracker = factory(Experiment(SCENARIO, "naive", 0))
    assert tracker is not None and tracker.active
    tracker.log_epoch(0, {"epoch": 1, "train_loss": 0.5, "train_acc": 0.9, "valid_loss": None,
                          "lr": 0.05})
    tracker.abort()
    tracker.abort()
    assert not tracker.active
    (run,) = offline_runs(isolated / "out")
    assert run.exit_codes == [1]
    assert [h["train/loss"] for h in run.history] == [0.5]
    assert "valid/loss" not in run.history[0]


class _Value:
    def __init__(self, name, value):
        self.name, self.value, self.x_plot = name, value, 3


def test_avalanche_logger_forwards_numbers_only(isolated):
    from avalanche.logging import BaseLogger

    from benchmark.experiment import Experiment

    factory = tracking.tracker_factory("offline", out=isolated / "out")
    tracker = factory(Experiment(SCENARIO, "naive", 0))
    (logger,) = tracker.avalanche_loggers()
    assert isinstance(logger, BaseLogger)
    logger.log_metrics([_Value("Top1_Acc_Epoch/Train", np.float32(0.25)),
                        _Value("Loss", {"a": 1.5, "b": "text"}), _Value("Image", object())])
    logger.log_single_metric("Alone", 2, 7)
    tracker.abort()
    (run,) = offline_runs(isolated / "out")
    assert run.history[0]["avalanche/Top1_Acc_Epoch/Train"] == pytest.approx(0.25)
    assert run.history[0]["avalanche/Loss/a"] == 1.5
    assert not any(k.startswith(("avalanche/Loss/b", "avalanche/Image")) for k in run.history[0])
    assert run.history[1]["avalanche/Alone"] == 2


# ------------------------------------------------------------------ complete on disk
def _wait_until_complete(path: Path, timeout: float = 30.0) -> bytes:
    """The bytes of the transaction log at ``path`` once it holds an exit record (wandb's
    service writes it after ``run.finish()`` returns); fails after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            kinds = [r.WhichOneof("record_type") for r in read_transaction_log(path)]
        except Exception:  # noqa: BLE001 - caught mid-write: a chunk cut short
            kinds = []
        if "exit" in kinds:  # the exit record is the last one written: the log is final
            return path.read_bytes()
        assert time.monotonic() < deadline, f"{path} still incomplete after {timeout} s"
        time.sleep(0.005)


@pytest.fixture
def late_log(monkeypatch):
    """wandb's service writing the transaction log late, deterministically: every
    ``Run.finish`` returns with the run's log cut back to its header, and the complete log
    appears only at the tracker's first pause after that. Yields the pauses seen."""
    real_finish = wandb.sdk.wandb_run.Run.finish
    pending: list[tuple[Path, bytes]] = []
    pauses: list[float] = []

    def finish(self, *args, **kwargs):
        path = Path(self.settings.sync_file)
        real_finish(self, *args, **kwargs)
        data = _wait_until_complete(path)
        path.write_bytes(data[:7])  # the header only: nothing written yet
        pending.append((path, data))

    def pause(seconds):
        pauses.append(seconds)
        while pending:
            path, data = pending.pop()
            path.write_bytes(data)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "finish", finish)
    monkeypatch.setattr(wandb_log, "_pause", pause)
    yield pauses
    assert [path for path, _ in pending] == []  # every late log was waited for


def test_abort_returns_once_the_log_is_on_disk(isolated, late_log):
    from benchmark.experiment import Experiment

    factory = tracking.tracker_factory("offline", out=isolated / "out")
    tracker = factory(Experiment(SCENARIO, "naive", 0))
    tracker.log_epoch(0, {"epoch": 1, "train_loss": 0.25, "train_acc": 0.5, "lr": 0.05})
    tracker.abort()
    assert len(late_log) >= 1
    (run,) = offline_runs(isolated / "out")
    assert run.exit_codes == [1]
    assert [h["train/loss"] for h in run.history] == [0.25]


def test_finished_runs_are_complete_on_disk(isolated, late_log):
    out = isolated / "out"
    rc, warned = _run_cli(out, "naive")
    assert rc == 0 and warned == []
    assert len(late_log) >= 1
    (run,) = offline_runs(out)
    assert run.exit_codes == [0]
    rec = read_record(record_path(out, SCENARIO, "naive", 0))
    assert [h["trained_tasks"] for h in run.history if "trained_tasks" in h] == list(
        range(1, len(rec["task_names"]) + 1))
    assert json.loads(run.summary[tracking.RECORD_KEY])["accuracy"] == rec["accuracy"]


def test_log_wait_is_bounded_and_warns(isolated, monkeypatch):
    from benchmark.experiment import Experiment

    monkeypatch.setattr(wandb_log, "LOG_TIMEOUT_S", 0.2)
    real_finish = wandb.sdk.wandb_run.Run.finish

    def finish(self, *args, **kwargs):  # the log never reaches the disk
        path = Path(self.settings.sync_file)
        real_finish(self, *args, **kwargs)
        path.write_bytes(_wait_until_complete(path)[:7])

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "finish", finish)
    factory = tracking.tracker_factory("offline", out=isolated / "out")
    tracker = factory(Experiment(SCENARIO, "naive", 0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.abort()
    (w,) = [w for w in caught if issubclass(w.category, tracking.TrackingWarning)]
    assert "not complete" in str(w.message)
    assert factory.mode == "offline"  # a late log is no W&B failure


def test_a_class_incremental_run_is_named_and_tagged_for_its_protocol():
    from benchmark.experiment import Experiment
    from benchmark.tracking.tracker import run_name

    task = Experiment(SCENARIO, "naive", 0, {})
    cls = Experiment(SCENARIO, "naive", 0, {"scenario": {"protocol": "class"}}, tag="a=1")
    assert run_name(task) == f"naive-{SCENARIO}-s0"
    assert run_name(cls) == f"naive-{SCENARIO}-s0-class-a=1"
