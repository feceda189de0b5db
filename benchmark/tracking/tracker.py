"""Experiment tracking with Weights & Biases: one W&B run per (scenario, strategy, seed).

``tracker_factory(mode, project=..., entity=..., out=...)`` returns the callable that
``benchmark.runner.run_all`` calls once per experiment to get a :class:`RunTracker` (or None when
tracking is disabled). The runner then calls ``log_epoch`` after every training epoch,
``log_experience`` after every evaluation, ``finish`` when the run has ended, before its record is
written (so a record exists only for a run whose W&B run is complete: an interrupted command
reruns, and tracks again, every run without a record), and ``abort`` when the run fails.

Tracking never gets in the way of training:

* mode None (auto) is ``online`` when an API key is configured (``WANDB_API_KEY``, an identity
  token file, or ``~/.netrc``; looked up locally, no network), otherwise ``offline``. A
  ``WANDB_MODE`` of offline/dryrun/disabled in the environment is honoured in auto mode.
* offline runs are written under ``<out>/wandb/``, or under ``$WANDB_DIR/wandb/`` when the user
  sets ``WANDB_DIR`` (online runs keep their local copy there too); upload them later with
  ``wandb sync <dir>/wandb/offline-run-*``. A run that wandb could not start leaves no folder.
* any W&B failure (no network, bad key, init timeout, an exception while logging) switches the
  session from online to offline with one warning; if offline fails too, the session goes on
  without tracking, with one more warning. The data logged so far in the failed run is replayed
  into its replacement, so an offline fallback run is complete.
* where runs are tracked in other processes (``--jobs``, ``--ray``) the command decides the mode
  once (:func:`decide_mode`: an online session's credentials and server are checked there) and
  passes it on; local workers also share later degradations (``shared``), so a failing W&B
  still costs one warning per step per command.
* wandb is quiet: no console capture (``console="off"``), silent settings, bounded init and
  finish times.
* a run is complete on disk when ``finish``/``abort`` return: ``run.finish()`` returns before
  wandb's service process has written the run's transaction log (``run-<id>.wandb``, buffered
  there until the run's stream closes), so the tracker then waits, for at most
  ``LOG_TIMEOUT_S``, until the log holds the run's exit record. ``wandb sync`` can follow at once.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import string
import struct
import time
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from avalanche.logging import BaseLogger

from .records import RecordError, read_record, record_name, record_path

__all__ = [
    "ARTIFACT_TYPE",
    "RECORD_KEY",
    "RunTracker",
    "TrackerFactory",
    "TrackingWarning",
    "WandbAvalancheLogger",
    "api_key_configured",
    "decide_mode",
    "one_line_warnings",
    "resolve_mode",
    "run_config",
    "tracker_factory",
]

#: W&B artifact type of the run record (``reports.wandb_source`` reads it back)
ARTIFACT_TYPE = "run-record"
#: summary key holding the run record as JSON (without its per-epoch ``history``)
RECORD_KEY = "run_record"
#: seconds ``wandb.init`` may take before it counts as a failure
INIT_TIMEOUT_S = {"online": 30.0, "offline": 30.0}
#: seconds ``run.finish`` may wait for uploads (the local copy can be synced later)
FINISH_TIMEOUT_S = 120.0
#: seconds wandb may wait at a login prompt
LOGIN_TIMEOUT_S = 20.0
#: seconds a finished run's transaction log may take to reach the disk
LOG_TIMEOUT_S = 30.0
#: a summary string longer than this makes wandb print warnings: such records stay artifacts
_MAX_SUMMARY_RECORD = 90_000

_ONLINE, _OFFLINE, _DISABLED = "online", "offline", "disabled"
#: the modes in the order a session degrades through them (a shared level indexes this)
_MODES = (_ONLINE, _OFFLINE, _DISABLED)
#: wandb's run folders: ``run-<time>-<id>`` (online), ``offline-run-<time>-<id>``
_RUN_FOLDERS = ("run-*-{id}", "offline-run-*-{id}")


class TrackingWarning(UserWarning):
    """W&B tracking degraded (online → offline → none); training goes on."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _warn(message: str) -> None:
    warnings.warn(message, TrackingWarning, stacklevel=3)


