"""Running experiments in parallel: worker processes on this machine (``--jobs N``) or Ray
tasks on a local or existing Ray cluster (``--ray [ADDRESS]``).

Both paths keep the guarantees of the sequential :func:`benchmark.runner.run_all`:

* experiments whose complete record exists are skipped, so a killed grid resumes where it
  stopped; records are written atomically, so an interrupted run leaves none;
* a record does not depend on where it ran: every run seeds all its RNGs itself, and each
  worker uses ``threads`` torch threads (the default 1 also gives the sequential results);
* the parent shows one progress bar over the runs and prints the one-line summary of each
  finished run.

A run that raises does not stop the others: the failure is printed when it happens and
:class:`RunsFailed` is raised once every other run has finished (rerunning the command
retries only the failed runs). Ctrl-C (KeyboardInterrupt in the parent, and SIGTERM, which the
command line turns into one) cancels the runs not started and terminates the running ones,
which write nothing.

Workers never outlive the command, whatever ends it (SIGKILL included): each worker watches
its parent process's sentinel (the pipe ``multiprocessing`` keeps to it, at EOF once the
parent is gone) in a thread, and on Linux also asks the kernel for SIGTERM when its own parent
process ends (``prctl(PR_SET_PDEATHSIG)``); the forkserver asks for SIGKILL when the command
ends (``benchmark._server_guard``, first in its preload). A worker whose parent is gone stops
as if terminated (no record for its run) and is killed if it has not within ``PARENT_GRACE_S``.

Worker processes (``run_pool``) are forked from a ``forkserver`` that imported the suite once
(``spawn`` where there is no forkserver; both are safe with CUDA and with the threads torch
starts, unlike ``fork``) and write their records themselves. Ray tasks (``run_ray``) return the
record and the parent writes it, so the results folder only needs to exist on the machine
that runs the command; every Ray node needs the suite installed and the datasets under the
same ``data_root`` (the parent checks them, and downloads with ``--download``, only locally).
Each worker builds the scenario of its experiment (and keeps the last one for the next run
of the same scenario and seed); nothing is downloaded in a worker.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ._startup import die_with_parent
from .errors import BenchmarkError, RunsFailed
from .errors import brief as _brief
from .records import write_record
from .runner import Experiment, pending, run_and_write, run_experiment, summarize

RAY_HINT = "install with pip install -e '.[ray]'"
#: seconds a worker whose parent process is gone has to stop before it is killed
PARENT_GRACE_S = 10.0


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs besides the experiment (picklable)."""

    out: Path
    data_root: Path = Path("data")
    device: str = "cpu"
    #: torch threads per worker; 0 keeps torch's default
    threads: int = 1
    #: W&B mode ("online", "offline") or None when tracking is disabled
    wandb: str | None = None
    wandb_project: str = "hat-bench"
    wandb_entity: str | None = None
    #: worker-pool runs write a checkpoint after every experience and resume from it
    #: (``benchmark.checkpoints``); kept after the record is written with keep_checkpoints.
    #: (Ray tasks may run on machines without the results folder: they do not checkpoint.)
    checkpoints: bool = True
    keep_checkpoints: bool = False


# ------------------------------------------------------------------------------ in a worker
_scenarios: dict[tuple[str, int], Any] = {}  # this worker's last built scenario
_trackers: dict[tuple, Any] = {}  # this worker's W&B tracker factory
_shared_mode: Any = None  # the W&B mode level the command's workers share (tracking._Session)
_terminating = False


def _on_sigterm(signum, frame):
    global _terminating
    if _terminating:
        return  # already stopping (a second SIGTERM): let the clean-up finish
    _terminating = True
    raise SystemExit(128 + signum)  # unwinds: temporary record files are removed


def _init_worker(threads: int, shared_mode: Any = None) -> None:
    """Pool initializer: the parent handles Ctrl-C; SIGTERM stops the worker cleanly; the
    worker ends when the command does (:func:`_end_with_parent`)."""
    global _shared_mode
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    _shared_mode = shared_mode
    _end_with_parent()
    if shared_mode is not None:
        from .tracking import one_line_warnings

        one_line_warnings()
    _set_threads(threads)


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


