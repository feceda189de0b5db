"""Where a run's checkpoints live, their settings, atomic writes, and the runner's facade
(``RunCheckpoints``, ``resume``); the test fault injector (``after_save``)."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from reports.io import WriteError, atomic_path
from strategies.training.tensor_data import materialize

from ..errors import BenchmarkError
from ..experiment import run_settings
from ..records import is_complete, record_name, record_path
from .rng import rng_state, set_rng_state
from .state import CheckpointError, restore

#: checkpoint layout version (a checkpoint of another version is refused like other settings)
FORMAT = 1
#: the folder under ``--out`` holding one folder of checkpoints per unfinished run
FOLDER = "checkpoints"
#: fault injection for tests: SIGKILL this process right after the checkpoint of this task
KILL_ENV = "HATBENCH_KILL_AFTER_TASK"
_NAME = re.compile(r"^task-(\d+)\.pt$")


# ------------------------------------------------------------------------------ paths
def run_folder(out: Path, exp) -> Path:
    """``<out>/checkpoints/<record name without .json>/``: the checkpoints of ``exp``."""
    name = record_name(exp.scenario, exp.strategy, exp.seed, exp.tag, exp.protocol)
    return Path(out) / FOLDER / name[: -len(".json")]


def checkpoint_path(folder: Path, tasks_done: int) -> Path:
    return Path(folder) / f"task-{int(tasks_done):03d}.pt"


def latest(folder: Path) -> Path | None:
    """The checkpoint of ``folder`` with the most tasks trained (None: none)."""
    best: tuple[int, Path] | None = None
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return None
    for p in entries:
        m = _NAME.match(p.name)
        if m and p.is_file() and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), p)
    return None if best is None else best[1]


def remove(folder: Path) -> None:
    """Delete the run's checkpoint folder, and ``checkpoints/`` when it is left empty."""
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()  # only when empty (another run may still have its own)
    except OSError:
        pass


def discard(experiments: Iterable, out: Path,
            log: Callable[[str], None] | None = None) -> list[Path]:
    """``--restart``: delete the checkpoints of these runs (only theirs), each under its run's
    lock, and not those of a run another command is training (one line to ``log`` each); the
    folders deleted."""
    from ..run.locks import RunBusy, run_lock  # (the run package imports this one)

    gone = []
    for exp in experiments:
        folder = run_folder(out, exp)
        if not folder.exists():
            continue
        record = record_path(out, exp.scenario, exp.strategy, exp.seed, exp.tag, exp.protocol)
        try:
            with run_lock(record):
                remove(folder)
                gone.append(folder)
        except RunBusy as busy:
            (log or print)(f"--restart keeps the checkpoints of {folder.name}: another "
                           f"command ({busy.holder}) is training it")
    return gone


