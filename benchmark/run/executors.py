"""Running a list of experiments: in this process (``run_all``), in worker processes on this
machine (``run_pool``, ``--jobs N``) or as Ray tasks on a local or existing Ray cluster
(``run_ray``, ``--ray [ADDRESS]``).

Every executor keeps the same guarantees:

* experiments whose complete record exists are skipped, so a killed grid resumes where it
  stopped; records are written atomically, so an interrupted run leaves none;
* a record does not depend on where it ran: every run seeds all its RNGs itself, and each
  worker uses ``threads`` torch threads (the default 1 also gives the sequential results);
* a run writes a checkpoint after every experience and resumes from its last one (Ray:
  when the cluster is this machine, see ``run_ray``);
* a tracked run's record is written only once its W&B run has finished;
* one writer per run: the process that trains a run holds its lock (``benchmark.run.locks``)
  from before its W&B run starts to its record; a run another command is training is skipped
  in one line and waited for at the end: its record is that command's, or, when that command
  stopped without one, the run is trained here;
* the parent shows one progress bar over the runs and prints the one-line summary of each
  finished run (one loop for all: ``execute_runs``).

A run that raises does not stop the others: the failure is printed when it happens and
:class:`RunsFailed` is raised once every other run has finished (rerunning the command
retries only the failed runs). Ctrl-C (KeyboardInterrupt in the parent, and SIGTERM, which the
command line turns into one) cancels the runs not started and terminates the running ones,
which write nothing.

Workers never outlive the command, whatever ends it (SIGKILL included): each worker watches
its parent process's sentinel (the pipe ``multiprocessing`` keeps to it, at EOF once the
parent is gone) in a thread, and on Linux also asks the kernel for SIGTERM when its own parent
process ends (``prctl(PR_SET_PDEATHSIG)``); the forkserver asks for SIGKILL when the command
ends (``benchmark.run.server_guard``, first in its preload). A worker whose parent is gone
stops as if terminated (no record for its run) and is killed if it has not within
``workers.PARENT_GRACE_S`` (the workers' start-up: ``benchmark.run.workers``).

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

import inspect
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import ExitStack, closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from reports.metrics import class_il_forgetting, final_average_accuracy, forgetting, last_accuracy
from reports.schema import protocol_of
from strategies.registry import get_strategy

from ..checkpoints import RunCheckpoints, run_folder, saved_extra
from ..checkpoints import remove as remove_checkpoints
from ..data.scenarios import Scenario, get_scenario
from ..errors import BenchmarkError, RunsFailed
from ..errors import brief as _brief
from ..experiment import Experiment, resolve_for
from ..records import (
    is_complete,
    record_path,
    set_aside,
    validate_record,
    write_record,
)
from .locks import AlreadyWritten, RunBusy, run_lock, wait_for
from .preflight import check_out
from .runner import RunHooks, run_experiment
from .workers import WORKER, init_worker, set_threads

RAY_HINT = "install with pip install -e '.[ray]'"


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
    #: runs write a checkpoint after every experience and resume from it
    #: (``benchmark.checkpoints``); kept after the record is written with keep_checkpoints.
    #: (Ray tasks on a cluster of several machines do not checkpoint, see ``run_ray``.)
    checkpoints: bool = True
    keep_checkpoints: bool = False


# ------------------------------------------------------------------------------ one run
def summarize(rec: Mapping[str, Any]) -> str:
    """One line per finished run: final average accuracy, forgetting, time; in the
    class-incremental protocol its Class-IL values, then the same run's Task-IL accuracy."""
    tag = f" [{rec['tag']}]" if rec.get("tag") else ""
    if rec.get("diverged"):
        tag += " DIVERGED (a loss became NaN/inf)"
    final = final_average_accuracy(rec["accuracy"])
    if protocol_of(rec) == "class" and not rec.get("diverged"):
        rows = rec["agnostic_accuracy"]
        result = (f"final Class-IL acc {last_accuracy(rows):.3f}, forgetting "
                  f"{class_il_forgetting(rows):.3f}, Task-IL acc {final:.3f}")
    else:
        forg = forgetting(rec["accuracy"]) if len(rec["accuracy"]) > 1 else 0.0  # NaN: 1 task
        result = f"final acc {final:.3f}, forgetting {forg:.3f}"
    return (f"{rec['strategy']:>8} {rec['scenario']} seed {rec['seed']}{tag}: {result}, "
            f"{sum(rec['seconds']):.1f} s")


