"""The experiment runner: (scenario, strategy, seed, overrides) → run record.

An experiment is a function of its overrides: ``run_experiment`` trains each experience in
order, evaluates every test experience after each, and returns the record (a dict, see
``docs/record-schema.md``). ``run_all`` runs a list of experiments, skips those whose
complete record exists, and writes each record atomically once its run has finished.
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FunctionType, MethodType, ModuleType
from typing import Any

import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from tqdm.auto import tqdm

from reports.metrics import final_average_accuracy, forgetting
from strategies import (
    ConfigError,
    FastDataPlugin,
    RecipeConfig,
    TrainConfig,
    TrainingRecipePlugin,
    get_strategy,
    make_optimizer,
)
from strategies.agnostic import agnostic_accuracy
from strategies.clip import GradientClipPlugin
from strategies.config import from_overrides, to_public_dict
from strategies.hat import flushing_denormals
from strategies.recipe import split_indices
from strategies.registry import BuildContext

from .checkpoints import RunCheckpoints, run_folder, saved_extra
from .checkpoints import capture as capture_strategy
from .checkpoints import remove as remove_checkpoints
from .checkpoints import resume as resume_checkpoint
from .networks import (
    DEFAULT_BLOCKS,
    DEFAULT_HIDDEN,
    RESNETS,
    ModelConfig,
    build_model,
    check_network,
)
from .records import (
    SCHEMA_VERSION,
    finite_record,
    is_complete,
    now_iso,
    record_path,
    versions,
    write_record,
)
from .scenarios import Scenario, get_scenario, random_accuracy, to_benchmark

Overrides = Mapping[str, Mapping[str, Any]]

#: network defaults on the embedded scenarios (the MLP's width; other families keep theirs)
EMBEDDED_MODEL = {"hidden": 100}
#: each scenario's input shape (``Scenario.input_shape``, as the module docstring of
#: ``benchmark.scenarios`` lists it), known before any data are read: the network is checked
#: against it up front (the embedded scenarios' are tested against their built data)
INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "split-digits": (1, 8, 8), "permuted-digits": (1, 8, 8),
    "mnist2": (1, 28, 28), "pmnist": (1, 28, 28), "split-mnist": (1, 28, 28),
    "permuted-mnist": (1, 28, 28), "split-fmnist": (1, 28, 28),
    "cifar": (3, 32, 32), "mixture": (3, 32, 32), "split-cifar10": (3, 32, 32),
    "split-cifar100": (3, 32, 32),
}
#: strategies that rebuild the shared trunk layer by layer (``strategies.pnn.TrunkPlan``: a
#: chain of Linear/Conv2d layers and parameter-free modules) and the families they take
LAYERWISE_FAMILIES = {"pnn": ("mlp", "alexnet"), "pathnet": ("mlp", "alexnet")}


@dataclass(frozen=True)
class Experiment:
    """One run: what ``run_experiment`` needs, all typed."""

    scenario: str
    strategy: str
    seed: int
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tag: str = ""
    #: how the strategy's hyperparameters were selected on validation (a tuned preset's block
    #: for this strategy, see ``benchmark.tune``), copied into the record; None: not selected
    selection: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ScenarioConfig:
    """``scenario.*`` overrides: what to take from the built scenario."""

    #: train only this task (a task name of the scenario, e.g. ``mnist`` in ``mixture`` or
    #: ``digits:0-1`` in ``split-digits``), alone: the paper's compression experiment
    task: str | None = None


@dataclass(frozen=True)
class ResolvedConfig:
    train: TrainConfig
    model: ModelConfig
    strategy: Any
    scenario: ScenarioConfig = ScenarioConfig()


def resolve(exp: Experiment, scenario_valid_fraction: float, embedded: bool,
            network: str, input_shape: Sequence[int] | None = None) -> ResolvedConfig:
    """Validate every override and fill scenario defaults (raises ConfigError).

    ``input_shape`` (the built scenario's, or ``INPUT_SHAPES``' before it is built): the
    network is checked against it (``check_network``: the family takes that input, the trunk
    stays within ``MAX_PARAMETERS``)."""
    spec = get_strategy(exp.strategy)
    unknown = set(exp.overrides) - {"train", "model", "scenario", exp.strategy}
    if unknown:
        # parameters of other strategies are ignored: they belong to their own runs
        from strategies.registry import STRATEGIES

        bad = sorted(unknown - set(STRATEGIES))
        if bad:
            raise ConfigError(
                f"unknown parameter section '{bad[0]}'; use train.*, model.*, scenario.* or "
                f"<strategy>.* with a strategy among {', '.join(sorted(STRATEGIES))}"
            )
    train = from_overrides(TrainConfig, exp.overrides.get("train", {}), "train")
    if train.valid_fraction is None:
        train = replace(train, valid_fraction=scenario_valid_fraction)
    train.check_combination()
    model = _resolve_model(exp.strategy, dict(exp.overrides.get("model", {})), embedded,
                           network)
    if input_shape is not None:
        check_network(model, input_shape)
    strat_over = exp.overrides.get(exp.strategy, {})
    strat = spec.config(strat_over)
    if hasattr(strat, "check_combination"):
        strat.check_combination()
    train, strat = _resolve_clipgrad(spec, train, strat, exp.overrides.get("train", {}),
                                     strat_over)
    scen = from_overrides(ScenarioConfig, exp.overrides.get("scenario", {}), "scenario")
    return ResolvedConfig(train, model, strat, scen)


def _resolve_model(strategy: str, model_over: Mapping[str, Any], embedded: bool,
                   network: str) -> ModelConfig:
    """``model.*`` overrides with the scenario's family and the family's defaults filled."""
    model = from_overrides(ModelConfig, model_over, "model")
    if model.family is None:
        model = replace(model, family=network)
    family = model.family
    supported = LAYERWISE_FAMILIES.get(strategy)
    if supported is not None and family not in supported:
        raise ConfigError(
            f"{strategy} rebuilds the trunk layer by layer (a chain of Linear/Conv2d layers, "
            f"no BatchNorm or residual blocks) and supports model.family "
            f"{' or '.join(supported)} only, not {family}; use one of those for {strategy}, "
            "or leave it out of the strategies"
        )
    mlp_only = sorted(set(model_over) & {"layers", "dropout", "input_dropout"})
    if family == "alexnet" and mlp_only:
        raise ConfigError(
            f"model.{mlp_only[0]} applies to the MLP only: the AlexNet-like network has fixed "
            "depth and dropout (0.2, 0.2, 0.5 after the convolutions, 0.5 after the linear "
            "layers); remove it, or use model.family=mlp"
        )
    if family in RESNETS and mlp_only:
        raise ConfigError(
            f"model.{mlp_only[0]} applies to the MLP only: {family} has no dropout and "
            + ("model.blocks sets its depth" if family == "resnet32" else "a fixed depth")
            + "; remove it, or use model.family=mlp"
        )
    if model.hidden is None and family != "resnet18":  # (resnet18: fixed widths)
        default = DEFAULT_HIDDEN[family]
        if family == "mlp" and embedded:
            default = EMBEDDED_MODEL["hidden"]
        model = replace(model, hidden=default)
    if family == "resnet32" and model.blocks is None:
        model = replace(model, blocks=DEFAULT_BLOCKS)
    if family == "resnet18" and model.stem is None:
        model = replace(model, stem="auto")
    return model


def _resolve_clipgrad(spec, train: TrainConfig, strat: Any, train_over: Mapping[str, Any],
                      strat_over: Mapping[str, Any]) -> tuple[TrainConfig, Any]:
    """``train.clipgrad``: None means the strategy's reference value (``spec.clipgrad``).

    A strategy that clips inside its own plugin (HAT's ``hat.clipgrad``, applied between
    its gradient conditioning and the step) takes ``train.clipgrad`` as that value; giving
    both with different values is an error."""
    own = getattr(strat, "clipgrad", None)
    if own is None:
        if train.clipgrad is None:
            train = replace(train, clipgrad=spec.clipgrad)
        return train, strat
    if "clipgrad" in train_over and "clipgrad" in strat_over and train.clipgrad != own:
        raise ConfigError(
            f"train.clipgrad={train.clipgrad} and {spec.name}.clipgrad={own} disagree; give one"
        )
    if "clipgrad" in train_over:
        return train, replace(strat, clipgrad=train.clipgrad)
    return replace(train, clipgrad=own), strat


def record_params(exp: Experiment, cfg: ResolvedConfig) -> dict[str, Any]:
    """The record's ``params``: every hyperparameter the run uses."""
    # model fields that do not apply to the family (ResNet-32's blocks, ResNet-18's stem and
    # hidden) stay None and are left out: records of the other families keep their keys
    params = {
        "train": to_public_dict(cfg.train),
        "model": {k: v for k, v in to_public_dict(cfg.model).items() if v is not None},
        exp.strategy: to_public_dict(cfg.strategy),
    }
    if cfg.scenario != ScenarioConfig():
        params["scenario"] = to_public_dict(cfg.scenario)
    return params


