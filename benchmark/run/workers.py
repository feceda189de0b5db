"""Start-up of the command-line processes, before the heavy imports (no torch here).

- ``skip_unused_imports``: Avalanche imports GEM's QP solvers, which import jax and jaxopt
  when they are installed (about 1.3 s per process); the suite never calls them, so the
  command line and its workers mark both as absent (``import jax`` raises ImportError).
- ``prestart_workers``: with ``--jobs N`` (N > 1) the worker server starts first, so that
  its import of the suite overlaps the parent's instead of following it.
- ``die_with_parent``: the worker server and the workers end with the command
  (``benchmark.run.server_guard``, ``benchmark.run.executors``).
- ``init_worker``: a pool worker's start (signals, the watch on the command, threads).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: prctl(2) option: the signal this process gets when its parent ends (Linux)
PR_SET_PDEATHSIG = 1

UNUSED = ("jax", "jaxopt")
#: seconds a worker whose parent process is gone has to stop before it is killed
PARENT_GRACE_S = 10.0


@dataclass
class WorkerState:
    """This worker's process-wide state."""

    #: the W&B mode level the command's workers share (``tracking.Session``)
    shared_mode: Any = None
    #: SIGTERM received: the worker is stopping
    terminating: bool = False


WORKER = WorkerState()

#: what the worker server imports before it forks workers (``executors._context``)
#: (``server_guard`` first: the server ends with the command from the start)
PRELOAD = ["benchmark.run.server_guard", "benchmark.run.workers", "benchmark.run.executors"]


def skip_unused_imports() -> None:
    for name in UNUSED:
        sys.modules.setdefault(name, None)


def die_with_parent(sig: int) -> bool:
    """Have the kernel send ``sig`` to this process when its parent process ends
    (``prctl(PR_SET_PDEATHSIG)``, Linux); False where that is not available. Never call it in
    the command's own process: it would end with the shell that started it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError, TypeError):
        return False


def _jobs(argv: Sequence[str]) -> int:
    for i, arg in enumerate(argv):
        value = None
        if arg == "--jobs" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--jobs="):
            value = arg.split("=", 1)[1]
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return 1  # the parser reports it
    return 1


def prestart_workers(argv: Sequence[str]) -> None:
    """Start the forkserver now when ``argv`` asks for a local worker pool."""
    if argv[:1] not in (["run"], ["tune"]) or _jobs(argv) < 2 or "--ray" in argv:
        return
    if "forkserver" not in mp.get_all_start_methods():
        return
    from multiprocessing import forkserver

    mp.get_context("forkserver").set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()


def stop_on_sigterm(stop: Callable[[int], BaseException]) -> Callable[[int, Any], None]:
    """The suite's SIGTERM handler (the command's and a pool worker's): the first SIGTERM
    raises ``stop(signum)``, which unwinds (temporary files are removed); later ones are
    ignored, so that the clean-up runs to its end."""

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise stop(signum)

    return handler


def _worker_stop(signum: int) -> BaseException:
    WORKER.terminating = True
    return SystemExit(128 + signum)


def init_worker(threads: int, shared_mode: Any = None) -> None:
    """Pool initializer: the parent handles Ctrl-C; SIGTERM stops the worker cleanly; the
    worker ends when the command does (:func:`_end_with_parent`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, stop_on_sigterm(_worker_stop))
    WORKER.shared_mode = shared_mode
    _end_with_parent()
    if shared_mode is not None:
        from ..tracking import one_line_warnings  # (lazy: W&B)

        one_line_warnings()
    set_threads(threads)


def _end_with_parent() -> None:
    """SIGTERM from the kernel when this process's parent ends (Linux), and a thread that
    waits for the end of the process that started this worker (the command)."""
    die_with_parent(signal.SIGTERM)
    parent = mp.parent_process()
    threading.Thread(target=_watch_parent, args=(parent, os.getppid()), daemon=True,
                     name="hat-bench-parent-watch").start()


def _watch_parent(parent, ppid: int, grace: float = PARENT_GRACE_S) -> None:
    """Never returns: once ``parent`` (a ``multiprocessing`` parent process; None: poll for
    a new parent pid) has ended, stop this worker as the parent's terminate() would (SIGTERM),
    and end it if it is still there after ``grace`` seconds."""
    if parent is not None:
        parent.join()  # its sentinel: at EOF once the parent process has ended
    else:
        while os.getppid() == ppid:
            time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace)
    os._exit(128 + signal.SIGTERM)


def set_threads(threads: int) -> None:
    """``threads`` torch threads in this process (0: torch's default)."""
    if threads:
        import torch  # (lazy: this module is imported before torch)

        torch.set_num_threads(threads)


skip_unused_imports()