def one_line_warnings() -> None:
    """Show :class:`TrackingWarning` as one ``warning: ...`` line (not file, line and source);
    other warnings keep their format. For the command line and its workers."""
    if getattr(warnings.formatwarning, "_hat_bench", False):
        return
    default = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):
        if isinstance(category, type) and issubclass(category, TrackingWarning):
            return f"warning: {message}\n"
        return default(message, category, filename, lineno, line)

    formatwarning._hat_bench = True  # type: ignore[attr-defined]
    warnings.formatwarning = formatwarning


# ------------------------------------------------------------------------------ mode
def api_key_configured() -> bool:
    """True when W&B credentials are configured on this machine (no network access).

    Looks where wandb itself looks: ``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, then the
    netrc file (``NETRC`` or ``~/.netrc``) entry for the configured W&B host.
    """
    if os.environ.get("WANDB_API_KEY", "").strip():
        return True
    if os.environ.get("WANDB_IDENTITY_TOKEN_FILE", "").strip():
        return True
    base_url = _base_url()
    try:
        from wandb.sdk.lib import wbauth

        if base_url is None:
            import wandb

            base_url = wandb.Settings().base_url
        return bool(wbauth.read_netrc_auth(host=base_url))
    except Exception:  # noqa: BLE001 - unreadable netrc, malformed key, moved wandb internals
        return _plain_netrc_key(base_url)


def _base_url() -> str | None:
    """The W&B server: WANDB_BASE_URL, else ``base_url`` of the global settings file that
    ``wandb login --host`` writes (``$WANDB_CONFIG_DIR/settings``), else None (wandb's
    default)."""
    if os.environ.get("WANDB_BASE_URL", "").strip():
        return os.environ["WANDB_BASE_URL"].strip()
    import configparser

    folder = os.environ.get("WANDB_CONFIG_DIR") or os.path.join("~", ".config", "wandb")
    parser = configparser.ConfigParser()
    try:
        parser.read(os.path.join(os.path.expanduser(folder), "settings"))
        return parser.get("default", "base_url", fallback=None) or None
    except configparser.Error:
        return None


def _plain_netrc_key(base_url: str | None) -> bool:
    """Fallback netrc lookup (standard library only)."""
    import netrc

    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        auth = netrc.netrc(path)
    except (OSError, netrc.NetrcParseError):
        return False
    hosts = ["api.wandb.ai"]
    if base_url:
        hosts.insert(0, re.sub(r"^\w+://", "", base_url).split("/")[0])
    return any((auth.authenticators(h) or (None, None, None))[2] for h in hosts)


def resolve_mode(mode: str | None) -> str:
    """The W&B mode to use: ``mode`` itself, or for None: WANDB_MODE when it says offline or
    disabled, else ``online`` when :func:`api_key_configured`, else ``offline``."""
    if mode is not None:
        if mode not in (_ONLINE, _OFFLINE, _DISABLED):
            raise ValueError(f"unknown W&B mode {mode!r}: use online, offline or disabled")
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("offline", "dryrun"):
        return _OFFLINE
    if env == "disabled":
        return _DISABLED
    return _ONLINE if api_key_configured() else _OFFLINE