def pending(
    experiments: Sequence[Experiment], out: Path, log: Callable[[str], None]
) -> tuple[list[Path], list[tuple[Experiment, Path]]]:
    """Record paths of every experiment, and the (experiment, path) pairs still to run: those
    without a complete record (a killed grid resumes where it stopped)."""
    paths, todo = [], []
    for exp in experiments:
        path = record_path(out, exp.scenario, exp.strategy, exp.seed, exp.tag, exp.protocol)
        paths.append(path)
        if is_complete(path):
            log(f"skip {path.name}: complete record exists")
        else:
            todo.append((exp, path))
    return paths, todo


def run_and_write(
    exp: Experiment,
    path: Path,
    scenario: Scenario | None,
    *,
    out: Path,
    data_root: Path,
    device: str,
    tracker: Any = None,
    on_epoch: Callable[[int, dict], None] | None = None,
    checkpoints: bool = True,
    keep_checkpoints: bool = False,
    log: Callable[[str], None] | None = None,
    write: bool = True,
) -> dict:
    """Run ``exp`` on ``scenario`` (None: built here), write its record atomically to
    ``path`` and return it; the tracker (if any) follows the run and is finished or aborted.

    ``write=False`` (a Ray task: the command's process writes the record, see ``run_ray``):
    the record is validated as for writing and the tracker finished, nothing is written and
    the checkpoints are left for the writer to remove (``finish_written``).

    ``checkpoints``: the run writes a checkpoint after every experience under
    ``<out>/checkpoints/`` and resumes from the last one there (one ``resume ...`` line to
    ``log``); they are removed once the record is written, unless ``keep_checkpoints``."""

    def epoch_hook(task, entry):
        if on_epoch is not None:
            on_epoch(task, entry)
        if tracker is not None:
            tracker.log_epoch(task, entry)

    def on_experience(task, row):
        if tracker is not None:
            tracker.log_experience(task, row)

    hooks = RunHooks(on_epoch=epoch_hook, on_experience=on_experience,
                     avalanche_loggers=tracker.avalanche_loggers() if tracker else [])
    checkpoint = None
    try:
        if scenario is None:
            scenario = get_scenario(exp.scenario).build(exp.seed, Path(data_root))
        cfg = resolve_for(exp, scenario)  # (once: the checkpoint's settings and the run's)
        if checkpoints:
            resume_state = getattr(tracker, "resume_state", None)  # (RunTracker's: W&B run id)
            checkpoint = RunCheckpoints.for_run(
                out, exp, device, cfg, log=log or tqdm.write,
                extra=None if resume_state is None else lambda: {"tracker": resume_state()})
        rec = run_experiment(exp, scenario, data_root=data_root, device=device, hooks=hooks,
                             checkpoint=checkpoint, cfg=cfg)
        if not write:
            validate_record(rec)  # (as write_record would: a bad record ends no W&B run)
            if tracker is not None:
                tracker.finish(rec, out)
        elif tracker is None:
            write_record(path, rec)
        else:
            _write_tracked(path, rec, tracker, out)
    except BaseException:
        if tracker is not None:
            tracker.abort()
        raise
    if write and checkpoint is not None and not keep_checkpoints:
        remove_checkpoints(checkpoint.folder)
    return rec


def finish_written(exp: Experiment, out: Path, keep_checkpoints: bool = False) -> None:
    """Once the record of ``exp`` is written: its checkpoints go (unless kept)."""
    folder = run_folder(out, exp)
    if not keep_checkpoints and folder.exists():
        remove_checkpoints(folder)


def new_tracker(factory: Callable[..., Any] | None, exp: Experiment, out: Path) -> Any:
    """The run's tracker from ``factory`` (None: not tracked); a run that resumes from a
    checkpoint continues the W&B run its interrupted part started (same id and step)."""
    if factory is None:
        return None
    saved = (saved_extra(run_folder(out, exp)) or {}).get("tracker")
    if not saved:
        return factory(exp)
    params = inspect.signature(factory).parameters.values()
    takes = any(p.name == "resume" or p.kind is p.VAR_KEYWORD for p in params)
    return factory(exp, resume=saved) if takes else factory(exp)


