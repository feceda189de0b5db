"""W&B tracking (benchmark/tracking.py): offline runs read back from their transaction logs,
failures that degrade tracking without failing training, and the auto mode.

No test talks to a W&B server: HOME and every wandb folder point into tmp, no API key is set,
and WANDB_BASE_URL points at a closed local port.
"""

from __future__ import annotations

import json
import math
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

wandb = pytest.importorskip("wandb")

from wandb.proto import wandb_internal_pb2  # noqa: E402

from benchmark import tracking  # noqa: E402
from benchmark.cli import main  # noqa: E402
from benchmark.records import read_record, record_path  # noqa: E402
from reports import metrics  # noqa: E402
from reports.records import record_problem  # noqa: E402

SCENARIO = "split-digits"


# ------------------------------------------------------------------ transaction log reader
def read_transaction_log(path: Path) -> list:
    """The records of a ``run-<id>.wandb`` file: a 7-byte header (``:W&B``, magic, version),
    then LevelDB-log blocks of 32 KiB whose chunks (crc32, length, type) carry serialized
    ``wandb_internal_pb2.Record`` messages, possibly split over blocks."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    block, pos, parts, out = 32768, 7, [], []
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # block trailer: padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:  # zero padding
            pos += room
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 2):  # full, first
            parts = [chunk]
        elif kind in (3, 4):  # middle, last
            parts.append(chunk)
        else:
            raise AssertionError(f"unknown chunk type {kind}")
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(b"".join(parts))
            out.append(rec)
    return out


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


class OfflineRun:
    """What an offline run folder holds: run metadata, config, history, summary, artifacts."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        (log,) = self.folder.glob("run-*.wandb")
        self.records = read_transaction_log(log)
        kinds = [r.WhichOneof("record_type") for r in self.records]
        assert kinds.count("run") == 1 and "exit" in kinds, f"incomplete log {log}: {kinds}"
        (self.run,) = [r.run for r, k in zip(self.records, kinds, strict=True) if k == "run"]
        self.config = {_key(u): json.loads(u.value_json) for u in self.run.config.update}
        self.history, self.summary, self.artifacts, self.exit_codes = [], {}, [], []
        for rec, kind in zip(self.records, kinds, strict=True):
            if kind == "config":
                for u in rec.config.update:
                    self.config[_key(u)] = json.loads(u.value_json)
                for r in rec.config.remove:
                    self.config.pop(_key(r), None)
            elif kind == "history":
                self.history.append({_key(i): json.loads(i.value_json) for i in rec.history.item})
            elif kind == "summary":
                for u in rec.summary.update:
                    self.summary[_key(u)] = json.loads(u.value_json)
            elif kind == "artifact":
                self.artifacts.append(rec.artifact)
            elif kind == "exit":
                self.exit_codes.append(rec.exit.exit_code)
        self.config.pop("_wandb", None)

    def table(self, key: str) -> dict:
        (path,) = (self.folder / "files" / "media" / "table").glob(f"{key}_*.table.json")
        return json.loads(path.read_text())


def offline_runs(out: Path) -> list[OfflineRun]:
    return [OfflineRun(p) for p in sorted((Path(out) / "wandb").glob("offline-run-*"))]


# ------------------------------------------------------------------ environment
ENV_UNSET = ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_ENTITY", "WANDB_PROJECT",
             "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_DIR", "WANDB_NOTES", "WANDB_TAGS")


def _isolate(mp: pytest.MonkeyPatch, root: Path) -> None:
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    mp.setenv("HOME", str(home))
    mp.setenv("NETRC", str(home / ".netrc"))
    mp.setenv("WANDB_CONFIG_DIR", str(home / "wandb-config"))
    mp.setenv("WANDB_DATA_DIR", str(home / "wandb-data"))
    mp.setenv("WANDB_CACHE_DIR", str(home / "wandb-cache"))
    mp.setenv("WANDB_ARTIFACT_DIR", str(home / "wandb-artifacts"))
    mp.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # closed port: nothing leaves
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    for name in ENV_UNSET:
        mp.delenv(name, raising=False)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    _isolate(monkeypatch, tmp_path)
    return tmp_path


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
    """joint, single, naive and hat on split-digits (seed 0, 2 epochs), tracked offline.
    joint and single run first, so naive and hat get the forgetting ratio, intransigence and
    forward transfer."""
    root = tmp_path_factory.mktemp("tracking")
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, root)
        out = root / "out"
        rc, warned = _run_cli(out, ",".join(RUN))
    assert rc == 0
    records = {s: read_record(record_path(out, SCENARIO, s, 0)) for s in RUN}
    runs = {r.run.job_type: r for r in offline_runs(out)}
    return {"out": out, "records": records, "runs": runs, "warnings": warned}