def select_task(scenario: Scenario, name: str | None) -> Scenario:
    """``scenario`` reduced to its task ``name`` (``scenario.task``); unchanged for None."""
    if name is None:
        return scenario
    tasks = [t for t in scenario.tasks if t.name == name]
    if not tasks:
        raise ConfigError(
            f"scenario.task={name!r} is not a task of {scenario.name}; its tasks: "
            f"{', '.join(t.name for t in scenario.tasks)}"
        )
    return replace(scenario, tasks=tasks)


def known_task_names(scenario: str) -> list[str] | None:
    """Task names of ``scenario`` when they are known without reading a dataset (embedded
    scenarios, and the mixture's datasets); None otherwise (checked when the run starts)."""
    spec = get_scenario(scenario)
    if spec.embedded:
        return [t.name for t in spec.build(0, Path("data")).tasks]
    if scenario == "mixture":
        from .scenarios import MIXTURE_SOURCES

        return list(MIXTURE_SOURCES)
    return None


def seed_everything(seed: int) -> None:
    """Seed every RNG."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Accuracy(SupervisedPlugin):
    """Collects test accuracy per evaluated experience."""

    def __init__(self):
        super().__init__()
        self.correct = 0
        self.total = 0
        self.results: list[float] = []

    def before_eval(self, strategy, **kwargs):
        self.results = []

    def before_eval_exp(self, strategy, **kwargs):
        self.correct = self.total = 0

    def after_eval_iteration(self, strategy, **kwargs):
        # summed on the device: one host synchronisation per experience, not per batch
        self.correct = self.correct + (strategy.mb_output.argmax(1) == strategy.mb_y).sum()
        self.total += len(strategy.mb_y)

    def after_eval_exp(self, strategy, **kwargs):
        self.results.append(int(self.correct) / max(self.total, 1))


def resident_mb() -> float:
    """This process's resident set size now, in MB (``/proc/self/statm``; elsewhere the
    peak so far from ``getrusage``)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class _PeakMemory(SupervisedPlugin):
    """Peak memory of each experience's training, in MB: on CUDA the allocator's peak
    (``torch.cuda.max_memory_allocated``, reset when the experience starts); on the CPU the
    growth of the process's resident set size over its size when the run started, sampled
    when the experience starts and after every epoch (a sample per epoch misses peaks inside
    a step, and memory an earlier run of the same process freed is reused unseen: the same
    rule for every strategy, a rough figure; ``state_mb`` is the exact one)."""

    def __init__(self):
        super().__init__()
        self.base = resident_mb()
        self.peak = 0.0

    def _cuda(self, strategy) -> bool:
        return torch.device(strategy.device).type == "cuda"

    def before_training_exp(self, strategy, **kwargs):
        if self._cuda(strategy):
            torch.cuda.reset_peak_memory_stats(strategy.device)
            self.peak = 0.0
        else:
            self.peak = max(0.0, resident_mb() - self.base)

    def after_training_epoch(self, strategy, **kwargs):
        if not self._cuda(strategy):
            self.peak = max(self.peak, resident_mb() - self.base)

    def after_training_exp(self, strategy, **kwargs):
        if self._cuda(strategy):
            self.peak = torch.cuda.max_memory_allocated(strategy.device) / 2**20
        else:
            self.peak = max(self.peak, resident_mb() - self.base)


