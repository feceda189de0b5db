"""I/O errors of a run (benchmark/run/preflight.py, reports/io.py's WriteError): what can be told
up front is refused before any training in one line naming the path; a disk that fills up
mid-run fails that run in one line naming the file and the cause, leaves no partial record or
checkpoint, and the rerun resumes."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest

from benchmark import checkpoints, cli
from benchmark.experiment import Experiment
from benchmark.records import read_record, record_path
from benchmark.run import preflight, runner
from tests.support.cli import assert_usage_error, tree
from tests.support.records import comparable
from tests.support.runs import BASE_ONE_THREAD as BASE

SCENARIO = "split-digits"
RUN = "split-digits__naive__s0"


def _cli(out: Path, *extra: str) -> int:
    return cli.main(["run", *BASE, "--scenario", SCENARIO, "--strategies", "naive",
                     "--epochs", "1", "--out", str(out), *extra])


@pytest.mark.parametrize("where", ["checkpoints", f"checkpoints/{RUN}", "locks"])
def test_a_file_where_a_folder_must_be_is_refused_before_training(in_tmp, capsys, where):
    out = in_tmp / "out"
    blocker = out / where if where else out
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    before = tree(in_tmp)
    line = assert_usage_error(capsys, _cli(out), f"{blocker} is a file where a folder must be",
                              "move it away, or choose another --out")
    assert "Traceback" not in line
    assert tree(in_tmp) == before  # nothing trained, nothing written


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_an_unwritable_out_is_refused_before_training(in_tmp, capsys, monkeypatch, code):
    """A read-only file system or no permission (simulated: the tests may run as root)."""
    def refuse(*args, **kw):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    out = in_tmp / "out"
    assert_usage_error(capsys, _cli(out), f"cannot write to {out} ({in_tmp}: "
                       f"{os.strerror(code)}): choose another --out or make it writable")
    assert not out.exists()


def _full_disk_at(monkeypatch, name_prefix: str) -> None:
    """``os.fsync`` of a file whose name starts with ``name_prefix`` fails as a full disk does."""
    real = os.fsync

    def fsync(fd):
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(name_prefix):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")
@pytest.mark.parametrize(("prefix", "written", "resumed"), [
    (".task-003", "task-003.pt", "resume split-digits__naive__s0.json from task 3/5"),
    (f".{RUN}", f"{RUN}.json", "resume split-digits__naive__s0.json: all 5 tasks trained"),
])
def test_a_full_disk_fails_the_run_in_one_line_and_the_rerun_resumes(
        in_tmp, capsys, monkeypatch, prefix, written, resumed):
    out = in_tmp / "out"
    with monkeypatch.context() as mp:
        _full_disk_at(mp, prefix)
        assert _cli(out) == 1
    said = capsys.readouterr()
    failed = [ln for ln in said.out.splitlines() if ln.startswith("failed ")]
    assert len(failed) == 1, said.out
    assert failed[0].startswith(f"failed {RUN}.json: WriteError: cannot write ")
    assert failed[0].endswith(f"{written}: No space left on device"), failed[0]
    assert not record_path(out, SCENARIO, "naive", 0).exists()
    folder = checkpoints.run_folder(out, Experiment(SCENARIO, "naive", 0))
    left = sorted(p.name for p in folder.iterdir())
    assert left == (["task-002.pt"] if written == "task-003.pt" else ["task-005.pt"])
    assert [p.name for p in (out / "runs").iterdir()] == []  # no partial or staged record
    assert _cli(out) == 0
    assert resumed in capsys.readouterr().out
    rec = read_record(record_path(out, SCENARIO, "naive", 0))
    whole = runner.run_experiment(Experiment(SCENARIO, "naive", 0, {"train": {"epochs": 1}}))
    assert comparable(rec) == comparable(whole)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_the_run_level_check_names_the_cause(tmp_path, monkeypatch, code):
    """The executors' own check (for scripts that call them without the command line)."""
    from benchmark.errors import BenchmarkError

    def refuse(*args, **kw):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(BenchmarkError, match=f"cannot write to {tmp_path / 'out'} "
                                             rf"\({tmp_path}: {os.strerror(code)}\): choose "
                                             "another --out"):
        preflight.check_out(tmp_path / "out")


def test_write_errors_cross_processes_intact():
    """A worker's failed write reaches the command as the same one-line error (an exception
    that does not unpickle would break the whole pool)."""
    import pickle

    from benchmark.errors import DatasetMissingError
    from reports.io import WriteError

    err = WriteError(Path("/o/runs/x.json"), OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is WriteError and str(back) == str(err)
    assert (back.errno, back.filename) == (errno.ENOSPC, "/o/runs/x.json")
    missing = pickle.loads(pickle.dumps(DatasetMissingError("mnist", "/d", "why", True)))
    assert str(missing) == "dataset 'mnist' is damaged at /d: why" and missing.damaged


@pytest.mark.skipif(os.name != "posix", reason="ulimit -f")
def test_a_file_size_limit_in_worker_processes_fails_each_run_in_one_line(tmp_path):
    """With --jobs 2 and a file size limit every checkpoint write fails: each run says so in
    one line naming its file, the pool keeps going (no BrokenProcessPool), exit 1."""
    import subprocess
    import sys

    out = tmp_path / "out"
    cmd = (f"ulimit -f 50; exec {sys.executable} -m benchmark run --no-progress --wandb "
           f"disabled --scenario split-digits --strategies naive,hat --seeds 0,1 --epochs 1 "
           f"--jobs 2 --out {out}")
    done = subprocess.run(["bash", "-c", cmd], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=600)
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    failed = [ln for ln in said.splitlines() if ln.startswith("failed ")]
    assert len(failed) == 4, said
    assert all(": WriteError: cannot write " in ln and ln.endswith("File too large")
               for ln in failed), failed
    assert "BrokenProcessPool" not in said and "Traceback" not in said
