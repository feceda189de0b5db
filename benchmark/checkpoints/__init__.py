"""Per-experience checkpoints: an interrupted run resumes from its last complete experience.

After every experience the runner writes ``<out>/checkpoints/<run>/task-<k>.pt`` (``<run>``
is the record's file name without ``.json``, ``k`` the tasks trained so far). A checkpoint holds
everything the rest of the run depends on, so that the resumed run's record equals an
uninterrupted run's (timing fields aside: ``TIMING_KEYS``):

- the run's settings (:func:`fingerprint`): scenario, strategy, seed, tag, the record's
  ``params``, the versions, the device and torch's thread count. A rerun whose settings differ
  is refused up front (:func:`check_command`), naming the first differing key;
- the record's rows so far (accuracy, history, epochs, seconds, memory, ...);
- the model's ``state_dict`` (HAT's embeddings and cumulative masks, PackNet masks, PNN
  columns, PathNet paths are all in it), which parameters have ``requires_grad``, and each
  module's own attributes outside the state dict (training flags, Avalanche's known task
  labels, HAT's current gates, the masks ``benchmark.networks.Dropout`` draws ahead and how
  far it has used them);
- the optimizer's ``state_dict`` with its parameters by name, and Avalanche's
  ``optimized_param_id`` (so the optimizer state is kept as Avalanche keeps it);
- every plugin's state and the strategy's own attributes (those a plain Avalanche template
  does not have), pickled with ``torch.save`` in one blob (:func:`capture`): EWC's Fishers and
  anchors, SI's importances, LwF's teacher, IMM's sums, rehearsal memories, Avalanche's clock.
  References to the live strategy, model, its modules, parameters and buffers (and tensors
  that are views of them), the optimizer and the plugins are written as placeholders and
  re-linked to the resumed run's objects on load. The runner's own plugins (data loading,
  the recipe, history, accuracy, memory) keep nothing across experiences and are left out;
- every RNG: torch's (and CUDA's on a GPU), numpy's and Python's global states, from which
  the recipe's data order and every other draw follow (the recipe's validation split is
  seeded by the run's seed and the task). ``torch.Generator`` objects a plugin holds are
  pickled with their state.

Resuming (:func:`resume`): the runner builds the strategy as a new run does (same seed,
same construction), then loads the model, optimizer, plugin and strategy state into it
(:func:`restore`), reads the test sets once (their first read draws from the global RNG:
the uninterrupted run did that after task 1) and sets the RNG states last.

Avalanche's own checkpointing (``avalanche.checkpointing.save_checkpoint``) dill-pickles the
whole strategy object, its datasets, loggers and the runner's callbacks with it, for
``maybe_load_checkpoint`` to return in place of a new strategy. Here the runner builds the
strategy as a new run does and loads only state into it: callbacks, loggers and the W&B
tracker stay those of the resuming process, and no dataset is written.

State that cannot be checkpointed fails loudly, naming the plugin and attribute: an object
that does not pickle (a lambda, an open iterator or generator), or an Avalanche experience,
stream or ``DataLoader`` held across experiences (:class:`CheckpointError`). A plugin can
name attributes that hold only per-experience scratch, left out of checkpoints, in a class
attribute ``checkpoint_transient`` (a tuple of names; ``TRANSIENT`` lists those of the
suite's plugins that cannot say it themselves).

Writes are atomic (a temporary file in the same folder, fsync, ``os.replace``, fsync of the
folder); the previous checkpoint is deleted only once the new one is in place, so a kill at
any moment leaves a complete checkpoint. For tests, ``HATBENCH_KILL_AFTER_TASK=k`` makes the
process SIGKILL itself right after the checkpoint of task ``k`` is written (:func:`after_save`).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import re
import shutil
import signal
import sys
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import BenchmarkError
from .records import TIMING_FIELDS, is_complete, record_name, record_path, versions

#: checkpoint layout version (a checkpoint of another version is refused like other settings)
FORMAT = 1
#: the folder under ``--out`` holding one folder of checkpoints per unfinished run
FOLDER = "checkpoints"
#: fault injection for tests: SIGKILL this process right after the checkpoint of this task
KILL_ENV = "HATBENCH_KILL_AFTER_TASK"
#: record fields that measure time or memory of the process: they may differ after a resume
TIMING_KEYS = TIMING_FIELDS
#: attributes of the suite's plugins that hold per-experience scratch only (by class name),
#: each rebuilt or overwritten before it is read in the next experience: EWC's training
#: subset (read in ``after_training_exp`` of the same experience) and its stacked Fishers
#: and anchors (rebuilt from ``importances``/``saved_params``); SI's flat copies of θ* and
#: Ω (rebuilt from ``ewc_data``) and its θ before the last update (set every iteration)
TRANSIENT: dict[str, tuple[str, ...]] = {
    "strategies.ewc.EWCPlugin": ("_train_part", "_stack"),
    "strategies.si.SIPlugin": ("_old", "_theta_star", "_importance"),
}
#: attributes every Avalanche supervised template has (the rest of a strategy's attributes
#: are its own state and go into the checkpoint)
TEMPLATE_ATTRIBUTES = frozenset({
    "_criterion", "_distributed_check", "_eval_streams", "_stop_training", "adapted_dataset",
    "clock", "current_eval_stream", "dataloader", "device", "eval_every", "eval_mb_size",
    "evaluator", "experience", "is_training", "loss", "mb_output", "mbatch", "model",
    "optimized_param_id", "optimizer", "plugins", "retain_graph", "train_epochs",
    "train_mb_size", "training_epoch",
})
#: the strategy's per-experience scratch: restored as None where a plugin refers to it
SCRATCH_ATTRIBUTES = ("dataloader", "experience", "current_eval_stream", "_eval_streams")

_NAME = re.compile(r"^task-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A run's state that cannot be checkpointed or restored; the message names the part."""


