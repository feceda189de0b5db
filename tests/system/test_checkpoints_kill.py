"""Runs killed in real processes resume from their last checkpoint and end with the record of
an uninterrupted run, bit for bit (timing fields aside): SIGKILL right after the checkpoint of
task 2 of 5 for every registered strategy, SIGTERM in the middle of an experience, and the
``--jobs`` worker path.

The sequential commands run ``benchmark.cli.main`` in processes forked from a forkserver
that imported the suite once (``python -m benchmark`` minus the interpreter start-up, which
costs more than the training here); the ``--jobs`` command is a ``python -m benchmark``
subprocess. Processes are killed by ``HATBENCH_KILL_AFTER_TASK`` (the runner SIGKILLs itself
right after that checkpoint) or by a real SIGTERM.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark import checkpoints, cli
from benchmark.experiment import Experiment
from benchmark.records import read_record, record_name, record_path
from benchmark.run import workers
from strategies import STRATEGIES
from tests.support.records import comparable

SCENARIO = "split-digits"
EPOCHS = "2"
TIMEOUT_S = 600

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="forkserver and signals as on Linux")]


def argv(strategies, out: Path, *extra: str) -> list[str]:
    return ["run", "--scenario", SCENARIO, "--strategies", ",".join(strategies), "--seeds",
            "0", "--epochs", EPOCHS, "--out", str(out), "--threads", "1", "--wandb",
            "disabled", "--no-progress", *extra]


def stem(strategy: str) -> str:
    return record_name(SCENARIO, strategy, 0)[: -len(".json")]


# ------------------------------------------------------------------ commands in processes
def _command(args: list[str], cwd: str, log: str, kill_after: str | None,
             sigterm_at_task: int | None) -> None:
    """In a forked process: the command line, its output appended to ``log``."""
    os.chdir(cwd)
    os.environ.pop(checkpoints.KILL_ENV, None)
    if kill_after is not None:
        os.environ[checkpoints.KILL_ENV] = kill_after
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if sigterm_at_task is not None:
        from benchmark.run import measures

        real = measures._History.after_training_epoch

        def after_training_epoch(self, strategy, **kw):
            real(self, strategy, **kw)
            if strategy.clock.train_exp_counter == sigterm_at_task and len(self.entries) == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # after the first epoch of the task

        measures._History.after_training_epoch = after_training_epoch
    sys.exit(cli.main(args))


def _context():
    ctx = mp.get_context("forkserver")
    # (when another test started the server already, its preload imported the suite too)
    ctx.set_forkserver_preload([*workers.PRELOAD, "benchmark.cli", "benchmark.cli.plan",
                                "benchmark.cli.tune"])
    return ctx


def start(args: list[str], cwd: Path, log: Path, kill_after: str | None = None,
          sigterm_at_task: int | None = None):
    proc = _context().Process(target=_command, args=(args, str(cwd), str(log), kill_after,
                                                      sigterm_at_task))
    proc.start()
    return proc


def finish(proc) -> int:
    proc.join(TIMEOUT_S)
    if proc.is_alive():
        proc.kill()
        proc.join()
        raise AssertionError("the command did not end")
    return proc.exitcode


class Reference:
    """Every strategy run uninterrupted (started at once, read when needed)."""

    def __init__(self, root: Path):
        self.out, self.log = root / "reference", root / "reference.log"
        self.proc = start(argv(list(STRATEGIES), self.out), root, self.log)
        self._records: dict[str, dict] | None = None

    def records(self) -> dict[str, dict]:
        if self._records is None:
            code = finish(self.proc)
            assert code == 0, self.log.read_text()[-3000:]
            self._records = {s: read_record(record_path(self.out, SCENARIO, s, 0))
                             for s in STRATEGIES}
        return self._records


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ref = Reference(tmp_path_factory.mktemp("reference"))
    yield ref
    if ref.proc.is_alive():
        ref.proc.kill()


def assert_resumed(out: Path, strategies, reference: Reference, seconds: dict) -> None:
    """Each run's record equals the uninterrupted one (timing aside) and holds the times of
    the tasks trained before the interruption (proof that it resumed, not restarted); no
    checkpoint is left."""
    ref = reference.records()
    for s in strategies:
        rec = read_record(record_path(out, SCENARIO, s, 0))
        want = comparable(ref[s])
        got = comparable(rec)
        assert got == want, (s, [k for k in want if got.get(k) != want[k]])
        if stem(s) in seconds:
            saved = seconds[stem(s)]
            assert rec["seconds"][: len(saved)] == saved, s
    assert not (out / checkpoints.FOLDER).exists()


# ------------------------------------------------------------------ the tests
def test_every_strategy_killed_after_task_2_resumes_bit_for_bit(tmp_path, reference):
    """One command runs every registered strategy; each rerun resumes the run the previous
    one killed and is killed itself after task 2 of the next run, until all have records."""
    names = list(STRATEGIES)
    out, log = tmp_path / "out", tmp_path / "log"
    killed: list[str] = []
    seconds: dict[str, list[float]] = {}
    for _ in range(len(names) + 1):
        code = finish(start(argv(names, out), tmp_path, log, kill_after="2"))
        if code == 0:
            break
        assert code == -signal.SIGKILL, log.read_text()[-3000:]
        (folder,) = (out / checkpoints.FOLDER).iterdir()
        assert [p.name for p in folder.iterdir()] == ["task-002.pt"]
        seconds[folder.name] = checkpoints.read(folder / "task-002.pt")["progress"]["seconds"]
        killed.append(folder.name)
    assert killed == [stem(s) for s in names]
    text = log.read_text()
    for s in names:
        assert text.count(f"resume {stem(s)}.json from task 3/5") == 1, (s, text[-3000:])
    assert_resumed(out, names, reference, seconds)


@pytest.mark.parametrize("strategy", ["lwf"])
def test_sigterm_during_an_experience_leaves_a_usable_checkpoint(tmp_path, reference, strategy):
    out, log = tmp_path / "out", tmp_path / "log"
    # SIGTERM after the first epoch of task 3 (0-based 2): exit 143, one line, no record
    code = finish(start(argv([strategy], out), tmp_path, log, sigterm_at_task=2))
    assert code == cli.EXIT_TERMINATED, log.read_text()[-3000:]
    assert log.read_text().strip().splitlines()[-1].startswith("terminated:")
    assert not record_path(out, SCENARIO, strategy, 0).exists()
    folder = checkpoints.run_folder(out, Experiment(SCENARIO, strategy, 0))
    assert [p.name for p in folder.iterdir()] == ["task-002.pt"]
    saved = checkpoints.read(folder / "task-002.pt")["progress"]["seconds"]
    assert finish(start(argv([strategy], out), tmp_path, log)) == 0
    assert f"resume {stem(strategy)}.json from task 3/5" in log.read_text()
    assert_resumed(out, [strategy], reference, {stem(strategy): saved})


def test_jobs_path_resumes_too(tmp_path, reference, in_tmp):
    """``python -m benchmark run --jobs 2``: its workers SIGKILL themselves after task 2
    (the pool breaks, exit 1); the rerun with --jobs 2 resumes both runs."""
    from tests.support import subprocess_env  # (here: the forked commands skip its imports)

    names = ["naive", "hat"]
    out = tmp_path / "out"
    (tmp_path / "home").mkdir()
    env = {**subprocess_env(tmp_path), checkpoints.KILL_ENV: "2"}
    proc = subprocess.run([sys.executable, "-m", "benchmark", *argv(names, out, "--jobs", "2")],
                          cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == cli.EXIT_FAILED, proc.stderr[-3000:]
    assert "BrokenProcessPool" in proc.stderr
    seconds = {}
    for folder in (out / checkpoints.FOLDER).iterdir():
        # (a worker stopped anywhere may have left its folder before its first checkpoint)
        for path in folder.glob("task-*.pt"):
            seconds[folder.name] = checkpoints.read(path)["progress"]["seconds"]
    # the first worker to finish its task 2 killed itself; the other was stopped anywhere
    assert any(len(v) == 2 for v in seconds.values()), seconds
    assert cli.main(argv(names, out, "--jobs", "2")) == 0
    assert_resumed(out, names, reference, seconds)
