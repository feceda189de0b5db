"""Start-up of the command-line processes, before the heavy imports (no torch here).

- ``skip_unused_imports``: Avalanche imports GEM's QP solvers, which import jax and jaxopt
  when they are installed (about 1.3 s per process); the suite never calls them, so the
  command line and its workers mark both as absent (``import jax`` raises ImportError).
- ``prestart_workers``: with ``--jobs N`` (N > 1) the worker server starts first, so that
  its import of the suite overlaps the parent's instead of following it.
- ``die_with_parent``: the worker server and the workers end with the command
  (``benchmark._server_guard``, ``benchmark.parallel``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

#: prctl(2) option: the signal this process gets when its parent ends (Linux)
PR_SET_PDEATHSIG = 1

UNUSED = ("jax", "jaxopt")

#: what the worker server imports before it forks workers (``benchmark.parallel._context``)
#: (``_server_guard`` first: the server ends with the command from the start)
PRELOAD = ["benchmark._server_guard", "benchmark._startup", "benchmark.parallel"]


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
    import multiprocessing as mp

    if argv[:1] not in (["run"], ["tune"]) or _jobs(argv) < 2 or "--ray" in argv:
        return
    if "forkserver" not in mp.get_all_start_methods():
        return
    from multiprocessing import forkserver

    mp.get_context("forkserver").set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()


skip_unused_imports()
