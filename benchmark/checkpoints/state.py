"""A strategy's state after an experience (``capture``) and its restoration into a strategy
built as for a new run (``restore``): model, optimizer, every plugin's and the strategy's own
attributes, pickled with references to the live objects re-linked on load."""

from __future__ import annotations

import inspect
import io
import pickle
import types
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import torch

from reports.text import one_line
from strategies.common.hooks import checkpoint_transient

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


class CheckpointError(RuntimeError):
    """A run's state that cannot be checkpointed or restored; the message names the part."""



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
    return set(checkpoint_transient(plugin))


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
    """Per module of ``model`` (by name), its attributes outside the state dict but for its
    ``checkpoint_transient`` ones: training flags, Avalanche's known task labels, HAT's
    current s and gates, where ``benchmark.networks.Dropout`` is in its pre-drawn masks, ..."""
    return {name: {k: v for k, v in vars(m).items()
                   if k not in _MODULE_INTERNALS and k not in checkpoint_transient(m)}
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
                return f"plugin {name}, attribute {attr}: {one_line(err)}"
    for attr, value in objects["strategy"].items():
        try:
            _dump(value, table)
        except Exception as err:  # noqa: BLE001
            return f"strategy attribute {attr}: {one_line(err)}"
    for name, attrs in objects["modules"].items():
        for attr, value in attrs.items():
            try:
                _dump(value, table)
            except Exception as err:  # noqa: BLE001
                return f"model module '{name}', attribute {attr}: {one_line(err)}"
    return "unknown part"


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
                              "(see benchmark/checkpoints/state.py)") from err
    return {
        "model": model.state_dict(),
        "requires_grad": {n: bool(p.requires_grad) for n, p in model.named_parameters()},
        "optimizer": {"class": _qualname(opt), "params": groups, "state": opt.state_dict()},
        "optimized_param_id": None if ids is None else list(ids),
        "objects": torch.frombuffer(blob, dtype=torch.uint8),
    }


def _same_type_optimizer(optimizer: torch.optim.Optimizer, groups: list[list]):
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
    restore_module_attributes(model, objects["modules"])


def restore_module_attributes(model: torch.nn.Module,
                              saved: Mapping[str, Mapping[str, Any]]) -> None:
    """Put ``_module_attributes``' ``saved`` back into ``model``'s modules; each module's
    ``checkpoint_transient`` attributes (left out of the checkpoint) become None, never what
    the module held before the restore."""
    modules = dict(model.named_modules())
    for name, attrs in saved.items():
        if name not in modules:
            raise CheckpointError(f"the checkpoint's model has a module '{name}' that the "
                                  "resumed model does not have")
        module = modules[name]
        vars(module).update({k: None for k in checkpoint_transient(module) if k in vars(module)})
        vars(module).update(attrs)


