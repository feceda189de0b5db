"""Experiment tracking with Weights & Biases: one W&B run per (scenario, strategy, seed).

``tracker_factory(mode, project=..., entity=..., out=...)`` returns the callable that the runner
calls once per experiment to get a :class:`RunTracker` (or None when tracking is disabled). The
runner then calls ``log_epoch`` after every training epoch, ``log_experience`` after every
evaluation, ``finish`` when the run has ended, before its record is written (so a record exists
only for a run whose W&B run is complete: an interrupted command reruns, and tracks again, every
run without a record), and ``abort`` when the run fails.

Tracking never gets in the way of training:

* mode None (auto) is ``online`` when an API key is configured, otherwise ``offline``
  (:mod:`.mode`). A ``WANDB_MODE`` of offline/dryrun/disabled in the environment is honoured in
  auto mode.
* offline runs are written under ``<out>/wandb/``, or under ``$WANDB_DIR/wandb/`` when the user
  sets ``WANDB_DIR`` (online runs keep their local copy there too); upload them later with
  ``wandb sync <dir>/wandb/offline-run-*``. A run that wandb could not start leaves no folder.
* any W&B failure switches the session from online to offline with one warning; if offline
  fails too, the session goes on without tracking, with one more warning (:mod:`.session`).
  The data logged so far in the failed run is replayed into its replacement, so an offline
  fallback run is complete.
* a run is complete on disk when ``finish``/``abort`` return (:mod:`.wandb_log`).
* the summary is computed from the run's own record alone (:mod:`.summary`).
"""

from __future__ import annotations

# wandb and matplotlib are imported where used: a command that tracks nothing never loads them
import io
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from avalanche.logging import BaseLogger

from reports.schema import WANDB_ARTIFACT_TYPE, protocol_of
from reports.text import first_line

from ..experiment import run_params
from ..records import record_name, record_text
from . import wandb_log
from .mode import DISABLED, OFFLINE, ONLINE, resolve_mode, warn
from .session import Session
from .summary import Tables, num, run_summary, run_tables

__all__ = [
    "ARTIFACT_TYPE",
    "EPOCH_KEYS",
    "RunTracker",
    "TrackerFactory",
    "WandbAvalancheLogger",
    "run_config",
    "run_name",
    "tracker_factory",
]

#: W&B artifact type of the run record (``reports.wandb_source`` reads it back)
ARTIFACT_TYPE = WANDB_ARTIFACT_TYPE


#: run record history keys → W&B history keys
EPOCH_KEYS = {
    "train_loss": "train/loss",
    "train_acc": "train/acc",
    "valid_loss": "valid/loss",
    "lr": "train/lr",
    "hat_s": "hat/s",
    "hat_reg": "hat/reg",
}


def run_name(exp) -> str:
    """``<strategy>-<scenario>-s<seed>[-class][-<tag>]`` (``-class``: the class-incremental
    protocol, as the record's file name says)."""
    name = f"{exp.strategy}-{exp.scenario}-s{exp.seed}"
    if exp.protocol != "task":
        name += f"-{exp.protocol}"
    return f"{name}-{exp.tag}" if exp.tag else name


def run_config(params: Mapping[str, Any], scenario: str, strategy: str, seed: int) -> dict:
    """The W&B run config: the record's ``params`` plus scenario, strategy and seed."""
    return {**params, "scenario": scenario, "strategy": strategy, "seed": seed}


def _early_params(exp) -> dict | None:
    """The record's ``params`` before training (the same resolution as the runner's)."""
    try:
        return run_params(exp)
    except Exception:  # noqa: BLE001 - the config is completed at finish anyway
        return None


