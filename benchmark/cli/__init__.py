"""Command line: ``python -m benchmark run ...``, ``tune ...`` and ``list``.

Everything the user gives is validated before any training starts; a bad input prints one
line on stderr and exits with code 2, writing nothing. Arguments: ``args``; presets:
``presets``; the run plan: ``plan``; ``tune``: ``tune``. Here: ``main``, the exit codes and
the SIGTERM handler, and running a plan (``execute``).
"""

from __future__ import annotations

import argparse
import importlib.util  # noqa: F401 - (tests patch importlib.util.find_spec through cli)
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

# (light: the parser, ``list`` and the name checks import neither torch nor Avalanche; the
# suite is imported once a command runs)
from ..errors import BenchmarkError
from ..run.workers import prestart_workers, stop_on_sigterm
from .args import (  # noqa: F401 - (re-exported: the command line's public names)
    MAX_SEED,
    build_parser,
    check_names,
    parse_names,
    parse_seeds,
)
from .catalogue import catalogue, render_list

if TYPE_CHECKING:
    from .plan import RunPlan

#: names re-exported from the modules that import the suite, loaded on first use
_LAZY = {"RunPlan": "plan", "plan_run": "plan", "prepare_run": "plan", "load_preset": "presets"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


EXIT_USAGE = 2
EXIT_FAILED = 1
#: Ctrl-C and SIGTERM (128 + the signal's number, as a shell reports a process it ended)
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def cmd_list() -> int:
    """``list``: the scenarios, and the strategies with their defaults and search spaces."""
    print(render_list(catalogue()))
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM: the command stops as on Ctrl-C (workers terminated, no partial record)."""


_on_sigterm = stop_on_sigterm(lambda signum: Terminated())


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (in the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stopped(err: KeyboardInterrupt) -> int:
    """The one line and exit code of a command stopped by Ctrl-C or SIGTERM."""
    term = isinstance(err, Terminated)
    print(f"{'terminated' if term else 'interrupted'}: finished runs have records; rerun the "
          "command to resume", file=sys.stderr)
    return EXIT_TERMINATED if term else EXIT_INTERRUPTED


def execute(plan: RunPlan, args: argparse.Namespace) -> int:
    """Run the plan's experiments (sequential, worker pool or Ray); the exit code. A run that
    fails is reported in one line, the others run (exit 1 at the end); Ctrl-C or SIGTERM
    stops all (one line, exit 130 or 143)."""
    # (lazy: torch, W&B and the run loop load only once a command runs)
    from ..run.executors import RunsFailed, WorkerSettings, run_all, run_pool, run_ray
    from ..tracking import decide_mode, one_line_warnings, tracker_factory

    one_line_warnings()
    if args.threads:
        import torch  # (lazy: start-up time)

        torch.set_num_threads(args.threads)
    progress = not args.no_progress
    keep = bool(getattr(args, "keep_checkpoints", False))
    if getattr(args, "restart", False):
        from ..checkpoints import discard  # (lazy: torch)

        discard(plan.experiments, plan.out)
    try:
        if plan.ray is None and plan.jobs == 1:
            factory = tracker_factory(args.wandb, project=args.wandb_project,
                                      entity=args.wandb_entity, out=plan.out)
            run_all(plan.experiments, plan.out, data_root=plan.data_root, device=plan.device,
                    progress=progress, tracker_factory=factory, keep_checkpoints=keep)
        else:
            # decided once here: a failing W&B costs one wait and one warning, not one a worker
            mode = decide_mode(args.wandb, project=args.wandb_project,
                               entity=args.wandb_entity, out=plan.out.resolve())
            settings = WorkerSettings(
                out=plan.out.resolve(), data_root=plan.data_root.resolve(), device=plan.device,
                threads=args.threads, wandb=None if mode == "disabled" else mode,
                wandb_project=args.wandb_project, wandb_entity=args.wandb_entity,
                keep_checkpoints=keep,
            )
            if plan.ray is not None:
                run_ray(plan.experiments, settings, address=plan.ray or None,
                        num_cpus=plan.jobs if plan.jobs > 1 else None, progress=progress)
            else:
                run_pool(plan.experiments, settings, jobs=plan.jobs, progress=progress)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (Terminated)
        return _stopped(err)
    except RunsFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except BenchmarkError as err:  # e.g. Ray missing at run time
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def main(argv: Sequence[str] | None = None, *, prestart: bool = False) -> int:
    """The command line; Ctrl-C or SIGTERM stops it with one line (exit 130 or 143).
    ``prestart``: start the worker server of ``--jobs N`` once the arguments are checked,
    before the suite is imported (``python -m benchmark``: the two imports overlap)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with _sigterm_as_interrupt():
        try:
            return _command(argv, prestart)
        except KeyboardInterrupt as err:
            return _stopped(err)


def _command(argv: list[str], prestart: bool = False) -> int:
    try:  # (before the suite is imported)
        args = build_parser().parse_args(argv)
        if args.command == "list":
            return cmd_list()
        check_names(args)
    except BenchmarkError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if prestart:
        prestart_workers(argv)
    from strategies import ConfigError

    from ..records import RecordError
    from .plan import plan_run
    from .tune import finish_tune, plan_tune

    try:
        plan = plan_tune(args) if args.command == "tune" else plan_run(args)
    except (BenchmarkError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    code = execute(plan, args)
    if code or args.command != "tune":
        return code
    try:
        return finish_tune(plan, args, argv)
    except (BenchmarkError, ConfigError, RecordError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