STRATS = ("joint", "naive", "hat")
#: what the bench runs, in this order: the references first
RUN = ("joint", "single", "naive", "hat")


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
    if strategy == "joint":
        assert not any(k.startswith("forgetting_ratio") for k in run.summary)
    else:
        rho = metrics.mean_forgetting_ratio(acc, bench["records"]["joint"]["accuracy"],
                                            rec["random_accuracy"])
        for t, value in enumerate(rho):
            assert _same(run.summary[f"forgetting_ratio/after_{t + 1}"], value)
        assert _same(run.summary["forgetting_ratio"], rho[-1])


@pytest.mark.parametrize("strategy", STRATS)
def test_summary_transfer_and_cost_computed_from_records(bench, strategy):
    """Issue 16: FWT against the single run, intransigence against the joint run (both
    finished before), task-agnostic final accuracy where the strategy has one, cost."""
    rec, run = bench["records"][strategy], bench["runs"][strategy]
    acc = rec["accuracy"]
    n = len(acc)
    single = bench["records"]["single"]["accuracy"]
    fwt = sum(acc[t][t] - single[t][t] for t in range(1, n)) / (n - 1)
    if strategy == "joint":
        # finished before single: its FWT is the report's alone; intransigence: the reference
        assert not {"forward_transfer", "intransigence"} & set(run.summary)
    else:
        assert run.summary["forward_transfer"] == pytest.approx(fwt)
        joint = bench["records"]["joint"]["accuracy"]
        assert run.summary["intransigence"] == pytest.approx(
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
    from_summary = json.loads(run.summary[tracking.RECORD_KEY])
    assert from_summary == {k: v for k, v in rec.items() if k != "history"}
    assert record_problem(from_summary) is None


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


def test_online_init_failure_falls_back_to_offline(isolated, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # "logged in"; never checked: init fails
    real_init, modes = wandb.init, []

    def init(*args, **kwargs):
        modes.append(kwargs.get("mode"))
        if kwargs.get("mode") == "online":
            raise TimeoutError("simulated: no network")
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    out = isolated / "out"
    rc, warned = _run_cli(out, "naive,hat", mode="online")
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
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    real_init, modes = wandb.init, []

    def init(*args, **kwargs):
        modes.append(kwargs["mode"])
        if kwargs["mode"] == "online":  # stands in for an online run: offline, but flaky
            return _FlakyRun(real_init(*args, **{**kwargs, "mode": "offline"}))
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    out = isolated / "out"
    rc, warned = _run_cli(out, "naive,hat", mode="online")
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
    from benchmark.runner import Experiment

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


# ------------------------------------------------------------------ mode selection
def test_auto_mode_offline_without_api_key(isolated, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_BASE_URL")
    assert not tracking.api_key_configured()
    assert tracking.resolve_mode(None) == "offline"
    factory = tracking.tracker_factory(None, out=isolated / "out")
    assert factory is not None and factory.mode == "offline"
    assert tracking.tracker_factory("disabled") is None


def test_auto_mode_online_with_api_key(isolated, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_BASE_URL")
    netrc = Path(isolated / "home" / ".netrc")
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {'a' * 40}\n")
    netrc.chmod(0o600)
    assert tracking.resolve_mode(None) == "online"
    netrc.unlink()
    assert tracking.resolve_mode(None) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "b" * 40)
    assert tracking.resolve_mode(None) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # an explicit environment choice wins
    assert tracking.tracker_factory(None) is None


def test_explicit_online_without_api_key_goes_offline_with_one_warning(isolated):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        factory = tracking.tracker_factory("online", out=isolated / "out")
    assert factory.mode == "offline"
    assert len([w for w in caught if issubclass(w.category, tracking.TrackingWarning)]) == 1


class _Value:
    def __init__(self, name, value):
        self.name, self.value, self.x_plot = name, value, 3


def test_avalanche_logger_forwards_numbers_only(isolated):
    from avalanche.logging import BaseLogger

    from benchmark.runner import Experiment

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
    monkeypatch.setattr(tracking, "_pause", pause)
    yield pauses
    assert [path for path, _ in pending] == []  # every late log was waited for


def test_abort_returns_once_the_log_is_on_disk(isolated, late_log):
    from benchmark.runner import Experiment

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
    from benchmark.runner import Experiment

    monkeypatch.setattr(tracking, "LOG_TIMEOUT_S", 0.2)
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


def test_log_completeness_check():
    data = _log_bytes_with_exit()
    assert tracking._log_has_exit(data)
    for cut in range(len(data)):  # a log cut anywhere is incomplete
        assert not tracking._log_has_exit(data[:cut]), cut
    corrupt = bytearray(data)
    corrupt[-1] ^= 0xFF  # the exit record fails its checksum
    assert not tracking._log_has_exit(bytes(corrupt))


def _log_bytes_with_exit() -> bytes:
    """A transaction log (header, a 70 kB summary record spanning three blocks, an exit record)
    written by the LevelDB-log rules independently of benchmark.tracking."""
    import zlib

    big = wandb_internal_pb2.Record()
    big.summary.update.add(key="text", value_json=json.dumps("x" * 70_000))
    end = wandb_internal_pb2.Record()
    end.exit.exit_code = 0
    out = bytearray(b":W&B\xe1\xbe\x00")
    for payload in (big.SerializeToString(), end.SerializeToString()):
        first = True
        while True:
            room = 32768 - len(out) % 32768
            if room < 7:
                out += bytes(room)
                continue
            chunk, payload = payload[: room - 7], payload[room - 7 :]
            kind = (1 if not payload else 2) if first else (4 if not payload else 3)
            out += struct.pack("<IHB", zlib.crc32(bytes([kind]) + chunk), len(chunk), kind)
            out += chunk
            first = False
            if not payload:
                break
    return bytes(out)


# ------------------------------------------------------------------ summary without W&B
def _write(out: Path, rec: dict) -> None:
    from benchmark.records import write_record

    write_record(record_path(out, rec["scenario"], rec["strategy"], rec["seed"],
                             rec["tag"]), rec)


def test_summary_uses_only_references_of_the_same_scenario_seed_and_no_tag(tmp_path):
    from reports.synthetic import make_costs, make_record

    def rec(strategy, seed=0, tag="", scenario=SCENARIO):
        return make_record(scenario, strategy, seed, 3, tag=tag,
                           extra=make_costs(strategy, 3, seed, scenario))

    run = rec("replay")
    before = tracking._summary(run, tmp_path)  # the references have not finished yet
    assert not {"forward_transfer", "intransigence", "forgetting_ratio"} & set(before)
    for other in (rec("single", seed=1), rec("joint", seed=1), rec("single", tag="x.a=1"),
                  rec("joint", scenario="permuted-digits")):
        _write(tmp_path, other)
    assert tracking._summary(run, tmp_path).keys() == before.keys()
    single, joint = rec("single"), rec("joint")
    _write(tmp_path, single)
    _write(tmp_path, joint)
    after = tracking._summary(run, tmp_path)
    a, s, j = run["accuracy"], single["accuracy"], joint["accuracy"]
    assert after["forward_transfer"] == pytest.approx(((a[1][1] - s[1][1])
                                                       + (a[2][2] - s[2][2])) / 2)
    assert after["intransigence"] == pytest.approx(sum(j[k][k] - a[k][k] for k in range(3)) / 3)
    assert after["forward_transfer"] != pytest.approx(tracking._summary(
        rec("replay", seed=1), tmp_path).get("forward_transfer", math.nan))
    # the cost and task-agnostic values, from the record alone
    assert before["memory_samples"] == max(run["memory_samples"])
    assert before["state_mb"] == pytest.approx(max(run["state_mb"]))
    assert before["peak_memory_mb"] == pytest.approx(max(run["peak_memory_mb"]))
    assert before["seconds_per_task"] == pytest.approx(sum(run["seconds"]) / 3)
    last = run["agnostic_accuracy"][-1]
    assert before["agnostic_final_accuracy"] == pytest.approx(sum(last) / len(last))


def test_summary_of_an_older_record_has_no_new_values(tmp_path):
    """A record written before issue 16 (no agnostic_accuracy, peak_memory_mb, state_mb,
    memory_samples) and one whose lists have a null entry (a diverged number)."""
    from reports.synthetic import make_record

    old = make_record(SCENARIO, "naive", 0, 3)
    summary = tracking._summary(old, tmp_path)
    assert summary["seconds_per_task"] == pytest.approx(0.1)
    assert not {"agnostic_final_accuracy", "peak_memory_mb", "state_mb", "memory_samples"} & (
        set(summary))
    partial = dict(old, peak_memory_mb=[None, 30.0, 20.0], memory_samples=None,
                   agnostic_accuracy=None)
    summary = tracking._summary(partial, tmp_path)
    assert summary["peak_memory_mb"] == 30.0 and "memory_samples" not in summary