def held_tensors_mb(strategy, skip: Sequence[object] = ()) -> float:
    """MB of the distinct tensor storages ``strategy`` holds between experiences: the model's
    parameters and buffers, the optimizer's state, and every tensor the plugins keep (EWC's
    Fisher and anchors, SI's importances, LwF's teacher, rehearsal memories, ...), each
    storage counted once; the plugins in ``skip`` (the runner's own) are left out. Exact and
    the same on every machine: what a method keeps, not what a step needs."""
    seen: set[int] = set()
    alive: list[Any] = []  # the temporary dicts visited stay alive: ids are not reused
    storages: dict[int, int] = {}

    def visit(obj: Any, depth: int) -> None:
        if depth > 6 or id(obj) in seen:
            return
        seen.add(id(obj))
        alive.append(obj)
        if isinstance(obj, torch.Tensor):
            st = obj.untyped_storage()
            storages[st.data_ptr()] = st.nbytes()
        elif isinstance(obj, torch.nn.Module):
            for v in obj.state_dict(keep_vars=True).values():
                visit(v, depth + 1)
            visit({k: v for k, v in vars(obj).items() if not k.startswith("_")}, depth + 1)
        elif isinstance(obj, Mapping):
            for v in obj.values():
                visit(v, depth + 1)
        elif isinstance(obj, list | tuple | set):
            for v in obj:
                visit(v, depth + 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type | FunctionType | MethodType
                                                          | ModuleType):
            visit(vars(obj), depth + 1)

    visit(strategy.model, 0)
    visit(dict(strategy.optimizer.state), 0)
    for plugin in strategy.plugins:
        if not any(plugin is s for s in skip):
            visit(plugin, 0)
    return sum(storages.values()) / 2**20


