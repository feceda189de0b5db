"""One writer per run (benchmark/run/locks.py) with real processes: a second command on the same
``--out`` skips the run another command is training, waits for it and trains nothing twice; W&B
gets one run per record; a lock left by a killed process is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.records import read_record, record_path
from benchmark.run.locks import RunBusy, lock_path, run_lock, wait_for
from tests.support.wandb_offline import isolate, offline_runs

ROOT = Path(__file__).resolve().parents[2]

HOLD = """
import sys, time
from pathlib import Path
from benchmark.run.locks import run_lock
with run_lock(Path(sys.argv[1])):
    Path(sys.argv[2]).write_text("locked")
    time.sleep(120)
"""


def _holder(record: Path, flag: Path) -> subprocess.Popen:
    """A process that takes the run's lock and holds it (until killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(record), str(flag)], cwd=ROOT)
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the holder did not lock"
        time.sleep(0.05)
    return proc


def test_a_held_lock_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path):
    record = tmp_path / "runs" / "split-digits__hat__s0.json"
    proc = _holder(record, tmp_path / "flag")
    try:
        with pytest.raises(RunBusy) as busy, run_lock(record):
            pass
        assert f"pid {proc.pid} on " in busy.value.holder
        assert str(busy.value).startswith("skip split-digits__hat__s0.json: another command "
                                          f"(pid {proc.pid} on ")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert lock_path(record).exists()  # left behind by the killed process, but free
    lines: list[str] = []
    with run_lock(record, lines.append):
        assert f"pid {os.getpid()} on " in lock_path(record).read_text()
    assert len(lines) == 1 and f"taken over from a command that stopped (pid {proc.pid} " in (
        lines[0])
    assert not lock_path(record).parent.exists()  # released: the file and empty folder go


def test_wait_for_returns_once_the_holder_ends(tmp_path):
    record = tmp_path / "runs" / "a.json"
    proc = _holder(record, tmp_path / "flag")
    t0 = time.monotonic()
    subprocess.Popen([sys.executable, "-c", "import os, signal, sys, time; time.sleep(1.0); "
                      f"os.kill({proc.pid}, signal.SIGTERM)"])
    wait_for(record)
    assert time.monotonic() - t0 >= 0.9 and proc.wait() != 0
    with run_lock(record):  # free now
        pass


def _command(out: Path, strategies: str, epochs: int, env: dict, jobs: int = 1
             ) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmark", "run", "--no-progress", "--threads", "1",
         "--wandb", "offline", "--scenario", "split-digits", "--strategies", strategies,
         "--seeds", "0", "--epochs", str(epochs), "--jobs", str(jobs), "--out", str(out)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("jobs", [1, 2])
def test_two_commands_on_one_out_train_each_run_once(tmp_path, monkeypatch, jobs):
    """The first command is stopped (SIGSTOP) while it trains hat, holding hat's lock, until
    the second (in this process or in worker processes) has trained naive, skipped hat and
    started waiting; then it goes on."""
    with monkeypatch.context() as mp:
        isolate(mp, tmp_path)
        mp.setenv("PYTHONUNBUFFERED", "1")
        env = dict(os.environ)
    out = tmp_path / "res"
    hat = record_path(out, "split-digits", "hat", 0)
    first = _command(out, "hat", 5, env)
    deadline = time.monotonic() + 180
    while not lock_path(hat).exists():  # the first command is training hat
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0]
        time.sleep(0.02)
    first.send_signal(signal.SIGSTOP)
    second = _command(out, "naive,hat", 5, env, jobs)
    said_second: list[str] = []
    try:
        for line in second.stdout:  # until it waits for hat
            said_second.append(line)
            if line.startswith("waiting for 1 runs another command is training"):
                break
    finally:
        first.send_signal(signal.SIGCONT)
    said_second.append(second.communicate(timeout=600)[0])
    said_first = first.communicate(timeout=600)[0]
    said = "".join(said_second)
    assert first.returncode == 0, said_first
    assert second.returncode == 0, said
    assert f"skip {hat.name}: another command (pid {first.pid} on " in said
    assert f"done {hat.name}: its record was written by the other command" in said
    assert "naive split-digits seed 0" in said
    assert "hat split-digits seed 0" not in said  # not trained by the second
    assert "hat split-digits seed 0" in said_first
    assert sorted(p.name for p in (out / "runs").glob("*.json")) == [
        "split-digits__hat__s0.json", "split-digits__naive__s0.json"]
    assert read_record(hat)["strategy"] == "hat"
    runs = sorted(r.run.job_type for r in offline_runs(out))
    assert runs == ["hat", "naive"]  # one W&B run per record
    assert not (out / "locks").exists()


def test_a_file_system_without_locks_runs_unlocked_with_one_warning(tmp_path, monkeypatch,
                                                                     capsys):
    """Lustre without -o flock, some NFS/FUSE mounts: flock fails with ENOSYS or ENOLCK."""
    import errno

    from benchmark.run import locks

    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(locks.fcntl, "flock", no_flock)
    monkeypatch.setattr(locks, "_warned", set())
    record = tmp_path / "runs" / "a.json"
    for _ in range(2):
        with run_lock(record):
            pass
    wait_for(record)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "without file locks (Function not implemented)" in err[0], err
    assert not (tmp_path / "locks").exists()


def test_restart_keeps_the_checkpoints_of_a_run_another_command_trains(tmp_path):
    from benchmark.checkpoints import discard, run_folder
    from benchmark.experiment import Experiment

    busy, free = (Experiment("split-digits", s, 0) for s in ("hat", "naive"))
    for exp in (busy, free):
        (run_folder(tmp_path, exp)).mkdir(parents=True)
        (run_folder(tmp_path, exp) / "task-001.pt").write_bytes(b"x")
    proc = _holder(record_path(tmp_path, "split-digits", "hat", 0), tmp_path / "flag")
    try:
        lines: list[str] = []
        gone = discard([busy, free], tmp_path, lines.append)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert gone == [run_folder(tmp_path, free)] and not run_folder(tmp_path, free).exists()
    assert (run_folder(tmp_path, busy) / "task-001.pt").exists()
    assert len(lines) == 1 and lines[0].startswith(
        "--restart keeps the checkpoints of split-digits__hat__s0: another command "
        f"(pid {proc.pid} on ")


def test_a_run_whose_other_command_stopped_is_trained_here(tmp_path, monkeypatch):
    """The holder of hat's lock dies (SIGKILL) while this command waits for it: no record
    was written, so this command trains hat itself."""
    with monkeypatch.context() as mp:
        mp.setenv("PYTHONUNBUFFERED", "1")
        env = dict(os.environ)
    out = tmp_path / "res"
    hat = record_path(out, "split-digits", "hat", 0)
    holder = _holder(hat, tmp_path / "flag")
    command = subprocess.Popen(
        [sys.executable, "-m", "benchmark", "run", "--no-progress", "--threads", "1",
         "--wandb", "disabled", "--scenario", "split-digits", "--strategies", "naive,hat",
         "--seeds", "0", "--epochs", "1", "--out", str(out)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    said: list[str] = []
    try:
        for line in command.stdout:
            said.append(line)
            if line.startswith("waiting for 1 runs another command is training"):
                break
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    said.append(command.communicate(timeout=600)[0])
    text = "".join(said)
    assert command.returncode == 0, text
    assert f"train {hat.name}: the other command stopped before writing its record" in text
    assert "hat split-digits seed 0: final acc" in text
    assert read_record(hat)["strategy"] == "hat"
    assert not (out / "locks").exists()