# ------------------------------------------------------------------------------ paths
def run_folder(out: Path, exp) -> Path:
    """``<out>/checkpoints/<record name without .json>/``: the checkpoints of ``exp``."""
    name = record_name(exp.scenario, exp.strategy, exp.seed, exp.tag)
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


def discard(experiments: Iterable, out: Path) -> list[Path]:
    """``--restart``: delete the checkpoints of these runs (only theirs); the folders deleted."""
    gone = []
    for exp in experiments:
        folder = run_folder(out, exp)
        if folder.exists():
            remove(folder)
            gone.append(folder)
    return gone


# ------------------------------------------------------------------------------ settings
def fingerprint(exp, device: str | torch.device, threads: int) -> dict[str, Any]:
    """The settings a checkpoint is only valid for (JSON values): a resumed run with other
    settings would not be the run its record describes."""
    from .runner import record_params, resolve
    from .scenarios import get_scenario

    spec = get_scenario(exp.scenario)
    cfg = resolve(exp, spec.valid_fraction, spec.embedded, spec.network)
    return json.loads(json.dumps({
        "format": FORMAT,
        "scenario": exp.scenario,
        "strategy": exp.strategy,
        "seed": exp.seed,
        "tag": exp.tag,
        "params": record_params(exp, cfg),
        "versions": versions(),
        "device": str(torch.device(device)),
        "threads": int(threads),
    }))


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


def read(path: Path, mmap: bool = True) -> dict[str, Any]:
    """A checkpoint's contents (plugin state still pickled); ``mmap``: tensors are mapped
    from the file, not read (to look at the settings or rows)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - any unreadable file: reported with its path
        raise CheckpointError(f"{path} is not a readable checkpoint ({err})") from None
    if not isinstance(state, dict) or "fingerprint" not in state:
        raise CheckpointError(f"{path} is not a hat-bench checkpoint")
    return state


def check_command(experiments: Sequence, out: Path, device: str, threads: int) -> None:
    """Refuse (BenchmarkError, one line, before anything runs) a checkpoint of a run this
    command would resume whose settings differ from the command's; runs with a complete
    record are not resumed and not checked."""
    for exp in experiments:
        if is_complete(record_path(out, exp.scenario, exp.strategy, exp.seed, exp.tag)):
            continue
        path = latest(run_folder(out, exp))
        if path is None:
            continue
        try:
            have = read(path)["fingerprint"]
        except CheckpointError as err:
            raise BenchmarkError(f"{err}; use --restart to discard it") from None
        diff = difference(have, fingerprint(exp, device, threads))
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
    from reports.render import atomic_path

    folder = Path(folder)
    path = checkpoint_path(folder, tasks_done)
    for attempt in range(3):  # another run may remove the empty parent meanwhile (--jobs)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(dict(state), f)
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


# ------------------------------------------------------------------------------ RNG
def rng_state(device: torch.device) -> dict[str, Any]:
    """Every global RNG's state (torch, CUDA on a GPU, numpy, Python)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [str(kind), torch.from_numpy(np.array(keys, dtype=np.uint32).copy()),
                  int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].clone())
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].clone(), device)