def memory_samples(strategy) -> int | None:
    """Samples the strategy's rehearsal memories hold (the sum of every plugin's
    ``memory_samples()``), or None when no plugin keeps one."""
    counts = [p.memory_samples() for p in strategy.plugins if hasattr(p, "memory_samples")]
    return int(sum(counts)) if counts else None


class _History(SupervisedPlugin):
    """Per-epoch training statistics, forwarded to ``on_epoch`` (progress bar, tracker).

    Each step only keeps references to its loss, outputs and targets; the epoch's mean loss
    and accuracy are reduced once at its end (a few operations per epoch, not per step)."""

    def __init__(self, recipe: TrainingRecipePlugin, on_epoch: Callable[[dict], None]):
        super().__init__()
        self.recipe = recipe
        self.on_epoch = on_epoch
        self.entries: list[dict] = []
        self._steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def before_training_exp(self, strategy, **kwargs):
        self.entries = []

    def before_training_epoch(self, strategy, **kwargs):
        self._steps = []

    def after_training_iteration(self, strategy, **kwargs):
        self._steps.append((strategy.loss.detach(), strategy.mb_output.detach(), strategy.mb_y))

    def _epoch_means(self) -> tuple[float, float]:
        if not self._steps:
            return 0.0, 0.0
        losses, outputs, targets = zip(*self._steps, strict=True)
        sizes = torch.tensor([len(y) for y in targets], dtype=losses[0].dtype,
                             device=losses[0].device)
        n = int(sizes.sum())
        loss = torch.dot(torch.cat([v.reshape(1) for v in losses]), sizes)
        correct = (torch.cat(outputs).argmax(1) == torch.cat(targets)).sum()
        self._steps = []
        return float(loss) / n, int(correct) / n

    def after_training_epoch(self, strategy, **kwargs):
        # the recipe plugin runs before this one: its validation loss is for this epoch
        train_loss, train_acc = self._epoch_means()
        entry = {
            "epoch": len(self.entries) + 1,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "valid_loss": self.recipe.last_valid_loss,
            "lr": self.recipe.lr if self.recipe.active else
            float(strategy.optimizer.param_groups[0]["lr"]),
        }
        for plugin in strategy.plugins:
            metrics = getattr(plugin, "epoch_metrics", None)
            if metrics is not None:
                entry.update(metrics())
        self.entries.append(entry)
        self.on_epoch(entry)


def validation_benchmark(scenario: Scenario, recipe: str, valid_fraction: float, seed: int):
    """Every task's held-out validation split as the test stream of a benchmark (task labels
    as in the scenario), or None when the recipe holds nothing out (``train.recipe=fixed``).

    The indices are the training recipe's own (``split_indices`` on the task's training
    data, seeded by the run's seed and the task's position), so these are exactly the samples
    the recipe kept out of training."""
    if recipe != "paper" or not valid_fraction:
        return None
    valid = []
    for u, task in enumerate(scenario.tasks):
        _, idx = split_indices(len(task.train_y), valid_fraction, seed, u)
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        valid.append(replace(task, test_x=task.train_x[idx_t], test_y=task.train_y[idx_t]))
    return to_benchmark(replace(scenario, tasks=valid))


def _evaluate(strategy, stream, collector: _Accuracy) -> list[float]:
    strategy.eval(stream)
    return list(collector.results)


@dataclass
class RunHooks:
    """Observers of a run (progress bars, trackers); every hook is optional."""

    on_epoch: Callable[[int, dict], None] = lambda task, entry: None
    on_experience: Callable[[int, list[float]], None] = lambda task, row: None
    avalanche_loggers: list = field(default_factory=list)