# ------------------------------------------------------------------------------ session
class _Session:
    """What the trackers of one factory share: the current mode and the warnings given.

    The mode only ever degrades (online → offline → disabled), one warning per step, so a
    failing W&B costs at most two warnings per command, however many runs follow. ``shared``
    (a ``multiprocessing.Value("i")`` holding an index into ``_MODES``) extends that to the
    worker processes of one command: a step one of them takes is taken by all, and only the
    first to take it warns.
    """

    def __init__(self, mode: str, project: str, entity: str | None, out: Path | None,
                 shared: Any = None):
        self.mode = mode
        self.project = project
        self.entity = entity
        self.out = Path(out) if out is not None else None
        self.shared = shared
        self._wandb = None
        self.sync()
        if self.mode == _ONLINE and not api_key_configured():
            self._step_down("W&B online mode needs an API key (`wandb login` or "
                            f"WANDB_API_KEY); tracking offline instead{self._sync_hint()}")

    @property
    def root(self) -> Path | None:
        """The folder holding wandb's ``wandb/`` folder: ``WANDB_DIR`` when the user set it,
        else the results folder (None: wandb's default, the working directory)."""
        env = os.environ.get("WANDB_DIR", "").strip()
        return Path(env).expanduser() if env else self.out

    def _sync_hint(self) -> str:
        where = (self.root / "wandb") if self.root is not None else Path("wandb")
        return f" (upload later with `wandb sync {where}/offline-run-*`)"

    def sync(self) -> None:
        """Take the steps down another process of the command took (it gave the warnings)."""
        if self.shared is not None:
            level = min(int(self.shared.value), len(_MODES) - 1)
            if level > _MODES.index(self.mode):
                self.mode = _MODES[level]

    def _step_down(self, message: str) -> None:
        """One mode down, with ``message`` as its warning unless another process of the
        command took that step first."""
        level, first = _MODES.index(self.mode) + 1, True
        if self.shared is not None:
            with self.shared.get_lock():
                first = self.shared.value < level
                level = max(level, int(self.shared.value))
                self.shared.value = level
        self.mode = _MODES[min(level, len(_MODES) - 1)]
        if first:
            _warn(message)

    def degrade(self, err: BaseException) -> None:
        """One step down after a W&B failure, with its one warning."""
        if self.mode == _ONLINE:
            self._step_down(f"W&B online tracking failed ({_first_line(err)}); "
                            f"tracking offline instead{self._sync_hint()}")
        elif self.mode == _OFFLINE:
            self._step_down(f"W&B tracking failed ({_first_line(err)}); continuing without "
                            "tracking (run records are still written)")

    def verify_online(self) -> None:
        """Raise unless W&B's server accepts this machine's API key (``wandb.login`` with
        verification: bounded by wandb's HTTP timeout, creates no run)."""
        if not self.wandb().login(verify=True, timeout=LOGIN_TIMEOUT_S):
            raise RuntimeError("wandb login was not accepted")

    def wandb(self):
        """The wandb module, set up quietly on first use."""
        if self._wandb is None:
            import wandb

            # login_timeout: a login prompt (credentials wandb does not accept) gives up;
            # mode: the session's, not WANDB_MODE's (wandb.login verifies nothing offline)
            wandb.setup(settings=wandb.Settings(mode=self.mode, silent=True, quiet=True,
                                                show_info=False, show_warnings=False,
                                                show_errors=False,
                                                login_timeout=LOGIN_TIMEOUT_S))
            self._wandb = wandb
        return self._wandb

    def init_run(self, kwargs: Mapping[str, Any]):
        wandb = self.wandb()
        settings = wandb.Settings(
            console="off",  # the run's stdout/stderr stay the user's
            silent=True,
            quiet=True,
            show_info=False,
            show_warnings=False,
            show_errors=False,
            init_timeout=INIT_TIMEOUT_S[self.mode],
            finish_timeout=FINISH_TIMEOUT_S,
        )
        root = self.root
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
        # our own id: the folder of a run that fails to start is known, and removed (a
        # resumed run brings its id: the folders its earlier part left are kept)
        run_id = kwargs.get("id") or "".join(
            secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        earlier = _run_folders(root, run_id) if kwargs.get("id") else set()
        try:
            run = wandb.init(
                mode=self.mode,
                project=self.project,
                entity=self.entity,
                dir=str(root) if root is not None else None,
                id=run_id,
                reinit="finish_previous",  # never two runs at once
                settings=settings,
                **{k: v for k, v in kwargs.items() if k != "id"},
            )
            if getattr(run, "disabled", False) or (self.mode == _ONLINE and run.offline):
                _finish_quietly(run, 1)
                raise RuntimeError(f"wandb did not start an {self.mode} run (login failed?)")
        except BaseException:
            _remove_run_folders(root, run_id, keep=earlier)
            raise
        return run


def _run_folders(root: Path | None, run_id: str) -> set[Path]:
    """The folders wandb has for the run ``run_id`` now."""
    base = Path(root) if root is not None else Path.cwd()
    return {p for where in (base / "wandb", base / ".wandb") for pattern in _RUN_FOLDERS
            for p in where.glob(pattern.format(id=run_id))}


def _remove_run_folders(root: Path | None, run_id: str,
                        keep: set[Path] | frozenset[Path] = frozenset()) -> None:
    """Remove the folders wandb made for the run ``run_id`` that did not start (and the
    ``latest-run``/``debug*.log`` links left pointing into them). Never raises."""
    base = Path(root) if root is not None else Path.cwd()
    for where in (base / "wandb", base / ".wandb"):
        try:
            folders = [p for pattern in _RUN_FOLDERS for p in where.glob(pattern.format(id=run_id))
                       if p not in keep]
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)
            if folders:
                for link in ("latest-run", "debug.log", "debug-internal.log"):
                    path = where / link
                    if path.is_symlink() and not path.exists():
                        path.unlink(missing_ok=True)
        except OSError:
            pass