# ------------------------------------------------------------------------------ relinking
class _Relink:
    """The live objects of a strategy by key: written as placeholders, found again on load."""

    def __init__(self, strategy, optimizer=None):
        self.by_key: dict[tuple, Any] = {}
        self.by_id: dict[int, tuple[tuple, Any]] = {}
        self.storages: dict[tuple[str, int], tuple[tuple, torch.Tensor]] = {}
        self.scratch: set[int] = set()
        model = strategy.model
        optimizer = optimizer if optimizer is not None else strategy.optimizer
        self._add(("strategy",), strategy)
        self._add(("model",), model)
        self._add(("optimizer",), optimizer)
        self._add(("evaluator",), getattr(strategy, "evaluator", None))
        for i, p in enumerate(strategy.plugins):
            self._add(("plugin", i), p)
        for name, m in model.named_modules():
            self._add(("module", name), m)
        for name, t in model.named_parameters():
            self._add(("param", name), t)
            self._storage(("param", name), t)
        for name, t in model.named_buffers():
            self._add(("buffer", name), t)
            self._storage(("buffer", name), t)
        names = {id(p): n for n, p in model.named_parameters()}
        for p, state in getattr(optimizer, "state", {}).items():
            for k, t in state.items() if id(p) in names else ():
                if isinstance(t, torch.Tensor):  # (momentum buffers, Adam's moments)
                    self._add(("optimizer state", names[id(p)], k), t)
                    self._storage(("optimizer state", names[id(p)], k), t)
        for attr in SCRATCH_ATTRIBUTES:
            value = getattr(strategy, attr, None)
            if value is not None:
                self.scratch.add(id(value))

    def _add(self, key: tuple, obj: Any) -> None:
        if obj is None or id(obj) in self.by_id:
            return
        self.by_key[key] = obj
        self.by_id[id(obj)] = (key, obj)

    def _storage(self, key: tuple, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        if st.nbytes() and st.data_ptr():
            self.storages.setdefault((str(t.device), st.data_ptr()), (key, t))

    def get(self, key: tuple) -> Any:
        try:
            return self.by_key[tuple(key)]
        except KeyError:
            raise CheckpointError(
                f"the checkpoint refers to {'.'.join(map(str, key))}, which the resumed "
                "strategy does not have (another model or plugin list)") from None


_SAVING: ContextVar[_Relink | None] = ContextVar("hatbench_saving", default=None)
_LOADING: ContextVar[_Relink | None] = ContextVar("hatbench_loading", default=None)


def _live(key: tuple) -> Any:
    """Unpickling: the resumed strategy's object for ``key``."""
    table = _LOADING.get()
    if table is None:
        raise CheckpointError("a checkpoint's plugin state is loaded without a strategy")
    return table.get(key)


def _live_view(key: tuple, offset: int, size: tuple, stride: tuple, dtype: torch.dtype,
               requires_grad: bool) -> torch.Tensor:
    """Unpickling: a tensor sharing the storage of the resumed model's tensor ``key``."""
    base = _live(key)
    view = torch.empty(0, dtype=dtype, device=base.device)
    view.set_(base.untyped_storage(), offset, size, stride)
    return view.requires_grad_(requires_grad) if requires_grad else view


def _scratch() -> None:
    return None


_FORBIDDEN: tuple[type, ...] = ()


def _forbidden() -> tuple[type, ...]:
    """Types that cannot be state across experiences (looked up once)."""
    global _FORBIDDEN
    if not _FORBIDDEN:
        from avalanche.benchmarks.scenarios.generic_scenario import CLExperience, CLStream

        _FORBIDDEN = (CLExperience, CLStream, torch.utils.data.DataLoader)
    return _FORBIDDEN


class _Pickler(pickle.Pickler):
    """``torch.save``'s pickler (it subclasses this one) with live objects as placeholders."""

    def reducer_override(self, obj):
        table = _SAVING.get()
        if table is None:
            return NotImplemented
        hit = table.by_id.get(id(obj))
        if hit is not None and hit[1] is obj:
            return _live, (hit[0],)
        if id(obj) in table.scratch:
            return _scratch, ()
        if isinstance(obj, torch.Tensor) and not isinstance(obj, torch.nn.Parameter):
            st = obj.untyped_storage()
            base = table.storages.get((str(obj.device), st.data_ptr())) if st.data_ptr() else None
            if base is not None:
                return _live_view, (base[0], obj.storage_offset(), tuple(obj.shape),
                                    tuple(obj.stride()), obj.dtype,
                                    bool(obj.requires_grad and obj.is_leaf))
        if isinstance(obj, _forbidden()):
            raise CheckpointError(
                f"holds a {type(obj).__name__} across experiences, which a checkpoint "
                "cannot restore")
        return NotImplemented


_pickle_module = types.ModuleType("hatbench_checkpoint_pickle")
_pickle_module.Pickler = _Pickler  # type: ignore[attr-defined]
_pickle_module.Unpickler = pickle.Unpickler  # type: ignore[attr-defined]
_pickle_module.dump = pickle.dump  # type: ignore[attr-defined]
_pickle_module.load = pickle.load  # type: ignore[attr-defined]


def _dump(obj: Any, table: _Relink) -> memoryview:
    """``obj`` pickled by ``torch.save`` with the live objects of ``table`` as placeholders
    (a view of the buffer: no copy)."""
    buf = io.BytesIO()
    token = _SAVING.set(table)
    try:
        torch.save(obj, buf, pickle_module=_pickle_module)
    finally:
        _SAVING.reset(token)
    return buf.getbuffer()


def _load(blob: bytes, table: _Relink) -> Any:
    token = _LOADING.set(table)
    try:
        return torch.load(io.BytesIO(blob), weights_only=False, pickle_module=_pickle_module)
    finally:
        _LOADING.reset(token)


# ------------------------------------------------------------------------------ strategy
def _qualname(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _transient(plugin: Any) -> set[str]:
    names = set(TRANSIENT.get(_qualname(plugin), ()))
    names.update(getattr(plugin, "checkpoint_transient", ()) or ())
    return names


def _kept_plugins(strategy, own: Sequence[Any]) -> list[tuple[int, Any]]:
    """(index, plugin) of the plugins whose state is checkpointed: all but the runner's own
    and the evaluation plugin (loggers)."""
    from avalanche.training.plugins import EvaluationPlugin

    return [(i, p) for i, p in enumerate(strategy.plugins)
            if not any(p is o for o in own) and not isinstance(p, EvaluationPlugin)]


#: what every ``nn.Module`` has in its ``__dict__`` besides its own attributes (the
#: parameters, buffers and submodules are in the state dict; hooks are the plugins' business)
_MODULE_INTERNALS = frozenset(vars(torch.nn.Module())) - {"training"}


def _module_attributes(model: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """Per module of ``model`` (by name), its attributes outside the state dict: training
    flags, Avalanche's known task labels, HAT's current s and gates, the pre-drawn dropout
    masks of ``benchmark.networks.Dropout`` and the position in them, ..."""
    return {name: {k: v for k, v in vars(m).items() if k not in _MODULE_INTERNALS}
            for name, m in model.named_modules()}


def _objects(strategy, own: Sequence[Any]) -> dict[str, Any]:
    plugins = []
    for i, p in _kept_plugins(strategy, own):
        skip = _transient(p)
        plugins.append((i, _qualname(p), {k: v for k, v in vars(p).items() if k not in skip}))
    extra = {k: v for k, v in vars(strategy).items() if k not in TEMPLATE_ATTRIBUTES}
    return {"plugins": plugins, "strategy": extra, "modules": _module_attributes(strategy.model)}


def _culprit(objects: Mapping[str, Any], table: _Relink) -> str:
    """The first plugin attribute (or strategy attribute) that does not pickle, and why."""
    for _, name, attrs in objects["plugins"]:
        for attr, value in attrs.items():
            try:
                _dump(value, table)
            except Exception as err:  # noqa: BLE001 - the culprit
                return f"plugin {name}, attribute {attr}: {_one_line(err)}"
    for attr, value in objects["strategy"].items():
        try:
            _dump(value, table)
        except Exception as err:  # noqa: BLE001
            return f"strategy attribute {attr}: {_one_line(err)}"
    for name, attrs in objects["modules"].items():
        for attr, value in attrs.items():
            try:
                _dump(value, table)
            except Exception as err:  # noqa: BLE001
                return f"model module '{name}', attribute {attr}: {_one_line(err)}"
    return "unknown part"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def capture(strategy, own: Sequence[Any] = ()) -> dict[str, Any]:
    """The state of ``strategy`` after an experience: model, optimizer, plugins (all but
    ``own``, the runner's), the strategy's own attributes. Raises CheckpointError naming the
    plugin and attribute that cannot be checkpointed."""
    model = strategy.model
    names = {id(p): n for n, p in model.named_parameters()}
    opt = strategy.optimizer
    groups = []
    for g in opt.param_groups:
        missing = [p for p in g["params"] if id(p) not in names]
        if missing:
            raise CheckpointError(
                f"the optimizer holds {len(missing)} tensors that are not parameters of the "
                "model; a checkpoint restores the optimizer over the model's parameters")
        groups.append([names[id(p)] for p in g["params"]])
    ids = strategy.optimized_param_id
    table = _Relink(strategy)
    objects = _objects(strategy, own)
    try:
        blob = _dump(objects, table)
    except Exception as err:  # noqa: BLE001 - find and name the part
        raise CheckpointError(f"cannot checkpoint {_culprit(objects, table)}; keep state "
                              "across experiences in tensors, modules and plain values "
                              "(see benchmark/checkpoints.py)") from err
    return {
        "model": model.state_dict(),
        "requires_grad": {n: bool(p.requires_grad) for n, p in model.named_parameters()},
        "optimizer": {"class": _qualname(opt), "params": groups, "state": opt.state_dict()},
        "optimized_param_id": None if ids is None else list(ids),
        "objects": torch.frombuffer(blob, dtype=torch.uint8),
    }


def _same_type_optimizer(optimizer: torch.optim.Optimizer, groups: list[list]):
    import inspect

    cls = type(optimizer)
    accepted = inspect.signature(cls.__init__).parameters
    settings = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    return cls([{"params": g} for g in groups], **settings)


def restore(strategy, state: Mapping[str, Any], own: Sequence[Any] = ()) -> None:
    """Load ``capture``'s ``state`` into ``strategy``, built as for a new run."""
    model = strategy.model
    model.load_state_dict(state["model"])
    named = dict(model.named_parameters())
    for n, flag in state["requires_grad"].items():
        if n in named:
            named[n].requires_grad_(flag)
    opt_state = state["optimizer"]
    if _qualname(strategy.optimizer) != opt_state["class"]:
        raise CheckpointError(f"the checkpoint's optimizer is {opt_state['class']}, the "
                              f"resumed run's {_qualname(strategy.optimizer)}")
    try:
        groups = [[named[n] for n in g] for g in opt_state["params"]]
    except KeyError as err:
        raise CheckpointError(f"the checkpoint's optimizer holds parameter {err}, which the "
                              "resumed model does not have") from None
    optimizer = _same_type_optimizer(strategy.optimizer, groups)
    optimizer.load_state_dict(opt_state["state"])
    strategy.optimizer = optimizer
    ids = state["optimized_param_id"]
    strategy.optimized_param_id = None if ids is None else {n: named[n] for n in ids}
    table = _Relink(strategy, optimizer)
    objects = _load(state["objects"].numpy().tobytes(), table)
    kept = _kept_plugins(strategy, own)
    have = [(i, _qualname(p)) for i, p in kept]
    saved = [(i, name) for i, name, _ in objects["plugins"]]
    if have != saved:
        raise CheckpointError(f"the checkpoint's plugins {[n for _, n in saved]} are not the "
                              f"resumed strategy's {[n for _, n in have]}")
    for (_, plugin), (_, _, attrs) in zip(kept, objects["plugins"], strict=True):
        vars(plugin).update(attrs)
    for k, v in objects["strategy"].items():
        setattr(strategy, k, v)
    modules = dict(model.named_modules())
    for name, attrs in objects["modules"].items():
        if name not in modules:
            raise CheckpointError(f"the checkpoint's model has a module '{name}' that the "
                                  "resumed model does not have")
        vars(modules[name]).update(attrs)


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
    def for_run(cls, out: Path, exp, device: str | torch.device, **kw) -> RunCheckpoints:
        """The checkpoints of ``exp`` under ``out``, for this process's settings."""
        return cls(run_folder(out, exp), fingerprint(exp, device, torch.get_num_threads()),
                   name=record_name(exp.scenario, exp.strategy, exp.seed, exp.tag), **kw)

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
        state = read(path, mmap=False)  # (the state is used after the file is replaced)
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
    from strategies.data import materialize

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


__all__ = [
    "FOLDER", "KILL_ENV", "TIMING_KEYS", "CheckpointError", "RunCheckpoints", "capture",
    "check_command", "checkpoint_path", "difference", "discard", "fingerprint", "latest",
    "read", "remove", "restore", "resume", "rng_state", "run_folder", "saved_extra",
    "set_rng_state", "write",
]