def _make_strategy(spec, cfg: ResolvedConfig, scenario: Scenario, device, plugins, loggers):
    gated = spec.gated
    hat_kw = {}
    if gated:
        hat_kw = dict(smax=cfg.strategy.smax, binary_masks=not cfg.strategy.soft_masks,
                      embedding_init=cfg.strategy.embedding_init)
    model = build_model(cfg.model, scenario.input_shape, scenario.classes_per_task,
                        gated=gated, **hat_kw).to(device)
    optimizer = make_optimizer(model.parameters(), cfg.train)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        evaluator = EvaluationPlugin(loggers=list(loggers))
    ctx = BuildContext(model=model, optimizer=optimizer, train=cfg.train, plugins=plugins,
                       device=device, evaluator=evaluator)
    strategy = spec.build(ctx, cfg.strategy)
    if not hasattr(cfg.strategy, "clipgrad"):  # (HAT clips inside its own plugin)
        # last, so that it sees the gradients every other plugin left (frozen ones dropped)
        strategy.plugins.append(GradientClipPlugin(cfg.train.clipgrad))
    if not evaluator.metrics:  # without metrics, loggers receive nothing either
        # An idle EvaluationPlugin still costs an AttributeError and an experience.logging()
        # copy on every callback (~20% of a small model's step): leave it out of the loop.
        strategy.plugins = [p for p in strategy.plugins if p is not evaluator]
    return strategy


@contextmanager
def _flushed_denormals(enabled: bool = True):
    if not enabled:
        yield
        return
    restore = not flushing_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if restore:
            torch.set_flush_denormal(False)