def _write_tracked(path: Path, rec: dict, tracker: Any, out: Path) -> None:
    """Write the record of a tracked run so that it exists only once its W&B run is complete:
    the record is written (validated, on disk) beside ``path`` under a name that is not a
    record's (``.<name>.pending``), the tracker finishes the W&B run, then the record takes its
    place. An interrupt before that leaves no record, so the rerun runs and tracks it again
    (a record written first would be skipped for good, its W&B run aborted or empty)."""
    staged = path.with_name(f".{path.name}.pending")
    write_record(staged, rec)
    try:
        tracker.finish(rec, out)
        set_aside(path)  # (an unreadable file there is kept, not overwritten)
        os.replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------ every executor
def execute_runs(
    experiments: Sequence[Experiment],
    out: Path,
    outcomes: Callable[[list[tuple[Experiment, Path]], Any], Iterator[tuple[Path, Any]]],
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """The loop every executor shares: skip the experiments with a complete record, run the
    others (``outcomes(todo, bar)`` yields (record path, summary line or the exception the
    run raised) as runs end), one line per run, then wait for the runs another command was
    training and train those it left without a record; :class:`RunsFailed` at the end when
    any failed (the others have run). Returns every experiment's record path."""
    log = log or (lambda msg: tqdm.write(msg))
    paths, todo = pending(experiments, out, log)
    if not todo:
        return paths
    check_out(out, [run_folder(out, exp) for exp, _ in todo])
    (Path(out) / "runs").mkdir(parents=True, exist_ok=True)
    failures: list[tuple[str, str]] = []
    busy: list[tuple[Path, RunBusy]] = []
    by_path = {path: exp for exp, path in todo}
    # disable=None: a bar only on a terminal (no log spam in CI or files)
    bar = tqdm(total=len(todo), desc="runs", unit="run", disable=None if progress else True,
               position=0)

    def consume(items: list[tuple[Experiment, Path]]) -> None:
        with closing(outcomes(items, bar)) as results:
            for path, result in results:
                if isinstance(result, RunBusy):
                    busy.append((path, result))
                    log(str(result))
                elif isinstance(result, AlreadyWritten):
                    log(str(result))
                elif isinstance(result, BaseException):
                    failures.append((path.name, _brief(result)))
                    log(f"failed {path.name}: {_brief(result)}")
                else:
                    log(result)
                bar.update(1)

    try:
        consume(todo)
        while busy:  # runs another command was training: wait, take its record or train
            waiting = busy[:]
            busy.clear()
            retry = _wait_for_others(waiting, by_path, log)
            if retry:
                bar.total += len(retry)
                consume(retry)
    finally:
        bar.close()
    if failures:
        raise RunsFailed(failures, len(todo))
    return paths


def _wait_for_others(busy: Sequence[tuple[Path, RunBusy]], by_path: Mapping[Path, Experiment],
                     log: Callable[[str], None]) -> list[tuple[Experiment, Path]]:
    """Wait for the runs another command was training (``RunBusy``); those it left without a
    record (it stopped), to train here."""
    log(f"waiting for {len(busy)} runs another command is training "
        f"({busy[0][1].holder}{', ...' if len(busy) > 1 else ''})")
    retry = []
    for path, _ in busy:
        wait_for(path)
        if is_complete(path):
            log(f"done {path.name}: its record was written by the other command")
        else:
            log(f"train {path.name}: the other command stopped before writing its record")
            retry.append((by_path[path], path))
    return retry


# ------------------------------------------------------------------------------ sequential
def run_all(
    experiments: Sequence[Experiment],
    out: Path,
    *,
    data_root: Path = Path("data"),
    device: str = "cpu",
    progress: bool = True,
    tracker_factory: Callable[[Experiment], Any] | None = None,
    log: Callable[[str], None] | None = None,
    checkpoints: bool = True,
    keep_checkpoints: bool = False,
) -> list[Path]:
    """Run every experiment whose complete record is missing in this process, one after the
    other; return all record paths (``execute_runs``: a failed run does not stop the others;
    Ctrl-C (KeyboardInterrupt) stops at once). A run with a checkpoint resumes from it
    (``run_and_write``)."""
    log = log or (lambda msg: tqdm.write(msg))
    show = None if progress else True

    def outcomes(todo, bar):
        cache: dict[tuple[str, int], Scenario] = {}
        for exp, path in todo:
            bar.set_postfix_str(f"{exp.strategy} s{exp.seed}")
            try:
                key = (exp.scenario, exp.seed)
                if key not in cache:
                    cache.clear()  # one scenario in memory at a time
                    cache[key] = get_scenario(exp.scenario).build(exp.seed, Path(data_root))
                scenario = cache[key]
                ebar = tqdm(desc=f"  {exp.strategy} task 1/{scenario.n_tasks}", unit="ep",
                            disable=show, position=1, leave=False)

                def on_epoch(task, entry, ebar=ebar, n=scenario.n_tasks, name=exp.strategy):
                    ebar.set_description(f"  {name} task {task + 1}/{n}")
                    ebar.update(1)

                try:
                    with run_lock(path, log):
                        if is_complete(path):
                            raise AlreadyWritten(path.name)
                        tracker = new_tracker(tracker_factory, exp, out)
                        rec = run_and_write(exp, path, scenario, out=out, data_root=data_root,
                                            device=device, tracker=tracker, on_epoch=on_epoch,
                                            checkpoints=checkpoints,
                                            keep_checkpoints=keep_checkpoints, log=log)
                finally:
                    ebar.close()
            except Exception as err:  # noqa: BLE001 - reported; the other runs go on
                yield path, err
                continue
            yield path, summarize(rec)

    return execute_runs(experiments, out, outcomes, progress=progress, log=log)


# ------------------------------------------------------------------------------ in a worker
_scenarios: dict[tuple[str, int], Any] = {}  # this worker's last built scenario
_trackers: dict[tuple, Any] = {}  # this worker's W&B tracker factory


def _scenario_for(exp: Experiment, data_root: Path):
    key = (exp.scenario, exp.seed)
    if key not in _scenarios:
        _scenarios.clear()  # one scenario in memory per worker
        _scenarios[key] = get_scenario(exp.scenario).build(exp.seed, Path(data_root))
    return _scenarios[key]


def _tracker(exp: Experiment, settings: WorkerSettings):
    if settings.wandb is None:
        return None
    from ..tracking import tracker_factory

    key = (settings.wandb, settings.wandb_project, settings.wandb_entity, str(settings.out))
    if key not in _trackers:
        _trackers.clear()
        _trackers[key] = tracker_factory(settings.wandb, project=settings.wandb_project,
                                         entity=settings.wandb_entity, out=settings.out,
                                         shared=WORKER.shared_mode)
    factory = _trackers[key]
    return new_tracker(factory, exp, settings.out)


def execute(exp: Experiment, settings: WorkerSettings, path: Path | None = None) -> dict:
    """Run ``exp`` in this process and return its record; with ``path``, also write the
    record there (atomically) before returning; without, the caller writes it (a Ray task)."""
    set_threads(settings.threads)
    if path is None:  # a Ray task: the command's process holds the run's lock
        return _run_tracked(exp, path, settings)
    with run_lock(path, _worker_log):  # (first: a busy run builds no scenario)
        if is_complete(path):
            raise AlreadyWritten(path.name)
        return _run_tracked(exp, path, settings)


def _worker_log(message: str) -> None:
    print(message, flush=True)


def _run_tracked(exp: Experiment, path: Path | None, settings: WorkerSettings) -> dict:
    scenario = _scenario_for(exp, settings.data_root)
    tracker = _tracker(exp, settings)
    return run_and_write(exp, path, scenario, out=settings.out, data_root=settings.data_root,
                         device=settings.device, tracker=tracker,
                         checkpoints=settings.checkpoints,
                         keep_checkpoints=settings.keep_checkpoints, write=path is not None)


def _pool_task(exp: Experiment, path: Path, settings: WorkerSettings) -> str:
    """A process-pool job: run, write the record, return its summary line."""
    try:
        return summarize(execute(exp, settings, path))
    except SystemExit:
        if WORKER.terminating:  # terminated by the parent: exit now, take no further job
            os._exit(143)
        raise


def _ray_task(exp: Experiment, settings: WorkerSettings) -> dict:
    """A Ray task: run and return the record (the parent writes it)."""
    return execute(exp, settings)


# ------------------------------------------------------------------------------ in the parent
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
        from .workers import PRELOAD

        ctx.set_forkserver_preload(PRELOAD)
    return ctx


def expected_cost(exp: Experiment) -> int:
    """A rough relative cost of a run for scheduling: its task-trainings (joint trains from
    scratch on tasks 1..t at every t)."""
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

    def outcomes(todo, bar):
        todo = longest_first(todo)
        ctx = _context(start_method)
        # the W&B mode the workers share: a failure one of them sees costs one warning in all
        shared = ctx.Value("i", 0) if settings.wandb is not None else None
        pool = ProcessPoolExecutor(
            max_workers=max(1, min(jobs, len(todo))), mp_context=ctx,
            initializer=init_worker, initargs=(settings.threads, shared),
        )
        try:
            futures = {pool.submit(_pool_task, exp, path, settings): path
                       for exp, path in todo}
            left = set(futures)
            while left:
                done, left = wait(left, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: str(futures[f])):
                    try:
                        line = fut.result()
                    except Exception as err:  # noqa: BLE001 - reported, the others go on
                        yield futures[fut], err
                    else:
                        yield futures[fut], line
        except BaseException:
            _stop_pool(pool)
            raise
        else:
            pool.shutdown(wait=True)

    return execute_runs(experiments, settings.out, outcomes, progress=progress, log=log)


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
    cluster with ``num_cpus`` CPUs (None: all) that is shut down at the end.

    As in the other executors, a record is written only once its run's W&B run has finished
    (the task validates the record and finishes the tracker before returning it). Tasks
    checkpoint (and resume) as worker processes do when every node of the cluster is this
    machine (the checkpoints are under ``settings.out``); on a cluster of several machines
    they do not."""
    ray = import_ray()

    def outcomes(todo, bar):
        started = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address)
            else:
                ray.init(num_cpus=num_cpus)
            started = True
        task_settings = settings
        if settings.checkpoints and not _one_machine(ray):
            task_settings = replace(settings, checkpoints=False)
        resources: dict[str, Any] = {"num_cpus": max(1, settings.threads)}
        if str(settings.device).startswith("cuda"):
            resources["num_gpus"] = 1
        task = ray.remote(**resources)(_ray_task)
        refs: dict[Any, tuple[Experiment, Path]] = {}
        held: dict[Path, ExitStack] = {}  # each run's lock, held here while its task runs
        try:
            for exp, path in todo:
                lock = held[path] = ExitStack()
                try:
                    lock.enter_context(run_lock(path, log))
                    if is_complete(path):
                        raise AlreadyWritten(path.name)
                except (RunBusy, AlreadyWritten) as skipped:
                    held.pop(path).close()
                    yield path, skipped
                    continue
                refs[task.remote(exp, task_settings)] = (exp, path)
            left = list(refs)
            while left:
                done, left = ray.wait(left, num_returns=1)
                for ref in done:
                    exp, path = refs[ref]
                    try:
                        rec = ray.get(ref)
                        write_record(path, rec)
                    except Exception as err:  # noqa: BLE001 - reported, the others go on
                        held.pop(path).close()
                        yield path, getattr(err, "cause", None) or err
                    else:
                        if task_settings.checkpoints:
                            finish_written(exp, settings.out, settings.keep_checkpoints)
                        held.pop(path).close()
                        yield path, summarize(rec)
        except BaseException:
            for ref in refs:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001, S110 - finished or already gone
                    pass
            raise
        finally:
            for lock in held.values():
                lock.close()
            if started:
                ray.shutdown()

    return execute_runs(experiments, settings.out, outcomes, progress=progress, log=log)


def _one_machine(ray) -> bool:
    """Whether every alive node of the connected Ray cluster is this machine (False when
    that cannot be told)."""
    try:
        here = ray.util.get_node_ip_address()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        return bool(nodes) and all(n.get("NodeManagerAddress") == here for n in nodes)
    except Exception:  # noqa: BLE001 - unknown: do not checkpoint
        return False