def _finish_quietly(run, exit_code: int) -> None:
    try:
        _finish_run(run, exit_code)
    except Exception:  # noqa: BLE001 - the run is being discarded anyway
        pass


def _finish_run(run, exit_code: int) -> None:
    """``run.finish(exit_code)``, then wait until the run's transaction log is complete on disk.

    ``run.finish()`` only tells wandb's service process that the run is over; the service writes
    the transaction log (kept in memory in 32 KiB blocks) when it closes the run's stream, after
    ``finish()`` has returned. Raises what ``run.finish`` raises; the wait itself never raises
    (a log still incomplete after ``LOG_TIMEOUT_S`` costs a warning)."""
    log = _transaction_log(run)
    run.finish(exit_code=exit_code)
    if log is not None and not _wait_for_log(log, LOG_TIMEOUT_S):
        _warn(f"W&B: the local log {log} of run {getattr(run, 'id', '?')} was not complete "
              f"{LOG_TIMEOUT_S:g} s after the run finished; `wandb sync` may miss its end")


def _transaction_log(run) -> Path | None:
    """The run's ``run-<id>.wandb`` file, or None when it has none (disabled runs)."""
    try:
        if getattr(run, "disabled", False):
            return None
        path = Path(run.settings.sync_file)
    except Exception:  # noqa: BLE001 - moved wandb internals: nothing to wait for
        return None
    return path if path.is_file() else None


def _pause(seconds: float) -> None:
    time.sleep(seconds)