def run_experiment(
    exp: Experiment,
    scenario: Scenario | None = None,
    *,
    data_root: Path = Path("data"),
    device: str | torch.device = "cpu",
    hooks: RunHooks | None = None,
    checkpoint: RunCheckpoints | None = None,
) -> dict:
    """Train ``exp`` and return its run record (not written).

    ``checkpoint``: after every experience the run's state is written there, and a run with
    a checkpoint resumes from it (``benchmark.checkpoints``: the same record as without
    the interruption, timing fields aside).

    Denormal floats are flushed to zero for the duration of the run, for every strategy
    alike (HAT's near-zero gates make CPU matrix products 2–3× slower otherwise, see
    ``HATConfig.flush_denormal``), unless the strategy's own ``flush_denormal`` setting is
    false; the caller's mode is restored afterwards.
    """
    hooks = hooks or RunHooks()
    sspec = get_scenario(exp.scenario)
    if scenario is None:
        scenario = sspec.build(exp.seed, Path(data_root))
    cfg = resolve(exp, scenario.valid_fraction, sspec.embedded, sspec.network,
                  scenario.input_shape)
    with _flushed_denormals(getattr(cfg.strategy, "flush_denormal", True)):
        scenario = select_task(scenario, cfg.scenario.task)
        spec = get_strategy(exp.strategy)
        device = torch.device(device)
        bench = to_benchmark(scenario)
        n_tasks = scenario.n_tasks
        accuracy: list[list[float]] = []
        epochs: list[int] = []
        seconds: list[float] = []
        history: list[list[dict]] = []
        peak_mb: list[float] = []
        state_mb: list[float] = []
        held: list[int | None] = []
        agnostic: list[list[float] | None] = []
        peak = _PeakMemory()
        from_scratch = spec.joint or spec.single
        test_sets = [(task.test_x, task.test_y) for task in scenario.tasks]

        def plugins_for(task_index: int):
            recipe = TrainingRecipePlugin(
                RecipeConfig(mode=cfg.train.recipe, valid_fraction=cfg.train.valid_fraction,
                             patience=cfg.train.patience, lr_factor=cfg.train.lr_factor,
                             lr_min=cfg.train.lr_min, seed=exp.seed),
                lr=cfg.train.lr,
            )
            hist = _History(recipe, lambda entry: hooks.on_epoch(task_index, entry))
            acc = _Accuracy()
            return recipe, hist, acc, [FastDataPlugin(), recipe, hist, acc, peak]

        # each task's held-out validation split (the recipe's indices) as an eval stream: the
        # validation accuracy matrix that hyperparameter selection reads (never the test data)
        valid_bench = None if spec.joint else validation_benchmark(
            scenario, cfg.train.recipe, cfg.train.valid_fraction, exp.seed)
        valid_accuracy: list[list[float]] | None = None if valid_bench is None else []
        seed_everything(exp.seed)
        strategy = None
        if not from_scratch:
            recipe, hist, acc, plugins = plugins_for(0)
            strategy = _make_strategy(spec, cfg, scenario, device, plugins, hooks.avalanche_loggers)
        # the record's rows so far: what a checkpoint keeps and a resumed run continues
        progress = {"accuracy": accuracy, "valid_accuracy": valid_accuracy, "epochs": epochs,
                    "seconds": seconds, "history": history, "peak_memory_mb": peak_mb,
                    "state_mb": state_mb, "memory_samples": held, "agnostic_accuracy": agnostic}
        done = 0
        resumed = checkpoint.load() if checkpoint is not None else None
        if resumed is not None:
            done = resume_checkpoint(resumed, progress, strategy,
                                     () if strategy is None else plugins,
                                     [e.dataset for e in bench.test_stream], device)
            checkpoint.announce(done, n_tasks)
        for t in range(done, n_tasks):
            start = time.perf_counter()
            if from_scratch:
                seed_everything(exp.seed)  # from scratch, same initialisation for every t
                recipe, hist, acc, plugins = plugins_for(t)
                strategy = _make_strategy(spec, cfg, scenario, device, plugins,
                                          hooks.avalanche_loggers)
                # joint: tasks 1..t together; single: task t alone
                stream = bench.train_stream[: t + 1] if spec.joint else bench.train_stream[t]
                strategy.train(stream, eval_streams=[])
            else:
                hist.on_epoch = (lambda task: lambda entry: hooks.on_epoch(task, entry))(t)
                strategy.train(bench.train_stream[t], eval_streams=[])
            seconds.append(time.perf_counter() - start)
            epochs.append(recipe.epochs_trained)
            history.append(list(hist.entries))
            peak_mb.append(peak.peak)
            state_mb.append(held_tensors_mb(strategy, skip=plugins))
            held.append(memory_samples(strategy))
            row = _evaluate(strategy, bench.test_stream, acc)
            accuracy.append(row)
            # (single: one task's model, nothing to tell apart without the task label)
            agnostic.append(None if spec.single else agnostic_accuracy(
                strategy, test_sets, scenario.classes_per_task, t + 1,
                cfg.train.eval_batch_size))
            if valid_bench is not None:
                # the first evaluation of a dataset reads it through a DataLoader, which
                # draws a seed from the global RNG: keep training's random stream untouched
                cuda = [device] if device.type == "cuda" else []
                with torch.random.fork_rng(devices=cuda):
                    valid_accuracy.append(_evaluate(strategy, valid_bench.test_stream, acc))
            hooks.on_experience(t, row)
            if checkpoint is not None:
                checkpoint.save(t + 1, n_tasks, progress,
                                None if from_scratch else capture_strategy(strategy, plugins),
                                device)

        hat_stats = None
        model = strategy.model if strategy is not None else None  # (None: resumed at the end)
        if hasattr(model, "mask_statistics"):
            hat_stats = model.mask_statistics(list(range(n_tasks)))
        params = record_params(exp, cfg)
        # strict JSON: a diverged run's NaN/inf numbers become null, "diverged" true
        return finite_record({
            "schema": SCHEMA_VERSION,
            "scenario": exp.scenario,
            "strategy": exp.strategy,
            "seed": exp.seed,
            "tag": exp.tag,
            "params": params,
            "task_names": [task.name for task in scenario.tasks],
            "accuracy": accuracy,
            "valid_accuracy": valid_accuracy,
            "random_accuracy": [random_accuracy(task) for task in scenario.tasks],
            "epochs": epochs,
            "seconds": seconds,
            "peak_memory_mb": peak_mb,
            "state_mb": state_mb,
            "memory_samples": None if all(h is None for h in held) else held,
            "agnostic_accuracy": None if any(a is None for a in agnostic) else agnostic,
            "history": history,
            "hat": hat_stats,
            "selection": dict(exp.selection) if exp.selection is not None else None,
            "versions": versions(),
            "device": str(device),
            # CPU results depend on torch's thread count (reduction order): say which it was
            "threads": torch.get_num_threads(),
            "diverged": False,
            "created": now_iso(),
        })


