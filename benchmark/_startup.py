"""Start-up of the command-line processes, before the heavy imports (no torch here).

- ``skip_unused_imports``: Avalanche imports GEM's QP solvers, which import jax and jaxopt
  when they are installed (about 1.3 s per process); the suite never calls them, so the
  command line and its workers mark both as absent (``import jax`` raises ImportError).
- ``prestart_workers``: with ``--jobs N`` (N > 1) the worker server starts first, so that
  its import of the suite overlaps the parent's instead of following it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

UNUSED = ("jax", "jaxopt")

#: what the worker server imports before it forks workers (``benchmark.parallel._context``)
PRELOAD = ["benchmark._startup", "benchmark.parallel"]


def skip_unused_imports() -> None:
    for name in UNUSED:
        sys.modules.setdefault(name, None)


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