def _wait_for_log(path: Path, timeout: float) -> bool:
    """Wait (at most ``timeout`` seconds) until the transaction log at ``path`` holds an exit
    record; True when it does."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            if _log_has_exit(path.read_bytes()):
                return True
        except Exception:  # noqa: BLE001 - unreadable or not yet parseable: wait on
            pass
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        _pause(min(delay, left))
        delay = min(2 * delay, 0.05)


#: the transaction log: a 7-byte header (``:W&B``, magic, version), then LevelDB-log blocks
_LOG_IDENT, _LOG_HEADER, _LOG_BLOCK, _CHUNK_HEADER = b":W&B", 7, 32768, 7


def _log_has_exit(data: bytes) -> bool:
    """True when the complete, intact records of a transaction log include an exit record.

    Reads LevelDB-log chunks (crc32 of type and data, length, type: full, first, middle, last)
    in 32 KiB blocks; stops at the first chunk that is cut short or fails its checksum."""
    from wandb.proto import wandb_internal_pb2

    if data[: len(_LOG_IDENT)] != _LOG_IDENT:
        return False
    pos, parts = _LOG_HEADER, []
    while pos + _CHUNK_HEADER <= len(data):
        room = _LOG_BLOCK - pos % _LOG_BLOCK
        if room < _CHUNK_HEADER:  # block trailer
            pos += room
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        if kind == 0 and length == 0:  # zero padding up to the next block
            pos += room
            continue
        end = pos + _CHUNK_HEADER + length
        if end > len(data) or length > room - _CHUNK_HEADER:
            return False
        chunk = data[pos + _CHUNK_HEADER : end]
        if zlib.crc32(bytes([kind]) + chunk) != crc:
            return False
        pos = end
        if kind in (1, 2):  # full, first
            parts = [chunk]
        elif kind in (3, 4) and parts:  # middle, last
            parts.append(chunk)
        else:
            return False
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            if record.WhichOneof("record_type") == "exit":
                return True
    return False


# ------------------------------------------------------------------------------ values
def _num(value: Any) -> float | int | None:
    """A plain JSON number (None for NaN/inf or non-numbers)."""
    if isinstance(value, bool):
        return int(value)
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()  # numpy / torch scalars
        except (TypeError, ValueError):
            return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None


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
    """``<strategy>-<scenario>-s<seed>[-<tag>]``."""
    name = f"{exp.strategy}-{exp.scenario}-s{exp.seed}"
    return f"{name}-{exp.tag}" if exp.tag else name


def run_config(params: Mapping[str, Any], scenario: str, strategy: str, seed: int) -> dict:
    """The W&B run config: the record's ``params`` plus scenario, strategy and seed."""
    return {**params, "scenario": scenario, "strategy": strategy, "seed": seed}


def _early_params(exp) -> dict | None:
    """The record's ``params`` before training (the same resolution as the runner's)."""
    try:
        from .runner import record_params, resolve
        from .scenarios import get_scenario

        spec = get_scenario(exp.scenario)
        cfg = resolve(exp, spec.valid_fraction, spec.embedded, spec.network)
        return record_params(exp, cfg)
    except Exception:  # noqa: BLE001 - the config is completed at finish anyway
        return None


