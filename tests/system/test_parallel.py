"""Tests of the parallel paths (benchmark/run/executors.py): worker processes (``--jobs``) and Ray
tasks (``--ray``) give the same records as the sequential run; a failing run or Ctrl-C in the
parent leaves only complete records, and rerunning finishes the grid."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
import torch

from benchmark import cli
from benchmark import grid as gridlib
from benchmark.records import read_record, record_name, record_path
from benchmark.run import executors as parallel
from benchmark.run.executors import RunsFailed, WorkerSettings, run_all, run_pool, run_ray
from tests.support.records import read_comparable
from tests.support.runs import BASE_ONE_THREAD as BASE

pytestmark = pytest.mark.usefixtures("one_thread")  # as the workers: --threads 1


def leftovers(out: Path) -> list[str]:
    """Anything in runs/ that is not a complete record (temporary files, corrupt records)."""
    bad = []
    for p in (out / "runs").iterdir():
        try:
            read_record(p)
        except Exception:  # noqa: BLE001
            bad.append(p.name)
    return bad


def _grid_exps(epochs: int = 1, seeds=(0,)):
    return gridlib.expand("split-digits", ["naive", "hat"], list(seeds),
                          {"train": {"epochs": str(epochs)}}, {"hat.smax": ["25", "400"]})


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The reference: the tiny grid run sequentially in this process."""
    out = tmp_path_factory.mktemp("sequential")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        paths = run_all(_grid_exps(), out, progress=False, log=lambda m: None)
    finally:
        torch.set_num_threads(before)
    return {p.name: read_comparable(p) for p in paths}


def test_two_workers_give_the_sequential_records_and_a_failed_run_is_retried(
        tmp_path, capsys, monkeypatch, sequential):
    out = tmp_path / "res"
    argv = ["run", *BASE, "--scenario", "split-digits", "--strategies", "naive,hat",
            "--seeds", "0", "--epochs", "1", "--grid", "hat.smax=25,400", "--jobs", "2",
            "--out", str(out)]
    # one grid point cannot be written (a folder sits where its record goes, put there once
    # the up-front checks, which refuse it, have passed): that run fails, the others finish
    # and keep their records
    blocked = record_path(out, "split-digits", "hat", 0, "hat.smax=400")
    real_pool = parallel.run_pool

    def run_pool(*args, **kwargs):
        blocked.mkdir(parents=True)
        return real_pool(*args, **kwargs)

    monkeypatch.setattr(parallel, "run_pool", run_pool)
    assert cli.main(argv) == 1
    monkeypatch.undo()
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "1 of 3 runs failed" in err[0] and blocked.name in err[0]
    assert f"failed {blocked.name}" in captured.out + captured.err
    blocked.rmdir()
    assert leftovers(out) == []
    done = sorted(p.name for p in (out / "runs").iterdir())
    assert done == sorted(n for n in sequential if n != blocked.name)
    for name in done:
        assert read_comparable(out / "runs" / name) == sequential[name], name

    # rerun: only the failed point runs
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.count("skip ") == 2
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(sequential)
    for name, rec in sequential.items():
        assert read_comparable(out / "runs" / name) == rec, name


def test_ctrl_c_in_the_parent_stops_the_workers_and_the_rerun_completes(tmp_path):
    out = tmp_path / "res"
    exps = _grid_exps(epochs=3, seeds=(0, 1))
    settings = WorkerSettings(out=out, threads=1)

    def log(msg):
        if not msg.startswith(("skip", "failed")):
            raise KeyboardInterrupt  # Ctrl-C right after the first finished run

    with pytest.raises(KeyboardInterrupt):
        run_pool(exps, settings, jobs=2, progress=False, log=log)
    first = sorted(p.name for p in (out / "runs").iterdir())
    assert 1 <= len(first) < len(exps)
    assert leftovers(out) == []
    time.sleep(1.0)  # no worker is left running: nothing else appears
    assert sorted(p.name for p in (out / "runs").iterdir()) == first

    lines: list[str] = []
    paths = run_pool(exps, settings, jobs=2, progress=False, log=lines.append)
    assert sum(line.startswith("skip") for line in lines) == len(first)
    assert sorted(p.name for p in paths) == sorted(p.name for p in (out / "runs").iterdir())
    assert len(paths) == len(exps) and leftovers(out) == []
    for p in paths:
        assert read_record(p)["params"]["train"]["epochs"] == 3


def test_a_failing_run_does_not_stop_the_others(tmp_path):
    # a grid point that fails inside the worker (its task is not in the scenario: caught at
    # run time, as for scenarios whose task names are only known after reading the data)
    out = tmp_path / "res"
    exps = gridlib.expand("split-digits", ["naive"], [0], {"train": {"epochs": "1"}},
                          {"scenario.task": ["digits:0-1", "no-such-task"]})
    lines: list[str] = []
    with pytest.raises(RunsFailed) as info:
        run_pool(exps, WorkerSettings(out=out), jobs=2, progress=False, log=lines.append)
    assert len(info.value.failures) == 1 and info.value.total == 2
    name, text = info.value.failures[0]
    assert "no-such-task" in name and "ConfigError" in text and "digits:0-1" in text
    assert [p.name for p in (out / "runs").iterdir()] == [
        record_name("split-digits", "naive", 0, "scenario.task=digits:0-1")]
    assert record_name("split-digits", "naive", 0, "scenario.task=digits:0-1").startswith(
        "split-digits__naive__s0__scenario.task=digits-0-1~")


@pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                    reason="ray is not installed (pip install -e '.[ray]')")
def test_ray_local_cluster_gives_the_sequential_records(tmp_path, sequential):
    import ray

    out = tmp_path / "res"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        lines: list[str] = []
        paths = run_ray(_grid_exps(), WorkerSettings(out=out, threads=1), progress=False,
                        log=lines.append)
        assert ray.is_initialized()  # a connection it did not open is left open
    finally:
        ray.shutdown()
    assert sorted(p.name for p in paths) == sorted(sequential)
    assert len(lines) == len(sequential)
    for p in paths:
        assert read_comparable(p) == sequential[p.name], p.name
    assert leftovers(out) == []


def test_ray_missing_is_a_usage_error(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real(name, *a))
    out = tmp_path / "res"
    code = cli.main(["run", *BASE, "--ray", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error:") and "pip install -e '.[ray]'" in err[0]
    assert not out.exists()

