"""One writer per run: a lock file per run under ``<out>/locks/``, held while a process trains it.

Two commands on the same ``--out`` (two terminals, a scheduler's retry) would otherwise train
the runs they share twice and track each twice in W&B. The process that trains a run holds an
exclusive ``flock`` on ``<out>/locks/<record name>.lock`` from before its W&B run starts until
its record is written (``run_lock``); the file says who holds it (pid, host, start time). A
second command that reaches that run skips it in one line, trains its other runs, and at the
end waits for the lock and takes the record the holder wrote (``execute_runs``).

The kernel releases a ``flock`` when its process ends, however it ends (SIGKILL included): a
lock file left by a stopped command is therefore free, and the next command takes it over
(one line names the process that left it). A holder removes its lock file before it releases
the lock; a process that locked a file meanwhile removed sees it is no longer at the path and
locks the new one. Where ``fcntl`` is missing (Windows), runs are not locked.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: the folder under ``--out`` holding one lock file per run being trained
FOLDER = "locks"


class RunBusy(Exception):
    """Another live process holds the run's lock; ``holder`` is what its lock file says."""

    def __init__(self, name: str, holder: str):
        self.name, self.holder = name, holder
        super().__init__(name, holder)

    def __str__(self) -> str:
        return (f"skip {self.name}: another command ({self.holder}) is training it; this "
                "command waits for its record at the end")


class AlreadyWritten(Exception):
    """The run's record appeared (another command wrote it) before this process took its lock."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(name)

    def __str__(self) -> str:
        return f"skip {self.name}: complete record exists (another command wrote it)"


def lock_path(record: Path) -> Path:
    """``<out>/locks/<record name>.lock`` for the record ``<out>/runs/<record name>``."""
    record = Path(record)
    return record.parent.parent / FOLDER / f"{record.name[: -len('.json')]}.lock"


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "a process that has not said who it is yet"


def _open_locked(path: Path, block: bool) -> int | None:
    """An fd of ``path`` holding its exclusive lock (None when another process holds it and
    not ``block``); the file is the one at ``path`` now (not one a holder removed)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # no folder yet, or its last holder just removed it
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as err:
            os.close(fd)
            if err.errno in _UNSUPPORTED:
                _release_file(path)
                raise _NoLocks(path, err) from None
            raise
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed it while we waited: lock the current file


#: what ``flock`` says on file systems without locks (Lustre without -o flock, some NFS/FUSE)
_UNSUPPORTED = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL}
_warned: set[str] = set()


class _NoLocks(Exception):
    """The file system of ``--out`` has no file locks: runs go on unlocked (one warning)."""

    def __init__(self, path: Path, err: OSError):
        self.path, self.err = path, err

    def warn(self) -> None:
        folder = str(self.path.parent)
        if folder not in _warned:
            _warned.add(folder)
            print(f"warning: {folder} is on a file system without file locks "
                  f"({self.err.strerror}): runs are not locked, so two commands on this --out "
                  "could train the same run twice", file=sys.stderr)


def _release_file(path: Path, fd: int | None = None) -> None:
    """Remove the lock file (then close ``fd``, ending the lock) and the folder when empty."""
    try:
        os.unlink(path)  # before unlocking: a waiter then sees the file is gone
    except OSError:
        pass
    if fd is not None:
        os.close(fd)
    try:
        path.parent.rmdir()  # only when no other run holds a lock
    except OSError:
        pass


@contextmanager
def run_lock(record: Path, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lock of the run whose record is ``record`` for the ``with`` block; raise
    ``RunBusy`` at once when another live process holds it."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    path = lock_path(record)
    try:
        fd = _open_locked(path, block=False)
    except _NoLocks as no:
        no.warn()
        yield
        return
    if fd is None:
        raise RunBusy(Path(record).name, _holder(path))
    try:
        left = os.read(fd, 4096).decode(errors="replace").strip()
        if left and log is not None:
            log(f"lock {path.name}: taken over from a command that stopped ({left})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, (f"pid {os.getpid()} on {socket.gethostname()} since "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S')}").encode(), 0)
        yield
    finally:
        _release_file(path, fd)


def wait_for(record: Path) -> None:
    """Block until no process holds the lock of the run whose record is ``record``."""
    if fcntl is None:  # pragma: no cover - Windows
        return
    path = lock_path(record)
    if not path.exists():
        return
    try:
        fd = _open_locked(path, block=True)
    except _NoLocks:
        return
    if fd is not None:
        _release_file(path, fd)