def _set_threads(threads: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _scenario_for(exp: Experiment, data_root: Path):
    from .scenarios import get_scenario

    key = (exp.scenario, exp.seed)
    if key not in _scenarios:
        _scenarios.clear()  # one scenario in memory per worker
        _scenarios[key] = get_scenario(exp.scenario).build(exp.seed, Path(data_root))
    return _scenarios[key]


def _tracker(exp: Experiment, settings: WorkerSettings):
    if settings.wandb is None:
        return None
    from .tracking import tracker_factory

    key = (settings.wandb, settings.wandb_project, settings.wandb_entity, str(settings.out))
    if key not in _trackers:
        _trackers.clear()
        _trackers[key] = tracker_factory(settings.wandb, project=settings.wandb_project,
                                         entity=settings.wandb_entity, out=settings.out,
                                         shared=_shared_mode)
    factory = _trackers[key]
    from .runner import new_tracker

    return new_tracker(factory, exp, settings.out)


def execute(exp: Experiment, settings: WorkerSettings, path: Path | None = None) -> dict:
    """Run ``exp`` in this process and return its record; with ``path``, also write the
    record there (atomically) before returning."""
    _set_threads(settings.threads)
    scenario = _scenario_for(exp, settings.data_root)
    tracker = _tracker(exp, settings)
    if path is not None:
        return run_and_write(exp, path, scenario, out=settings.out,
                             data_root=settings.data_root, device=settings.device,
                             tracker=tracker, checkpoints=settings.checkpoints,
                             keep_checkpoints=settings.keep_checkpoints)
    from .runner import RunHooks

    hooks = RunHooks()
    if tracker is not None:
        hooks = RunHooks(on_epoch=tracker.log_epoch, on_experience=tracker.log_experience,
                         avalanche_loggers=tracker.avalanche_loggers())
    try:
        rec = run_experiment(exp, scenario, data_root=settings.data_root,
                             device=settings.device, hooks=hooks)
        if tracker is not None:
            tracker.finish(rec, settings.out)
    except BaseException:
        if tracker is not None:
            tracker.abort()
        raise
    return rec


def _pool_task(exp: Experiment, path: Path, settings: WorkerSettings) -> str:
    """A process-pool job: run, write the record, return its summary line."""
    try:
        return summarize(execute(exp, settings, path))
    except SystemExit:
        if _terminating:  # terminated by the parent: exit now, take no further job
            os._exit(143)
        raise


def _ray_task(exp: Experiment, settings: WorkerSettings) -> dict:
    """A Ray task: run and return the record (the parent writes it)."""
    return execute(exp, settings)


# ------------------------------------------------------------------------------ in the parent
def _progress(total: int, progress: bool):
    # disable=None: a bar only on a terminal (as run_all)
    return tqdm(total=total, desc="runs", unit="run", disable=None if progress else True)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started, terminate the running workers (SIGTERM: they remove
    their temporary files and exit), then kill any that is still there."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join(5)


def _context(start_method: str | None):
    """``forkserver`` (where available) with this module preloaded: the server imports torch
    and the suite once and forks every worker from it; otherwise ``spawn``."""
    if start_method is None:
        start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    if start_method not in ("forkserver", "spawn"):
        raise ValueError(f"start method {start_method!r}: use forkserver or spawn")
    ctx = mp.get_context(start_method)
    if start_method == "forkserver":
        from ._startup import PRELOAD

        ctx.set_forkserver_preload(PRELOAD)
    return ctx


def expected_cost(exp: Experiment) -> int:
    """A rough relative cost of a run for scheduling: its task-trainings (joint trains from
    scratch on tasks 1..t at every t)."""
    from strategies.registry import get_strategy

    from .scenarios import get_scenario

    n = get_scenario(exp.scenario).n_tasks
    return n * (n + 1) // 2 if get_strategy(exp.strategy).joint else n


def longest_first(todo: Sequence[tuple[Experiment, Path]]) -> list[tuple[Experiment, Path]]:
    """The runs in decreasing expected cost, so that a pool does not end on one long run
    while its other workers idle (each run seeds itself: the order changes no number)."""
    return sorted(todo, key=lambda item: -expected_cost(item[0]))


def run_pool(
    experiments: Sequence[Experiment],
    settings: WorkerSettings,
    *,
    jobs: int,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    start_method: str | None = None,
) -> list[Path]:
    """Run the experiments without a complete record in ``jobs`` worker processes; each
    worker writes its records. Returns every experiment's record path (as ``run_all``)."""
    log = log or (lambda msg: tqdm.write(msg))
    paths, todo = pending(experiments, settings.out, log)
    if not todo:
        return paths
    todo = longest_first(todo)
    (Path(settings.out) / "runs").mkdir(parents=True, exist_ok=True)
    failures: list[tuple[str, str]] = []
    bar = _progress(len(todo), progress)
    ctx = _context(start_method)
    # the W&B mode the workers share: a failure one of them sees costs one warning in all
    shared = ctx.Value("i", 0) if settings.wandb is not None else None
    pool = ProcessPoolExecutor(
        max_workers=max(1, min(jobs, len(todo))), mp_context=ctx,
        initializer=_init_worker, initargs=(settings.threads, shared),
    )
    try:
        futures = {pool.submit(_pool_task, exp, path, settings): path for exp, path in todo}
        left = set(futures)
        while left:
            done, left = wait(left, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: str(futures[f])):
                path = futures[fut]
                try:
                    line = fut.result()
                except Exception as err:  # noqa: BLE001 - reported, the others go on
                    failures.append((path.name, _brief(err)))
                    log(f"failed {path.name}: {_brief(err)}")
                else:
                    log(line)
                bar.update(1)
    except BaseException:
        _stop_pool(pool)
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        bar.close()
    if failures:
        raise RunsFailed(failures, len(todo))
    return paths


def import_ray():
    """``import ray`` or a one-line BenchmarkError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BenchmarkError(f"--ray needs Ray, which is not installed: {RAY_HINT}") from None
    return ray


def run_ray(
    experiments: Sequence[Experiment],
    settings: WorkerSettings,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Run the experiments without a complete record as Ray tasks (Ray schedules them, one
    CPU each, or ``threads`` CPUs; one GPU each with a CUDA device) and write each record as
    it arrives. Uses the Ray connection of this process when there is one; otherwise connects
    to ``address`` (``auto``, ``ray://host:10001``, ...) or, without one, starts a local
    cluster with ``num_cpus`` CPUs (None: all) that is shut down at the end."""
    ray = import_ray()
    log = log or (lambda msg: tqdm.write(msg))
    paths, todo = pending(experiments, settings.out, log)
    if not todo:
        return paths
    (Path(settings.out) / "runs").mkdir(parents=True, exist_ok=True)
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address)
        else:
            ray.init(num_cpus=num_cpus)
        started = True
    failures: list[tuple[str, str]] = []
    bar = _progress(len(todo), progress)
    resources: dict[str, Any] = {"num_cpus": max(1, settings.threads)}
    if str(settings.device).startswith("cuda"):
        resources["num_gpus"] = 1
    task = ray.remote(**resources)(_ray_task)
    refs: dict[Any, Path] = {}
    try:
        refs = {task.remote(exp, settings): path for exp, path in todo}
        left = list(refs)
        while left:
            done, left = ray.wait(left, num_returns=1)
            for ref in done:
                path = refs[ref]
                try:
                    rec = ray.get(ref)
                    write_record(path, rec)
                except Exception as err:  # noqa: BLE001 - reported, the others go on
                    cause = getattr(err, "cause", None) or err
                    failures.append((path.name, _brief(cause)))
                    log(f"failed {path.name}: {_brief(cause)}")
                else:
                    log(summarize(rec))
                bar.update(1)
    except BaseException:
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001, S110 - finished or already gone
                pass
        raise
    finally:
        bar.close()
        if started:
            ray.shutdown()
    if failures:
        raise RunsFailed(failures, len(todo))
    return paths
