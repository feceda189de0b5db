"""What wandb leaves on disk: a run's folders and its transaction log.

``run.finish()`` returns before wandb's service process has written the run's transaction log
(``run-<id>.wandb``, buffered there until the run's stream closes), so :func:`finish_run` then
waits, for at most ``LOG_TIMEOUT_S``, until the log holds the run's exit record: ``wandb sync``
can follow at once. A run that wandb could not start leaves no folder
(:func:`remove_run_folders`).
"""

from __future__ import annotations

import shutil
import struct
import time
import zlib
from pathlib import Path

from .mode import warn

__all__ = [
    "LOG_TIMEOUT_S",
    "finish_quietly",
    "finish_run",
    "log_has_exit",
    "remove_run_folders",
    "run_folders",
    "wait_for_log",
]

#: seconds a finished run's transaction log may take to reach the disk
LOG_TIMEOUT_S = 30.0
#: wandb's run folders: ``run-<time>-<id>`` (online), ``offline-run-<time>-<id>``
_RUN_FOLDERS = ("run-*-{id}", "offline-run-*-{id}")


def run_folders(root: Path | None, run_id: str) -> set[Path]:
    """The folders wandb has for the run ``run_id`` now."""
    base = Path(root) if root is not None else Path.cwd()
    return {p for where in (base / "wandb", base / ".wandb") for pattern in _RUN_FOLDERS
            for p in where.glob(pattern.format(id=run_id))}


def remove_run_folders(root: Path | None, run_id: str,
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


def finish_quietly(run, exit_code: int) -> None:
    """:func:`finish_run`, ignoring any failure (the run is being discarded anyway)."""
    try:
        finish_run(run, exit_code)
    except Exception:  # noqa: BLE001 - the run is being discarded anyway
        pass


def finish_run(run, exit_code: int) -> None:
    """``run.finish(exit_code)``, then wait until the run's transaction log is complete on disk.

    ``run.finish()`` only tells wandb's service process that the run is over; the service writes
    the transaction log (kept in memory in 32 KiB blocks) when it closes the run's stream, after
    ``finish()`` has returned. Raises what ``run.finish`` raises; the wait itself never raises
    (a log still incomplete after ``LOG_TIMEOUT_S`` costs a warning)."""
    log = _transaction_log(run)
    run.finish(exit_code=exit_code)
    if log is not None and not wait_for_log(log, LOG_TIMEOUT_S):
        warn(f"W&B: the local log {log} of run {getattr(run, 'id', '?')} was not complete "
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


def wait_for_log(path: Path, timeout: float) -> bool:
    """Wait (at most ``timeout`` seconds) until the transaction log at ``path`` holds an exit
    record; True when it does."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            if log_has_exit(path.read_bytes()):
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


def log_has_exit(data: bytes) -> bool:
    """True when the complete, intact records of a transaction log include an exit record.

    Reads LevelDB-log chunks (crc32 of type and data, length, type: full, first, middle, last)
    in 32 KiB blocks; stops at the first chunk that is cut short or fails its checksum."""
    # lazy: wandb costs seconds of start-up
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
