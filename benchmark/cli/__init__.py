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

from strategies import STRATEGIES, ConfigError, TrainConfig
from strategies.common.config import to_public_dict

from ..data.scenarios import describe_scenarios
from ..errors import BenchmarkError
from ..records import RecordError
from ..run.workers import stop_on_sigterm
from .args import (  # noqa: F401 - (re-exported: the command line's public names)
    MAX_SEED,
    build_parser,
    parse_names,
    parse_seeds,
)
from .plan import RunPlan, plan_run, prepare_run  # noqa: F401
from .presets import load_preset  # noqa: F401
from .tune import finish_tune, plan_tune

EXIT_USAGE = 2
EXIT_FAILED = 1
#: Ctrl-C and SIGTERM (128 + the signal's number, as a shell reports a process it ended)
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def cmd_list() -> int:
    print("Scenarios:")
    for row in describe_scenarios():
        emb = "embedded" if row["embedded"] else "download"
        print(f"  {row['name']:<16} {row['n_tasks']:>2} tasks  {row['network']:<8} {emb:<9} "
              f"{row['description']}")
    print("\nStrategies:")
    for spec in STRATEGIES.values():
        print(f"  {spec.name:<8} {spec.description}")
        defaults = spec.defaults()
        if defaults:
            print("           " + ", ".join(f"{spec.name}.{k}={v}" for k, v in defaults.items()))
        print(f"           train.clipgrad={spec.clipgrad:g} (the reference's)")
        if spec.space:
            print("           tune space: " + "; ".join(
                f"{spec.name}.{k} in {{{', '.join(f'{v:g}' for v in vals)}}}"
                for k, vals in spec.space.items()))
    print("\nTraining (train.*): " + ", ".join(f"{k}={v}" for k, v in
                                                to_public_dict(TrainConfig()).items()))
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


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; Ctrl-C or SIGTERM stops it with one line (exit 130 or 143)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with _sigterm_as_interrupt():
        try:
            return _command(argv)
        except KeyboardInterrupt as err:
            return _stopped(err)


def _command(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "list":
            return cmd_list()
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