def summarize(rec: Mapping[str, Any]) -> str:
    """One line per finished run: final average accuracy, forgetting, time."""
    final = final_average_accuracy(rec["accuracy"])
    forg = forgetting(rec["accuracy"]) if len(rec["accuracy"]) > 1 else 0.0  # NaN for one task
    tag = f" [{rec['tag']}]" if rec.get("tag") else ""
    if rec.get("diverged"):
        tag += " DIVERGED (a loss became NaN/inf)"
    return (f"{rec['strategy']:>8} {rec['scenario']} seed {rec['seed']}{tag}: final acc "
            f"{final:.3f}, forgetting {forg:.3f}, {sum(rec['seconds']):.1f} s")


def pending(
    experiments: Sequence[Experiment], out: Path, log: Callable[[str], None]
) -> tuple[list[Path], list[tuple[Experiment, Path]]]:
    """Record paths of every experiment, and the (experiment, path) pairs still to run: those
    without a complete record (a killed grid resumes where it stopped)."""
    paths, todo = [], []
    for exp in experiments:
        path = record_path(out, exp.scenario, exp.strategy, exp.seed, exp.tag)
        paths.append(path)
        if is_complete(path):
            log(f"skip {path.name}: complete record exists")
        else:
            todo.append((exp, path))
    return paths, todo


def check_existing(experiments: Sequence[Experiment], out: Path) -> None:
    """Refuse (BenchmarkError, before anything runs) when a complete record at an
    experiment's path holds a run with other hyperparameters: resuming would silently keep
    it (e.g. a record of the paper's defaults where a tuned preset now runs)."""
    import json

    from .errors import BenchmarkError
    from .records import RecordError, read_record

    for exp in experiments:
        path = record_path(out, exp.scenario, exp.strategy, exp.seed, exp.tag)
        if not path.exists():
            continue
        if not path.is_file():
            raise BenchmarkError(
                f"{path} is in the way of this run's record (not a file); remove it or use "
                "another --out"
            )
        try:
            rec = read_record(path)
        except RecordError:
            continue  # incomplete: it is rerun and replaced
        sspec = get_scenario(exp.scenario)
        cfg = resolve(exp, sspec.valid_fraction, sspec.embedded, sspec.network)
        want = json.loads(json.dumps(record_params(exp, cfg)))
        have = rec.get("params", {})
        for section in sorted(want):
            for key in sorted(want[section]):
                old = have.get(section, {}).get(key, "(missing)")
                if old != want[section][key]:
                    raise BenchmarkError(
                        f"{path} holds a run with {section}.{key}={old}, this command runs "
                        f"{section}.{key}={want[section][key]}; use another --out, or delete "
                        "that record to rerun it"
                    )


def thread_mix_warning(experiments: Sequence[Experiment], out: Path, threads: int,
                       device: str = "cpu") -> str | None:
    """One line when this command would add CPU runs with ``threads`` torch threads to a
    folder whose CPU records (of the same scenarios) say they used another count: results
    on CPU depend on the thread count, so the report would compare mixed settings. None
    when nothing is to run, or nothing differs (records without ``threads`` are not known)."""
    from .records import RecordError, read_record

    runs = Path(out) / "runs"
    if str(device) != "cpu" or not runs.is_dir():
        return None
    if all(is_complete(record_path(out, e.scenario, e.strategy, e.seed, e.tag))
           for e in experiments):
        return None  # nothing is written
    scenarios = {e.scenario for e in experiments}
    other: dict[int, list[str]] = {}
    for path in sorted(runs.glob("*.json")):
        try:
            rec = read_record(path)
        except RecordError:
            continue
        used = rec.get("threads")
        if (rec["scenario"] in scenarios and rec.get("device") == "cpu"
                and isinstance(used, int) and used != threads):
            other.setdefault(used, []).append(path.name)
    if not other:
        return None
    counts = ", ".join(f"{len(names)} with {n}" for n, names in sorted(other.items()))
    first = min(other)
    return (f"warning: {runs} holds records trained with other torch thread counts ({counts}, "
            f"e.g. {other[first][0]}); this command trains with {threads}, and CPU results "
            f"depend on it: give --threads {first} to match, or use another --out")