# ------------------------------------------------------------------------------ tracker
class RunTracker:
    """The W&B run of one experiment. No method raises; a W&B failure degrades the session.

    Every W&B operation is kept (as a function of the run) until the run finishes, so a run
    that fails midway is replayed into its offline replacement.
    """

    def __init__(self, exp, session: Session, resume: Mapping[str, Any] | None = None):
        self.exp = exp
        self._session = session
        self._ops: list[Callable[[Any], None]] = []
        self._run = None
        self._step = 0
        self._finished = False
        params = _early_params(exp) or {}
        self._init_kwargs = dict(
            name=run_name(exp),
            group=exp.scenario,
            job_type=exp.strategy,
            tags=[exp.scenario, exp.strategy, f"seed{exp.seed}",
                  *([f"{exp.protocol}-incremental"] if exp.protocol != "task" else [])],
            config=run_config(params, exp.scenario, exp.strategy, exp.seed),
        )
        if resume and resume.get("id"):
            # a run resumed from its checkpoint (resume_state): the same W&B run, continued
            self._init_kwargs.update(id=str(resume["id"]), resume="allow")
            self._step = int(resume.get("step", 0))
        self._ops.append(_define_metrics)
        self._open()

    def resume_state(self) -> dict[str, Any] | None:
        """What a checkpoint keeps to continue this W&B run (its id and step); None when no
        run is tracked."""
        if self._run is None:
            return None
        return {"id": str(self._run.id), "step": self._step}

    # -- plumbing
    @property
    def active(self) -> bool:
        """True while a W&B run receives this experiment's data."""
        return self._run is not None

    @property
    def run(self):
        """The current ``wandb`` run (None when tracking is off)."""
        return self._run

    def _open(self) -> None:
        """Start a run in the session's mode and replay the operations so far."""
        while True:
            self._session.sync()  # a step another worker took: not tried again here
            if self._session.mode not in (ONLINE, OFFLINE):
                break
            run = None
            try:
                run = self._session.init_run(self._init_kwargs)
                for op in self._ops:
                    op(run)
            except Exception as err:  # noqa: BLE001 - any W&B failure: next mode down
                if run is not None:
                    wandb_log.finish_quietly(run, 1)
                self._session.degrade(err)
                continue
            self._run = run
            return
        self._run = None
        self._ops.clear()

    def _apply(self, op: Callable[[Any], None]) -> None:
        if self._run is None:
            return
        self._ops.append(op)
        try:
            op(self._run)
        except Exception as err:  # noqa: BLE001
            broken, self._run = self._run, None
            wandb_log.finish_quietly(broken, 1)
            self._session.degrade(err)
            self._open()

    def log(self, row: Mapping[str, Any]) -> None:
        """Log one history row (the current ``global_step`` is added)."""
        data = {**row, "global_step": self._step}
        self._apply(lambda run: run.log(data))

    # -- the runner's hooks
    def log_epoch(self, task: int, entry: Mapping[str, Any]) -> None:
        """Per epoch: train loss/accuracy, validation loss, learning rate, HAT's s and
        regulariser, with ``task`` (0-based), ``epoch`` (1-based) and ``global_step``."""
        if self._run is None:
            return
        self._step += 1
        row: dict[str, Any] = {"task": int(task), "epoch": num(entry.get("epoch"))}
        for key, value in entry.items():
            if key == "epoch":
                continue
            v = num(value)
            if v is not None:
                row[EPOCH_KEYS.get(key, f"train/{key}")] = v
        self.log(row)

    def log_experience(self, task: int, row: Sequence[float]) -> None:
        """After training task ``task``: test accuracy on every task (``acc/task_<u>``, u
        0-based) and the average over the tasks trained so far (``acc/avg``), at
        ``trained_tasks = task + 1``."""
        if self._run is None:
            return
        accs = [float(a) for a in row]
        data: dict[str, Any] = {"trained_tasks": int(task) + 1, "task": int(task)}
        data.update({f"acc/task_{u}": a for u, a in enumerate(accs)})
        seen = accs[: int(task) + 1]
        if seen:
            data["acc/avg"] = sum(seen) / len(seen)
        self.log(data)

    def avalanche_loggers(self) -> list:
        """Loggers for the strategy's EvaluationPlugin (forward Avalanche metrics)."""
        return [WandbAvalancheLogger(self)]

    def finish(self, record: Mapping[str, Any], out: Path | None = None) -> None:
        """Log the results of the finished run (config, tables, summary, record artifact) and
        finish the W&B run. Never raises. Everything logged comes from ``record`` alone
        (``out``, the results folder, is not read)."""
        if self._finished:
            return
        self._finished = True
        if self._run is None:
            return
        cfg = self._compute("config", lambda: run_config(
            record["params"], record["scenario"], record["strategy"], record["seed"]))
        if cfg is not None:
            self._apply(lambda run: run.config.update(cfg, allow_val_change=True))
        tables = self._compute("tables", lambda: run_tables(record)) or {}
        heatmap = self._compute("heatmap", lambda: _heatmap(record))
        if tables or heatmap is not None:
            self._apply(lambda run: run.log(_media(tables, heatmap)))
        summary = self._compute("summary", lambda: run_summary(record))
        if summary:
            self._apply(lambda run: run.summary.update(summary))
        rec = dict(record)
        text = self._compute("record artifact", lambda: record_text(rec))
        if text is not None:
            self._apply(lambda run: _log_record_artifact(run, rec, text))
        self._close(0)

    def _compute(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, or None with a warning: a bug in a summary must not cost the W&B run."""
        try:
            return fn()
        except Exception as err:  # noqa: BLE001
            warn(f"W&B: could not compute the {what} of {run_name(self.exp)} "
                  f"({first_line(err)}); left out")
            return None

    def abort(self) -> None:
        """Finish the W&B run as failed (exit code 1). Never raises."""
        self._finished = True
        run, self._run = self._run, None
        self._ops.clear()
        if run is not None:
            wandb_log.finish_quietly(run, 1)

    def _close(self, exit_code: int) -> None:
        while self._run is not None:
            run = self._run
            try:
                wandb_log.finish_run(run, exit_code)
            except Exception as err:  # noqa: BLE001
                self._run = None
                self._session.degrade(err)
                self._open()  # replay into the next mode, then finish that
                continue
            self._run = None
        self._ops.clear()


def _define_metrics(run) -> None:
    run.define_metric("global_step")
    run.define_metric("trained_tasks")
    for prefix in ("train/*", "valid/*", "hat/*", "avalanche/*"):
        run.define_metric(prefix, step_metric="global_step")
    run.define_metric("acc/*", step_metric="trained_tasks")


# ------------------------------------------------------------------------------ finish
def _heatmap(record: Mapping[str, Any]) -> bytes:
    """The accuracy matrix as PNG bytes, drawn by the report's figure function."""
    from reports.figures import plot_acc_matrix  # lazy: matplotlib

    acc = np.asarray(record["accuracy"], dtype=float)
    title = f"{record['strategy']} on {record['scenario']}, seed {record['seed']}"
    with tempfile.TemporaryDirectory() as tmp:
        (path,) = plot_acc_matrix(acc, title, Path(tmp) / "accuracy_heatmap.png")
        return path.read_bytes()


def _media(tables: Tables, heatmap: bytes | None) -> dict[str, Any]:
    import wandb  # lazy: wandb
    from PIL import Image

    row: dict[str, Any] = {
        key: wandb.Table(columns=list(cols), data=[list(r) for r in data])
        for key, (cols, data) in tables.items()
    }
    if heatmap is not None:
        row["accuracy_heatmap"] = wandb.Image(Image.open(io.BytesIO(heatmap)),
                                              caption="test accuracy after each task")
    return row


def _log_record_artifact(run, record: Mapping[str, Any], text: str) -> None:
    """The run record's file ``text`` (what the runner writes: ``record_text``) as an artifact
    of type ``run-record``; the file is kept in the run's folder, so an offline run carries it
    until ``wandb sync``."""
    import wandb  # lazy: wandb

    fname = record_name(record["scenario"], record["strategy"], record["seed"],
                        record.get("tag", ""), protocol_of(record))

    folder = Path(run.dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / fname
    path.write_text(text, encoding="utf-8")
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", Path(fname).stem)
    art = wandb.Artifact(
        f"run-record-{stem}",
        type=ARTIFACT_TYPE,
        description="hat-bench run record (docs/record-schema.md)",
        metadata={k: record.get(k) for k in ("scenario", "strategy", "seed", "tag")},
    )
    art.add_file(str(path), name=fname, policy="immutable")
    run.log_artifact(art)


# ------------------------------------------------------------------------------ avalanche
class WandbAvalancheLogger(BaseLogger):
    """An Avalanche logger that forwards numeric metric values to the tracker's W&B run as
    ``avalanche/<metric name>`` (one history row per ``log_metrics`` call). Values that are
    not numbers (images, tensors, ...) are skipped. It never raises."""

    def __init__(self, tracker: RunTracker):
        super().__init__()
        self.tracker = tracker
        self._pending: dict[str, Any] | None = None

    def log_metrics(self, metric_values) -> None:
        self._pending = {}
        try:
            super().log_metrics(metric_values)
        except Exception:  # noqa: BLE001 - an odd metric value must not stop training
            pass
        finally:
            pending, self._pending = self._pending, None
        if pending:
            self.tracker.log(pending)

    def log_single_metric(self, name, value, x_plot) -> None:
        v = num(value)
        if v is None:
            return
        row = {f"avalanche/{name}": v}
        if self._pending is not None:
            self._pending.update(row)
        else:
            self.tracker.log(row)


# ------------------------------------------------------------------------------ factory
class TrackerFactory:
    """``Experiment -> RunTracker | None``; trackers of one factory share a session."""

    def __init__(self, mode: str, project: str, entity: str | None, out: Path | None,
                 shared: Any = None):
        self.session = Session(mode, project, entity, out, shared)

    @property
    def mode(self) -> str:
        """The current mode: online, offline, or disabled (after failures)."""
        return self.session.mode

    def __call__(self, exp, resume: Mapping[str, Any] | None = None) -> RunTracker | None:
        """The tracker of ``exp``; ``resume`` (``RunTracker.resume_state`` of its interrupted
        part, from the run's checkpoint) continues that W&B run."""
        self.session.sync()
        if self.session.mode == DISABLED:
            return None
        try:
            tracker = RunTracker(exp, self.session, resume=resume)
        except Exception as err:  # noqa: BLE001 - never in the way of the run
            self.session.degrade(err)
            return None
        return tracker if tracker.active else None


def tracker_factory(
    mode: str | None,
    *,
    project: str = "hat-bench",
    entity: str | None = None,
    out: Path | str | None = None,
    shared: Any = None,
) -> TrackerFactory | None:
    """The runner's tracker factory for W&B ``mode`` (None: auto), or None when disabled.
    ``shared``: the mode level shared by the worker processes of one command (``Session``)."""
    resolved = resolve_mode(mode)
    if resolved == DISABLED:
        return None
    return TrackerFactory(resolved, project, entity, Path(out) if out is not None else None,
                          shared)
