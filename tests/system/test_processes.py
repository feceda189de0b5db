"""Process handling and W&B in real processes: no worker outlives the command (SIGTERM or SIGKILL to
the parent of a ``--jobs`` run), every record has a complete W&B run after a resume, a failing
run is reported in one line by the sequential path as by the pool, and a W&B failure is
decided once per command, leaves no folder of a run that did not start, and ``WANDB_DIR`` is
honoured.

The signal tests run the command line in a real subprocess; no test talks to a W&B server
(see ``tests/support/wandb_offline.isolate``)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from benchmark import cli, tracking
from benchmark.records import read_record, record_name, record_path
from benchmark.run import executors
from benchmark.tracking import wandb_log
from tests.support import ROOT, subprocess_env
from tests.support.wandb_offline import offline_runs

pytest.importorskip("wandb")  # offline runs are read back with its protobuf classes
SCENARIO = "split-digits"

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.issue(15)]


# ------------------------------------------------------------------ processes
def _children() -> dict[int, list[int]]:
    """ppid -> pids of every process on the machine (from /proc)."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def _descendants(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _workers(parent: int) -> list[int]:
    """The pool workers of the command ``parent``: the children of its forkserver."""
    kids = _children()
    servers = [p for p in kids.get(parent, []) if "forkserver" in _cmdline(p)]
    return [w for s in servers for w in kids.get(s, [])]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_no_worker_outlives_its_command(tmp_path, sig):
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "benchmark", "run", "--scenario", SCENARIO,
           "--strategies", "naive,hat,ewc", "--seeds", "0-5", "--epochs", "200", "--jobs", "2",
           "--out", str(out), "--wandb", "disabled", "--no-progress"]
    (tmp_path / "home").mkdir()
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while len(_workers(proc.pid)) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.2)
        time.sleep(1.0)  # the workers are training
        seen = set(_descendants(proc.pid))
        assert len(seen) >= 3  # forkserver and two workers (and the resource tracker)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        if sig == signal.SIGTERM:
            # as Ctrl-C: one line, exit 143, no partial record
            assert proc.returncode == 143
            assert err.strip().splitlines() == [
                "terminated: finished runs have records; rerun the command to resume"]
        else:
            assert proc.returncode == -signal.SIGKILL
        deadline = time.monotonic() + 15
        while any(_running(p) for p in seen) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {p: _cmdline(p)[:80] for p in seen if _running(p)}
        assert left == {}, f"processes outlived the command: {left}"
        if sig == signal.SIGTERM:
            for p in (out / "runs").iterdir():
                read_record(p)  # complete records only
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in seen | set(_descendants(proc.pid)):
            if _running(p) and p != os.getpid():
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_sigterm_in_the_sequential_path_is_one_line(tmp_path, capsys, monkeypatch):
    """SIGTERM raises Terminated (a KeyboardInterrupt) in the command: one line, exit 143."""
    real = executors.run_experiment

    def run_then_term(*args, **kwargs):
        rec = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return rec

    def unhandled(signum, frame):  # without the command's handler: fail, do not end pytest
        raise AssertionError("SIGTERM was not handled by the command")

    monkeypatch.setattr(executors, "run_experiment", run_then_term)
    before = signal.signal(signal.SIGTERM, unhandled)
    out = tmp_path / "res"
    try:
        code = cli.main(["run", "--strategies", "naive", "--seeds", "0,1", "--epochs", "1",
                         "--out", str(out), "--wandb", "disabled", "--no-progress"])
        assert signal.getsignal(signal.SIGTERM) is unhandled  # restored
    finally:
        signal.signal(signal.SIGTERM, before)
    assert code == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["terminated: finished runs have records; rerun the command to resume"]
    assert list((out / "runs").iterdir()) == []  # the interrupted run wrote nothing


# ------------------------------------------------------------------ a failing run
def test_a_failing_run_does_not_stop_a_sequential_command(tmp_path, capsys, monkeypatch):
    """As with ``--jobs`` (test_parallel): the failure is one line, the other runs run and are
    written, the exit code is 1 at the end, and the rerun runs only the failed run."""
    out = tmp_path / "res"
    bad = record_path(out, SCENARIO, "naive", 1)
    real = executors.run_experiment

    def run(exp, *args, **kwargs):
        if exp.seed == 1:
            raise RuntimeError("simulated failure in the strategy")
        return real(exp, *args, **kwargs)

    monkeypatch.setattr(executors, "run_experiment", run)
    code = cli.main(["run", "--strategies", "naive", "--seeds", "1,0", "--epochs", "1",
                     "--out", str(out), "--wandb", "disabled", "--no-progress"])
    captured = capsys.readouterr()
    assert code == cli.EXIT_FAILED
    assert "Traceback" not in captured.err
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 1 of 2 runs failed")
    assert bad.name in err[0]
    failed = [line for line in (captured.out + captured.err).splitlines()
              if line.startswith(f"failed {bad.name}: ")]
    assert failed == [f"failed {bad.name}: RuntimeError: simulated failure in the strategy"]
    # the run after the failing one still ran and has its record
    assert read_record(record_path(out, SCENARIO, "naive", 0))["seed"] == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        record_name(SCENARIO, "naive", 0)]
    monkeypatch.undo()
    # rerun: only the failed run runs
    assert cli.main(["run", "--strategies", "naive", "--seeds", "1,0", "--epochs", "1",
                     "--out", str(out), "--wandb", "disabled", "--no-progress"]) == 0
    assert capsys.readouterr().out.count("skip ") == 1
    read_record(bad)