# ------------------------------------------------------------------------------ settings
def fingerprint(exp, device: str | torch.device, threads: int,
                settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings a checkpoint is only valid for (JSON values): the run's
    ``run_settings`` (given, or resolved from the scenario's defaults) and the checkpoint
    format. A resumed run with other settings would not be the run its record describes."""
    if settings is None:
        settings = run_settings(exp, device, threads)
    return {"format": FORMAT, **settings}


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def difference(have: Mapping[str, Any], want: Mapping[str, Any]) -> tuple[str, Any, Any] | None:
    """The first key (dotted, sorted) whose value differs: (key, checkpoint's, command's)."""
    a, b = _flat(have), _flat(want)
    for key in sorted(set(a) | set(b)):
        if a.get(key, "(missing)") != b.get(key, "(missing)"):
            return key, a.get(key, "(missing)"), b.get(key, "(missing)")
    return None


#: what ends a checkpoint file: this tag, then the SHA-256 (hex) of every byte before it
DIGEST_TAG = b"\nhat-bench-sha256:"
_DIGEST_LEN = 64


def seal(payload: bytes) -> bytes:
    """``payload`` followed by its digest (what ``write`` puts in a checkpoint file)."""
    return payload + DIGEST_TAG + hashlib.sha256(payload).hexdigest().encode()


def unseal(data: bytes, path: Path) -> bytes:
    """The payload of a sealed checkpoint's bytes ``data``, its digest verified; otherwise
    CheckpointError naming ``path`` (damaged, truncated, or written without a digest)."""
    cut = len(data) - _DIGEST_LEN - len(DIGEST_TAG)
    if cut < 0 or data[cut:cut + len(DIGEST_TAG)] != DIGEST_TAG:
        raise CheckpointError(f"{path} has no checkpoint digest (truncated, not a hat-bench "
                              "checkpoint, or written by an older version)")
    payload, digest = data[:cut], data[cut + len(DIGEST_TAG):]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CheckpointError(f"{path} is damaged (its content does not match its digest)")
    return payload


def read(path: Path) -> dict[str, Any]:
    """A checkpoint's contents (plugin state still pickled), its digest verified first."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read ({err.strerror or err})") from None
    payload = unseal(data, path)
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file: reported with its path
        raise CheckpointError(f"{path} is not a readable checkpoint ({err})") from None
    if not isinstance(state, dict) or "fingerprint" not in state:
        raise CheckpointError(f"{path} is not a hat-bench checkpoint")
    return state


def check_command(experiments: Sequence, out: Path, device: str, threads: int,
                  settings: Sequence[Mapping[str, Any]] | None = None) -> None:
    """Refuse (BenchmarkError, one line, before anything runs) a checkpoint of a run this
    command would resume whose settings differ from the command's; runs with a complete
    record are not resumed and not checked. ``settings``: each experiment's
    ``run_settings`` (resolved here when None)."""
    for i, exp in enumerate(experiments):
        if is_complete(record_path(out, exp.scenario, exp.strategy, exp.seed, exp.tag,
                                   exp.protocol)):
            continue
        path = latest(run_folder(out, exp))
        if path is None:
            continue
        try:
            have = read(path)["fingerprint"]
        except CheckpointError as err:
            raise BenchmarkError(f"{err}; use --restart to discard it") from None
        diff = difference(have, fingerprint(exp, device, threads,
                                            None if settings is None else settings[i]))
        if diff is not None:
            key, old, new = diff
            raise BenchmarkError(
                f"{path} is a checkpoint of a run with {key}={old}, this command runs "
                f"{key}={new}; use --restart to discard it")


# ------------------------------------------------------------------------------ writing
def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write(folder: Path, tasks_done: int, state: Mapping[str, Any]) -> Path:
    """Write ``state`` atomically as the checkpoint after ``tasks_done`` tasks; then delete
    the older checkpoints and temporary files a killed write left."""
    folder = Path(folder)
    path = checkpoint_path(folder, tasks_done)
    buf = io.BytesIO()  # (serialised before the folder exists: no empty folder if killed)
    torch.save(dict(state), buf)
    for attempt in range(3):  # another run may remove the empty parent meanwhile (--jobs)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            break
        except FileNotFoundError as err:
            if attempt == 2:
                raise WriteError(path, err) from err
        except OSError as err:  # a file where the folder must be, no permission, ...
            raise WriteError(path, err) from err
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(seal(buf.getvalue()))
        f.flush()
        os.fsync(f.fileno())
    _fsync_folder(folder)
    for p in folder.iterdir():
        if p != path and (_NAME.match(p.name) or p.name.startswith(".task-")):
            p.unlink(missing_ok=True)
    return path


def after_save(tasks_done: int) -> None:
    """Fault injection for tests: with ``HATBENCH_KILL_AFTER_TASK=k``, SIGKILL this process
    right after the checkpoint after task ``k`` (1-based) is in place."""
    want = os.environ.get(KILL_ENV, "").strip()
    if want and want.isdigit() and int(want) == int(tasks_done):
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------ the runner's
class RunCheckpoints:
    """The checkpoints of one run, as the runner uses them.

    ``extra``: called at every save; what it returns is stored with the checkpoint (the W&B
    tracker's run id and step), and read back by :func:`saved_extra` before the run resumes.
    """

    def __init__(self, folder: Path, fingerprint: Mapping[str, Any], name: str = "",
                 log: Callable[[str], None] | None = None,
                 extra: Callable[[], Mapping[str, Any] | None] | None = None):
        self.folder = Path(folder)
        self.fingerprint = dict(fingerprint)
        self.name = name or self.folder.name
        self.log = log or (lambda msg: None)
        self.extra = extra

    @classmethod
    def for_run(cls, out: Path, exp, device: str | torch.device, cfg: Any = None,
                **kw) -> RunCheckpoints:
        """The checkpoints of ``exp`` under ``out``, for this process's settings
        (``run_settings`` of ``cfg``, the run's resolved config; resolved from the
        scenario's defaults when None)."""
        threads = torch.get_num_threads()
        return cls(run_folder(out, exp),
                   fingerprint(exp, device, threads, run_settings(exp, device, threads, cfg)),
                   name=record_name(exp.scenario, exp.strategy, exp.seed, exp.tag,
                                    exp.protocol), **kw)

    def announce(self, done: int, n_tasks: int) -> None:
        """The one line of a resumed run."""
        if done < n_tasks:
            self.log(f"resume {self.name} from task {done + 1}/{n_tasks}")
        else:
            self.log(f"resume {self.name}: all {n_tasks} tasks trained, writing its record")

    def load(self) -> dict[str, Any] | None:
        """The last checkpoint, or None; CheckpointError when it is of other settings (the
        command line refuses that earlier, with the same message)."""
        path = latest(self.folder)
        if path is None:
            return None
        state = read(path)
        diff = difference(state["fingerprint"], self.fingerprint)
        if diff is not None:
            key, old, new = diff
            raise CheckpointError(f"{path} is a checkpoint of a run with {key}={old}, this "
                                  f"run has {key}={new}; use --restart to discard it")
        return state

    def save(self, tasks_done: int, n_tasks: int, progress: Mapping[str, Any],
             strategy_state: Mapping[str, Any] | None, device: torch.device) -> Path:
        state = {
            "fingerprint": self.fingerprint,
            "tasks_done": int(tasks_done),
            "n_tasks": int(n_tasks),
            "progress": dict(progress),
            "strategy": strategy_state,
            "rng": rng_state(device),
            "extra": dict(self.extra() or {}) if self.extra is not None else {},
        }
        path = write(self.folder, tasks_done, state)
        after_save(tasks_done)
        return path


def saved_extra(folder: Path) -> dict[str, Any] | None:
    """The ``extra`` of the run's last checkpoint (None: no readable checkpoint)."""
    path = latest(folder)
    if path is None:
        return None
    try:
        return dict(read(path).get("extra") or {})
    except CheckpointError:
        return None


def resume(state: Mapping[str, Any], progress: Mapping[str, Any], strategy, own: Sequence[Any],
           test_datasets: Iterable, device: torch.device) -> int:
    """Continue a run from ``state`` (``RunCheckpoints.load``): the record's rows into the
    lists of ``progress`` (None entries stay None), the strategy's state into ``strategy``
    (None for strategies rebuilt from scratch every task), the test sets read once, the RNG
    states set last. Returns the number of tasks already trained."""
    missing = [k for k, rows in progress.items()
               if rows is not None and state["progress"].get(k) is None]
    if missing:
        raise CheckpointError(f"the checkpoint has no '{missing[0]}' rows (written by another "
                              "version of the runner); use --restart to discard it")
    for key, rows in progress.items():
        if rows is not None:
            rows.extend(state["progress"][key])
    if strategy is not None and state["strategy"] is not None:
        restore(strategy, state["strategy"], own)
    # the uninterrupted run read the test sets at its first evaluation, drawing a loader seed
    # from the global RNG each: read them now, before the RNG states are set
    for data in test_datasets:
        materialize(data, device)
    set_rng_state(state["rng"], device)
    return int(state["tasks_done"])