def run_and_write(
    exp: Experiment,
    path: Path,
    scenario: Scenario,
    *,
    out: Path,
    data_root: Path,
    device: str,
    tracker: Any = None,
    on_epoch: Callable[[int, dict], None] | None = None,
    checkpoints: bool = True,
    keep_checkpoints: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run ``exp``, write its record atomically to ``path`` and return it; the tracker (if
    any) follows the run and is finished or aborted.

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
    if checkpoints:
        resume_state = getattr(tracker, "resume_state", None)  # (RunTracker's: W&B run id)
        checkpoint = RunCheckpoints.for_run(
            out, exp, device, log=log or tqdm.write,
            extra=None if resume_state is None else lambda: {"tracker": resume_state()})
    try:
        rec = run_experiment(exp, scenario, data_root=data_root, device=device, hooks=hooks,
                             checkpoint=checkpoint)
        if tracker is None:
            write_record(path, rec)
        else:
            _write_tracked(path, rec, tracker, out)
    except BaseException:
        if tracker is not None:
            tracker.abort()
        raise
    if checkpoint is not None and not keep_checkpoints:
        remove_checkpoints(checkpoint.folder)
    return rec


def new_tracker(factory: Callable[..., Any] | None, exp: Experiment, out: Path) -> Any:
    """The run's tracker from ``factory`` (None: not tracked); a run that resumes from a
    checkpoint continues the W&B run its interrupted part started (same id and step)."""
    if factory is None:
        return None
    saved = (saved_extra(run_folder(out, exp)) or {}).get("tracker")
    if not saved:
        return factory(exp)
    import inspect

    params = inspect.signature(factory).parameters.values()
    takes = any(p.name == "resume" or p.kind is p.VAR_KEYWORD for p in params)
    return factory(exp, resume=saved) if takes else factory(exp)


def _write_tracked(path: Path, rec: dict, tracker: Any, out: Path) -> None:
    """Write the record of a tracked run so that it exists only once its W&B run is complete:
    the record is written (validated, on disk) beside ``path`` under a name that is not a
    record's (``.<name>.pending``), the tracker finishes the W&B run, then the record takes its
    place. An interrupt before that leaves no record, so the rerun runs and tracks it again
    (a record written first would be skipped for good, its W&B run aborted or empty)."""
    import os

    staged = path.with_name(f".{path.name}.pending")
    write_record(staged, rec)
    try:
        tracker.finish(rec, out)
        os.replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


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
    """Run every experiment whose complete record is missing; return all record paths.

    A run that raises does not stop the others: it is reported (``failed <record>: <error>``)
    and :class:`~benchmark.errors.RunsFailed` is raised once the others have run (as
    ``benchmark.parallel.run_pool``). Ctrl-C (KeyboardInterrupt) stops at once. A run with a
    checkpoint resumes from it (``run_and_write``)."""
    from .errors import RunsFailed, brief

    log = log or (lambda msg: tqdm.write(msg))
    failures: list[tuple[str, str]] = []
    paths, todo = pending(experiments, out, log)
    if todo:
        (Path(out) / "runs").mkdir(parents=True, exist_ok=True)
    cache: dict[tuple[str, int], Scenario] = {}
    # disable=None: bars only on a terminal (no log spam in CI or files)
    show = None if progress else True
    bar = tqdm(todo, desc="runs", unit="run", disable=show, position=0)
    for exp, path in bar:
        bar.set_postfix_str(f"{exp.strategy} s{exp.seed}")
        try:
            key = (exp.scenario, exp.seed)
            if key not in cache:
                cache.clear()  # one scenario in memory at a time
                cache[key] = get_scenario(exp.scenario).build(exp.seed, Path(data_root))
            scenario = cache[key]
            ebar = tqdm(desc=f"  {exp.strategy} task 1/{scenario.n_tasks}", unit="ep",
                        disable=show, position=1, leave=False)
            tracker = new_tracker(tracker_factory, exp, out)

            def on_epoch(task, entry, ebar=ebar, n=scenario.n_tasks, name=exp.strategy):
                ebar.set_description(f"  {name} task {task + 1}/{n}")
                ebar.update(1)

            try:
                rec = run_and_write(exp, path, scenario, out=out, data_root=data_root,
                                    device=device, tracker=tracker, on_epoch=on_epoch,
                                    checkpoints=checkpoints, keep_checkpoints=keep_checkpoints,
                                    log=log)
            finally:
                ebar.close()
        except Exception as err:  # noqa: BLE001 - reported; the other runs go on
            failures.append((path.name, brief(err)))
            log(f"failed {path.name}: {brief(err)}")
            continue
        log(summarize(rec))
    if failures:
        raise RunsFailed(failures, len(todo))
    return paths


def experiments_for(
    scenario: str, strategies: Iterable[str], seeds: Iterable[int], overrides: Overrides,
    tag: str = "",
) -> list[Experiment]:
    """The product strategies × seeds, seeds outermost (one scenario build per seed)."""
    return [Experiment(scenario, s, seed, overrides, tag) for seed in seeds for s in strategies]