# ------------------------------------------------------------------------------ tracker
class RunTracker:
    """The W&B run of one experiment. No method raises; a W&B failure degrades the session.

    Every W&B operation is kept (as a function of the run) until the run finishes, so a run
    that fails midway is replayed into its offline replacement.
    """

    def __init__(self, exp, session: _Session, resume: Mapping[str, Any] | None = None):
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
            tags=[exp.scenario, exp.strategy, f"seed{exp.seed}"],
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
            if self._session.mode not in (_ONLINE, _OFFLINE):
                break
            run = None
            try:
                run = self._session.init_run(self._init_kwargs)
                for op in self._ops:
                    op(run)
            except Exception as err:  # noqa: BLE001 - any W&B failure: next mode down
                if run is not None:
                    _finish_quietly(run, 1)
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
            _finish_quietly(broken, 1)
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
        row: dict[str, Any] = {"task": int(task), "epoch": _num(entry.get("epoch"))}
        for key, value in entry.items():
            if key == "epoch":
                continue
            v = _num(value)
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

    def finish(self, record: Mapping[str, Any], out: Path) -> None:
        """Log the results of the finished run (config, tables, summary, record artifact) and
        finish the W&B run. Never raises."""
        if self._finished:
            return
        self._finished = True
        if self._run is None:
            return
        out = Path(out)
        cfg = self._compute("config", lambda: run_config(
            record["params"], record["scenario"], record["strategy"], record["seed"]))
        if cfg is not None:
            self._apply(lambda run: run.config.update(cfg, allow_val_change=True))
        tables = self._compute("tables", lambda: _tables(record)) or {}
        heatmap = self._compute("heatmap", lambda: _heatmap(record))
        if tables or heatmap is not None:
            self._apply(lambda run: run.log(_media(tables, heatmap)))
        summary = self._compute("summary", lambda: _summary(record, out))
        if summary:
            self._apply(lambda run: run.summary.update(summary))
        rec = dict(record)
        self._apply(lambda run: _log_record_artifact(run, rec))
        self._close(0)

    def _compute(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, or None with a warning: a bug in a summary must not cost the W&B run."""
        try:
            return fn()
        except Exception as err:  # noqa: BLE001
            _warn(f"W&B: could not compute the {what} of {run_name(self.exp)} "
                  f"({_first_line(err)}); left out")
            return None

    def abort(self) -> None:
        """Finish the W&B run as failed (exit code 1). Never raises."""
        self._finished = True
        run, self._run = self._run, None
        self._ops.clear()
        if run is not None:
            _finish_quietly(run, 1)

    def _close(self, exit_code: int) -> None:
        while self._run is not None:
            run = self._run
            try:
                _finish_run(run, exit_code)
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
def _summary(record: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """Summary values of a finished run, computed from its record (no W&B calls).

    Besides accuracy, BWT and forgetting: ``agnostic_final_accuracy`` (mean of the last row
    of ``agnostic_accuracy``; absent when the strategy has no task-agnostic prediction),
    ``seconds_per_task`` (mean of ``seconds``), ``peak_memory_mb`` and ``state_mb`` (max over
    tasks),
    ``memory_samples`` (most samples the rehearsal memory held; absent without one), and the
    metrics that need a reference record of the same scenario and seed (untagged) already
    under ``<out>/runs/``: the forgetting ratio and ``intransigence`` (``joint``),
    ``forward_transfer`` (``single``). A run that finishes before its references gets these
    only from the report (``python -m reports``), which reads every record at once.
    """
    import numpy as np

    from reports.metrics import (
        agnostic_final_accuracy,
        bwt,
        final_average_accuracy,
        forgetting,
        forward_transfer,
        intransigence,
        mean_forgetting_ratio,
        validation_criterion,
    )

    acc = np.asarray(record["accuracy"], dtype=float)
    summary: dict[str, Any] = {
        "final_average_accuracy": _num(final_average_accuracy(acc)),
        "bwt": _num(bwt(acc)),
        "forgetting": _num(forgetting(acc)),
        "tag": record.get("tag", ""),
        "train_seconds": _num(float(sum(record.get("seconds", [])))),
        "epochs_total": int(sum(record.get("epochs", []))),
        # where the hyperparameters came from (README "Hyperparameter selection")
        "selected_on_validation": record.get("selection") is not None,
    }
    if record.get("selection") is not None:
        summary["selection_preset"] = str(record["selection"].get("preset", ""))
    if record.get("valid_accuracy") is not None:
        summary["valid_criterion"] = _num(validation_criterion(record["valid_accuracy"]))
    summary.update(_cost_summary(record))
    if record.get("agnostic_accuracy") is not None:
        summary["agnostic_final_accuracy"] = _num(
            agnostic_final_accuracy(record["agnostic_accuracy"]))
    joint = _reference_accuracy(record, out, "joint")
    if joint is not None:
        rho = mean_forgetting_ratio(acc, joint, record["random_accuracy"])
        for t, value in enumerate(rho):
            summary[f"forgetting_ratio/after_{t + 1}"] = _num(float(value))
        summary["forgetting_ratio"] = _num(float(rho[-1]))
        summary["intransigence"] = _num(intransigence(acc, joint))
    single = _reference_accuracy(record, out, "single")
    if single is not None:
        summary["forward_transfer"] = _num(forward_transfer(acc, single))
    if record.get("hat"):
        summary.update(_hat_summary(record["hat"]))
    public = {k: v for k, v in record.items() if k != "history"}
    try:
        text = json.dumps(public, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN somewhere: the artifact still has the record
        text = None
    if text is not None and len(text) <= _MAX_SUMMARY_RECORD:
        summary[RECORD_KEY] = text
    return summary


def _tables(record: Mapping[str, Any]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """Table name → (columns, rows): the accuracy matrix and, for HAT, the mask usage."""
    names = [str(n) for n in record["task_names"]]
    acc = record["accuracy"]
    tables = {
        "accuracy_matrix": (["after_task", *names],
                            [[names[t], *(float(a) for a in acc[t])] for t in range(len(acc))]),
    }
    if record.get("hat"):
        tables.update(_hat_tables(record["hat"], names))
    return tables


def _cost_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """``seconds_per_task``, and the max over tasks of ``peak_memory_mb``, ``state_mb`` and
    ``memory_samples``, each when the record has it (older records lack the last three;
    entries that are null, e.g. a diverged run's, are skipped)."""
    out: dict[str, Any] = {}
    for key, name, reduce in (("seconds", "seconds_per_task", lambda v: sum(v) / len(v)),
                              ("peak_memory_mb", "peak_memory_mb", max),
                              ("state_mb", "state_mb", max),
                              ("memory_samples", "memory_samples", max)):
        values = [v for v in (_num(x) for x in record.get(key) or []) if v is not None]
        if values:
            out[name] = _num(reduce(values))
    return out


def _reference_accuracy(record: Mapping[str, Any], out: Path, reference: str):
    """The accuracy matrix of the untagged ``reference`` run (``joint`` or ``single``) of the
    same scenario and seed under ``<out>/runs/``, or None (none yet, unreadable, other
    tasks, or ``record`` is that reference)."""
    if record["strategy"] == reference:
        return None
    path = record_path(out, record["scenario"], reference, record["seed"], "")
    if not path.exists():
        return None
    try:
        ref = read_record(path)
    except RecordError:
        return None
    if ref["task_names"] != list(record["task_names"]) or ref.get("diverged"):
        return None
    return ref["accuracy"]


def _hat_tables(hat: Mapping[str, Any], names: list[str]) -> dict:
    layers, tasks = list(hat["layers"]), list(hat["tasks"])
    units = list(hat.get("units") or [None] * len(layers))

    def task_name(k):
        return names[k] if isinstance(k, int) and 0 <= k < len(names) else str(k)

    usage = []
    for li, layer in enumerate(layers):
        for ki, k in enumerate(tasks):
            usage.append([str(layer), units[li], k, task_name(k),
                          *(_cell(hat, key, li, ki) for key in ("used", "overlap", "cumulative"))])
    compression = [[k, task_name(k), _at(hat.get("weights_kept"), ki),
                    _at(hat.get("units_kept"), ki)] for ki, k in enumerate(tasks)]
    return {
        "hat_mask_usage": (["layer", "units", "task", "task_name", "used", "overlap",
                            "cumulative"], usage),
        "hat_compression": (["task", "task_name", "weights_kept", "units_kept"], compression),
    }


def _at(values, i):
    return _num(values[i]) if values is not None and i < len(values) else None


def _cell(hat, key, li, ki):
    rows = hat.get(key)
    return _at(rows[li], ki) if rows is not None and li < len(rows) else None


def _hat_summary(hat: Mapping[str, Any]) -> dict[str, Any]:
    """Per layer: units used by all tasks together, mean units per task, mean reuse of earlier
    tasks' units; overall: weights and units the last task keeps."""
    out: dict[str, Any] = {}
    for li, layer in enumerate(hat["layers"]):
        used = [v for v in (hat.get("used") or [[]] * (li + 1))[li] if _num(v) is not None]
        overlap = [v for v in (hat.get("overlap") or [[]] * (li + 1))[li][1:]
                   if _num(v) is not None]
        cumulative = (hat.get("cumulative") or [[]] * (li + 1))[li]
        if cumulative:
            out[f"hat/cumulative/{layer}"] = _num(cumulative[-1])
        if used:
            out[f"hat/used_mean/{layer}"] = _num(sum(used) / len(used))
        if overlap:
            out[f"hat/overlap_mean/{layer}"] = _num(sum(overlap) / len(overlap))
    for key in ("weights_kept", "units_kept"):
        values = hat.get(key)
        if values:
            out[f"hat/{key}"] = _num(values[-1])
    return out


def _heatmap(record: Mapping[str, Any]):
    """The accuracy matrix as an RGB image array (matplotlib Agg canvas, no pyplot state)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    acc = np.asarray(record["accuracy"], dtype=float)
    names = [str(n) for n in record["task_names"]]
    n = len(names)
    size = 2.5 + 0.6 * n
    fig = Figure(figsize=(size + 1.0, size), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(acc, vmin=0.0, vmax=1.0, cmap="viridis")
    fig.colorbar(im, ax=ax, label="test accuracy")
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("task evaluated")
    ax.set_ylabel("after training task")
    if n <= 12:
        for t in range(n):
            for u in range(n):
                ax.text(u, t, f"{acc[t, u]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if acc[t, u] < 0.6 else "black")
    ax.set_title(f"{record['strategy']} on {record['scenario']}, seed {record['seed']}",
                 fontsize=10)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _media(tables: Mapping[str, tuple[list[str], list[list[Any]]]], heatmap) -> dict[str, Any]:
    import wandb

    row: dict[str, Any] = {
        key: wandb.Table(columns=list(cols), data=[list(r) for r in data])
        for key, (cols, data) in tables.items()
    }
    if heatmap is not None:
        row["accuracy_heatmap"] = wandb.Image(heatmap, caption="test accuracy after each task")
    return row


def _log_record_artifact(run, record: Mapping[str, Any]) -> None:
    """The run record JSON as an artifact of type ``run-record``; the file is kept in the
    run's folder, so an offline run carries it until ``wandb sync``."""
    import wandb

    fname = record_name(record["scenario"], record["strategy"], record["seed"],
                        record.get("tag", ""))

    folder = Path(run.dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / fname
    path.write_text(json.dumps(record, indent=1))
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
        v = _num(value)
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
        self.session = _Session(mode, project, entity, out, shared)

    @property
    def mode(self) -> str:
        """The current mode: online, offline, or disabled (after failures)."""
        return self.session.mode

    def __call__(self, exp, resume: Mapping[str, Any] | None = None) -> RunTracker | None:
        """The tracker of ``exp``; ``resume`` (``RunTracker.resume_state`` of its interrupted
        part, from the run's checkpoint) continues that W&B run."""
        self.session.sync()
        if self.session.mode == _DISABLED:
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
    ``shared``: the mode level shared by the worker processes of one command (``_Session``)."""
    resolved = resolve_mode(mode)
    if resolved == _DISABLED:
        return None
    return TrackerFactory(resolved, project, entity, Path(out) if out is not None else None,
                          shared)


def decide_mode(
    mode: str | None,
    *,
    project: str = "hat-bench",
    entity: str | None = None,
    out: Path | str | None = None,
) -> str:
    """The W&B mode (online, offline or disabled) of a command whose runs are tracked in
    other processes (``--jobs``, ``--ray``), decided once, here, and passed to them: so a W&B
    that fails costs one wait and one warning per command, not one per worker.

    :func:`resolve_mode`; then online only with an API key that W&B's server accepts now
    (:meth:`_Session.verify_online`), else offline with the session's one warning."""
    resolved = resolve_mode(mode)
    if resolved == _DISABLED:
        return resolved
    session = _Session(resolved, project, entity, Path(out) if out is not None else None)
    if session.mode == _ONLINE:
        try:
            session.verify_online()
        except Exception as err:  # noqa: BLE001 - any failure: offline, with one warning
            session.degrade(err)
    return session.mode