# ------------------------------------------------------------------ W&B

def _cli(out: Path, *extra: str, seeds: str = "0") -> tuple[int, list[str]]:
    argv = ["run", "--scenario", SCENARIO, "--strategies", "naive", "--seeds", seeds,
            "--epochs", "1", "--out", str(out), "--no-progress", *extra]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = cli.main(argv)
    return code, [str(w.message) for w in caught if issubclass(w.category,
                                                                tracking.TrackingWarning)]


def test_interrupt_while_wandb_finishes_leaves_no_record_and_the_resume_tracks_it(
        isolated, monkeypatch, capsys):
    out = isolated / "out"
    real, calls = wandb_log.finish_run, []

    def finish(run, exit_code):
        calls.append(exit_code)
        if len(calls) == 1:
            raise KeyboardInterrupt  # Ctrl-C while the W&B run of seed 0 finishes
        return real(run, exit_code)

    monkeypatch.setattr(wandb_log, "finish_run", finish)
    code, _ = _cli(out, "--wandb", "offline", seeds="0,1")
    assert code == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "interrupted: finished runs have records; rerun the command to resume"]
    monkeypatch.setattr(wandb_log, "finish_run", real)
    code, warned = _cli(out, "--wandb", "offline", seeds="0,1")
    assert code == 0 and warned == []
    records = sorted(p.name for p in (out / "runs").iterdir())
    assert records == sorted(record_name(SCENARIO, "naive", s) for s in (0, 1))
    complete: dict[str, int] = {}
    for run in offline_runs(out):
        if run.exit_codes == [0]:
            name = run.run.display_name
            complete[name] = complete.get(name, 0) + 1
    # one complete W&B run per record (the interrupted one was finished as failed)
    assert complete == {f"naive-{SCENARIO}-s0": 1, f"naive-{SCENARIO}-s1": 1}
    assert not list((out / "runs").glob(".*"))  # no staged record left


def test_failed_online_start_leaves_no_run_folder(isolated, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # "logged in"; the server is a closed port
    monkeypatch.setitem(tracking.INIT_TIMEOUT_S, "online", 3.0)
    out = isolated / "out"
    code, warned = _cli(out, "--wandb", "online")
    assert code == 0
    assert len(warned) == 1 and "offline instead" in warned[0]
    (run,) = offline_runs(out)
    assert run.exit_codes == [0]
    left = sorted(p.name for p in (out / "wandb").iterdir()
                  if p.name.startswith("run-") or (p.is_symlink() and not p.exists()))
    assert left == []


def test_wandb_dir_is_honoured(isolated, monkeypatch):
    where = isolated / "elsewhere"
    monkeypatch.setenv("WANDB_DIR", str(where))
    out = isolated / "out"
    code, warned = _cli(out, "--wandb", "offline")
    assert code == 0 and warned == []
    assert not (out / "wandb").exists()
    (run,) = offline_runs(where)
    assert run.exit_codes == [0] and run.folder.parent == where / "wandb"


def test_workers_share_one_decision_and_one_warning(isolated, monkeypatch):
    """Sessions of several workers share the mode: the first failure warns and every other
    session takes the step silently, without trying the failed mode again."""
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    shared = mp.get_context("spawn").Value("i", 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = tracking.Session("online", "p", None, isolated / "out", shared)
        b = tracking.Session("online", "p", None, isolated / "out", shared)
        a.degrade(RuntimeError("no network"))
        b.degrade(RuntimeError("no network"))  # at the same time: no second warning
        c = tracking.Session("online", "p", None, isolated / "out", shared)
    assert (a.mode, b.mode, c.mode) == ("offline", "offline", "offline")
    assert len([w for w in caught if issubclass(w.category, tracking.TrackingWarning)]) == 1


def test_jobs_decide_wandb_once_per_command(isolated, tmp_path):
    """``--jobs 2 --wandb online`` with W&B unreachable: one warning for the command (the
    parent decides; before, each worker waited 30 s and warned), the runs tracked offline."""
    out = tmp_path / "res"
    env = dict(os.environ)  # isolated: HOME, wandb folders, closed WANDB_BASE_URL
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["WANDB_API_KEY"] = "x" * 40
    env.pop("WANDB_MODE", None)
    cmd = [sys.executable, "-m", "benchmark", "run", "--scenario", SCENARIO,
           "--strategies", "naive", "--seeds", "0,1", "--epochs", "1", "--jobs", "2",
           "--out", str(out), "--wandb", "online", "--no-progress"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "W&B" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: W&B online tracking failed")
    runs = offline_runs(out)
    assert sorted(r.run.display_name for r in runs) == [f"naive-{SCENARIO}-s{s}" for s in (0, 1)]
    assert all(r.exit_codes == [0] for r in runs)
    assert not [p for p in (out / "wandb").iterdir() if p.name.startswith("run-")]
