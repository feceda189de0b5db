"""The run loop: one experiment (scenario, strategy, seed, overrides) → its run record.

``run_experiment`` trains each experience in order, evaluates every test experience after
each, and returns the record (a dict, see ``docs/record-schema.md``); what it measures
besides accuracy is in ``benchmark.run.measures``. Running a list of experiments and writing
their records is ``benchmark.run.executors``.
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.training.plugins import EvaluationPlugin

from reports.metrics import auroc
from reports.schema import FIELDS, RecordError, field_names, protocol_of
from strategies import (
    FastDataPlugin,
    RecipeConfig,
    TrainingRecipePlugin,
    get_strategy,
    make_optimizer,
)
from strategies.common.expanding import ExpandingHeadNet
from strategies.hat import flushing_denormals
from strategies.registry import EXPANDING, BuildContext
from strategies.training.agnostic import agnostic_accuracy, expanding_head_accuracy
from strategies.training.calibration import CalibrationMemory, calibrated, fit_calibration
from strategies.training.clipping import GradientClipPlugin
from strategies.training.recipe import split_indices
from strategies.training.task_inference import SCORES, infer, task_inference_rows, task_logits

from ..checkpoints import RunCheckpoints
from ..checkpoints import capture as capture_strategy
from ..checkpoints import resume as resume_checkpoint
from ..data.protocol import class_incremental, class_random_accuracy
from ..data.scenarios import Scenario, get_scenario, random_accuracy, to_benchmark
from ..experiment import Experiment, ResolvedConfig, record_params, resolve_for, select_task
from ..networks import build_model
from ..records import SCHEMA_VERSION, finite_record, now_iso, versions
from .measures import _Accuracy, _History, _PeakMemory, held_tensors_mb, memory_samples


def seed_everything(seed: int) -> None:
    """Seed every RNG."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def validation_sets(scenario: Scenario, recipe: str, valid_fraction: float,
                    seed: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Every task's held-out validation split as ``(x, y)``, or None when the recipe holds
    nothing out (``train.recipe=fixed``).

    The indices are the training recipe's own (``split_indices`` on the task's training
    data, seeded by the run's seed and the task's position), so these are exactly the samples
    the recipe kept out of training."""
    if recipe != "paper" or not valid_fraction:
        return None
    sets = []
    for u, task in enumerate(scenario.tasks):
        _, idx = split_indices(len(task.train_y), valid_fraction, seed, u)
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        sets.append((task.train_x[idx_t], task.train_y[idx_t]))
    return sets


def validation_benchmark(scenario: Scenario,
                         sets: Sequence[tuple[torch.Tensor, torch.Tensor]]):
    """Each task's validation set ``sets[u]`` (``validation_sets``) as the test stream of a
    benchmark (task labels as in the scenario)."""
    valid = [replace(task, test_x=x, test_y=y) for task, (x, y) in zip(scenario.tasks, sets,
                                                                        strict=True)]
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


def _make_strategy(spec, cfg: ResolvedConfig, scenario: Scenario, device, plugins, loggers,
                   seed: int = 0):
    options = spec.model_options(cfg.strategy) if spec.model_options is not None else {}
    model = build_model(cfg.model, scenario.input_shape, scenario.classes_per_task,
                        gated=spec.gated, **options).to(device)
    if expanding(cfg, spec):
        model = ExpandingHeadNet.from_multihead(model)
    optimizer = make_optimizer(model.parameters(), cfg.train)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        evaluator = EvaluationPlugin(loggers=list(loggers))
    ctx = BuildContext(model=model, optimizer=optimizer, train=cfg.train, plugins=plugins,
                       device=device, evaluator=evaluator)
    strategy = spec.build(ctx, cfg.strategy)
    if not spec.clips_itself:
        # last, so that it sees the gradients every other plugin left (frozen ones dropped)
        strategy.plugins.append(GradientClipPlugin(cfg.train.clipgrad))
    if cfg.inference is not None and cfg.inference.calibration_samples:
        # (the strategy's state, not the runner's: checkpointed, counted in state_mb and
        # memory_samples)
        strategy.plugins.append(CalibrationMemory(cfg.inference.calibration_samples, seed))
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


def expanding(cfg: ResolvedConfig, spec) -> bool:
    """Whether the run trains one expanding head over every class seen (the class-incremental
    protocol, for a strategy whose network reads that way: ``StrategySpec.class_protocol``)."""
    return cfg.scenario.protocol == "class" and spec.class_protocol == EXPANDING


@dataclass
class TaskRow:
    """What one experience gives the record: one entry of each per-task field (the names are
    the record's, see ``docs/record-schema.md``)."""

    accuracy: list[float]
    valid_accuracy: list[float] | None
    epochs: int
    seconds: float
    history: list[dict]
    peak_memory_mb: float
    state_mb: float
    memory_samples: int | None
    agnostic_accuracy: list[float] | None
    valid_agnostic_accuracy: list[float] | None = None
    #: task inference (class protocol, a strategy whose weights depend on the task): per
    #: score, this row of each of its matrices (``reports.schema``'s ``task_inference``)
    task_inference: dict[str, dict[str, list[float] | None]] | None = None


#: the record's per-task fields, in ``TaskRow``'s order (a checkpoint keeps them as columns)
ROW_FIELDS = tuple(f.name for f in fields(TaskRow))


def columns(rows: Sequence[TaskRow], validated: bool,
            class_protocol: bool = False) -> dict[str, list | None]:
    """The rows as the record's per-task fields (``valid_accuracy``: None unless
    ``validated``; ``valid_agnostic_accuracy``: None unless also ``class_protocol``)."""
    out: dict[str, list | None] = {name: [getattr(r, name) for r in rows] for name in ROW_FIELDS}
    if not validated:
        out["valid_accuracy"] = None
    if not (validated and class_protocol):
        out["valid_agnostic_accuracy"] = None
    if not class_protocol:
        out["task_inference"] = None
    return out


def rows_of(cols: Mapping[str, list | None]) -> list[TaskRow]:
    """``columns`` back into rows (a field that is None gives None in every row)."""
    n = len(cols["accuracy"] or [])
    return [TaskRow(**{name: None if cols[name] is None else cols[name][i]
                       for name in ROW_FIELDS}) for i in range(n)]


@dataclass
class _Run:
    """One run's fixed parts: what every experience's training and measuring use."""

    exp: Experiment
    cfg: ResolvedConfig
    spec: Any
    scenario: Scenario
    device: torch.device
    hooks: RunHooks
    bench: Any
    valid_bench: Any
    test_sets: list
    #: each task's validation split as ``(x, y)`` (None when nothing is held out)
    valid_sets: list | None = None
    #: the scenario with per-task labels, as built (its random classifiers)
    source: Scenario | None = None
    peak: _PeakMemory = field(default_factory=_PeakMemory)

    @property
    def class_protocol(self) -> bool:
        return self.cfg.scenario.protocol == "class"

    def columns(self, rows: Sequence[TaskRow]) -> dict[str, list | None]:
        return columns(rows, self.valid_sets is not None, self.class_protocol)

    def plugins_for(self, task_index: int):
        """The runner's own plugins for a strategy trained from ``task_index`` on."""
        train = self.cfg.train
        recipe = TrainingRecipePlugin(
            RecipeConfig(mode=train.recipe, valid_fraction=train.valid_fraction,
                         patience=train.patience, lr_factor=train.lr_factor,
                         lr_min=train.lr_min, seed=self.exp.seed),
            lr=train.lr,
        )
        hist = _History(recipe, lambda entry: self.hooks.on_epoch(task_index, entry))
        acc = _Accuracy()
        return recipe, hist, acc, [FastDataPlugin(), recipe, hist, acc, self.peak]

    def new_strategy(self, plugins):
        return _make_strategy(self.spec, self.cfg, self.scenario, self.device, plugins,
                              self.hooks.avalanche_loggers, self.exp.seed)


def run_experiment(
    exp: Experiment,
    scenario: Scenario | None = None,
    *,
    data_root: Path = Path("data"),
    device: str | torch.device = "cpu",
    hooks: RunHooks | None = None,
    checkpoint: RunCheckpoints | None = None,
    cfg: ResolvedConfig | None = None,
) -> dict:
    """Train ``exp`` and return its run record (not written).

    ``checkpoint``: after every experience the run's state is written there, and a run with
    a checkpoint resumes from it (``benchmark.checkpoints``: the same record as without
    the interruption, timing fields aside). ``cfg``: the run's resolved config, when the
    caller resolved it already (``resolve_for(exp, scenario)``).

    Denormal floats are flushed to zero for the duration of the run, for every strategy
    alike (HAT's near-zero gates make CPU matrix products 2–3× slower otherwise, see
    ``HATConfig.flush_denormal``), unless the strategy's own ``flush_denormal`` setting is
    false; the caller's mode is restored afterwards.
    """
    if scenario is None:
        scenario = get_scenario(exp.scenario).build(exp.seed, Path(data_root))
    if cfg is None:
        cfg = resolve_for(exp, scenario)
    with _flushed_denormals(getattr(cfg.strategy, "flush_denormal", True)):
        source = select_task(scenario, cfg.scenario.task)
        spec = get_strategy(exp.strategy)
        # the class-incremental protocol: global labels for a network with an expanding head
        scenario = class_incremental(source) if expanding(cfg, spec) else source
        # each task's held-out validation split (the recipe's indices) as an eval stream: the
        # validation accuracy matrix that hyperparameter selection reads (never the test data)
        valid_sets = None if spec.joint else validation_sets(
            scenario, cfg.train.recipe, cfg.train.valid_fraction, exp.seed)
        # (an expanding head is evaluated on the tensors: no Avalanche stream needed)
        valid_bench = None if valid_sets is None or expanding(cfg, spec) else (
            validation_benchmark(scenario, valid_sets))
        run = _Run(exp, cfg, spec, scenario, torch.device(device), hooks or RunHooks(),
                   to_benchmark(scenario), valid_bench,
                   [(task.test_x, task.test_y) for task in scenario.tasks], valid_sets, source)
        rows, strategy = _train_all(run, checkpoint)
        return _record(run, rows, strategy)


def _train_all(run: _Run, checkpoint: RunCheckpoints | None) -> tuple[list[TaskRow], Any]:
    """Train every experience in order (from the checkpoint's, when there is one); the rows
    and the last strategy (None: resumed after the last experience, nothing trained)."""
    spec, n_tasks = run.spec, run.scenario.n_tasks
    from_scratch = spec.reference_only
    seed_everything(run.exp.seed)
    strategy = None
    if not from_scratch:
        recipe, hist, acc, plugins = run.plugins_for(0)
        strategy = run.new_strategy(plugins)
    rows: list[TaskRow] = []
    done = 0
    resumed = checkpoint.load() if checkpoint is not None else None
    if resumed is not None:
        # the record's rows so far: what a checkpoint keeps and a resumed run continues
        cols: dict[str, list | None] = run.columns([])
        done = resume_checkpoint(resumed, cols, strategy, () if strategy is None else plugins,
                                 [e.dataset for e in run.bench.test_stream], run.device)
        rows = rows_of(cols)
        checkpoint.announce(done, n_tasks)
    for t in range(done, n_tasks):
        start = time.perf_counter()
        if from_scratch:
            seed_everything(run.exp.seed)  # from scratch, same initialisation for every t
            recipe, hist, acc, plugins = run.plugins_for(t)
            strategy = run.new_strategy(plugins)
            # joint: tasks 1..t together; single: task t alone
            stream = run.bench.train_stream[: t + 1] if spec.joint else run.bench.train_stream[t]
            strategy.train(stream, eval_streams=[])
        else:
            hist.on_epoch = (lambda task: lambda entry: run.hooks.on_epoch(task, entry))(t)
            strategy.train(run.bench.train_stream[t], eval_streams=[])
        seconds = time.perf_counter() - start
        rows.append(_measure(run, t, strategy, seconds, recipe, hist, acc, plugins))
        run.hooks.on_experience(t, rows[-1].accuracy)
        if checkpoint is not None:
            checkpoint.save(t + 1, n_tasks, run.columns(rows),
                            None if from_scratch else capture_strategy(strategy, plugins),
                            run.device)
    return rows, strategy


def _measure(run: _Run, t: int, strategy, seconds: float, recipe, hist, acc,
             plugins) -> TaskRow:
    """The row of experience ``t``, just trained: cost, state, and the evaluations."""
    epochs, history = recipe.epochs_trained, list(hist.entries)
    peak_mb = run.peak.peak
    state_mb = held_tensors_mb(strategy, skip=plugins)
    held = memory_samples(strategy)
    row = TaskRow(accuracy=[], valid_accuracy=None, epochs=epochs, seconds=seconds,
                  history=history, peak_memory_mb=peak_mb, state_mb=state_mb,
                  memory_samples=held, agnostic_accuracy=None)
    if expanding(run.cfg, run.spec):
        _evaluate_expanding(run, strategy, row)
    else:
        _evaluate_heads(run, t, strategy, acc, row)
    return row


def _evaluate_inference(run: _Run, t: int, strategy, row: TaskRow) -> None:
    """Task inference over the tasks learned so far (the class protocol of a strategy whose
    weights depend on the task): every score's Class-IL and task-prediction rows, on the test
    and the validation sets, from one pass per task; the configured score's Class-IL rows are
    the record's ``agnostic_accuracy`` and its validation twin. After the last task, each
    score's AUROC per task (a task's test samples against the other tasks', by its score)."""
    size, seen = run.cfg.train.eval_batch_size, t + 1
    maps = _calibration(strategy, seen, run.device, size)
    test = task_inference_rows(strategy.model, run.test_sets, seen, run.device, size,
                               calibration=maps)
    valid = None if run.valid_sets is None else task_inference_rows(
        strategy.model, run.valid_sets, seen, run.device, size, calibration=maps)
    chosen = run.cfg.inference.task_score
    row.agnostic_accuracy = test[chosen].class_il
    row.valid_agnostic_accuracy = None if valid is None else valid[chosen].class_il
    last = seen == run.scenario.n_tasks
    row.task_inference = {s: {
        "agnostic_accuracy": r.class_il,
        "valid_agnostic_accuracy": None if valid is None else valid[s].class_il,
        "task_prediction_accuracy": r.task_prediction,
        "auroc": task_aurocs(r.scores) if last else None,
    } for s, r in test.items()}


def _calibration(strategy, seen: int, device, batch_size: int) -> dict[str, Any] | None:
    """Per score, the per-task affine map fitted on the strategy's calibration memory (its
    samples of tasks 0..seen-1, scored among those tasks); None without such a memory."""
    memory = next((p for p in strategy.plugins if isinstance(p, CalibrationMemory)), None)
    if memory is None or len(memory.memory) == 0:
        return None
    x, _, t = memory.samples()
    chunks = [task_logits(strategy.model, x[i:i + batch_size].to(device), list(range(seen)))
              for i in range(0, len(t), batch_size)]
    z = [torch.cat([c[u] for c in chunks]) for u in range(seen)]
    return {s: partial(calibrated, params=fit_calibration(infer(z, s).scores, t.to(device)))
            for s in SCORES}


def task_aurocs(scores: Sequence[torch.Tensor]) -> list[float]:
    """Per task u, the AUROC of task u's score: its own samples (``scores[u][:, u]``) against
    every other task's samples (``scores[v][:, u]``)."""
    return [auroc(scores[u][:, u].tolist(),
                  torch.cat([scores[v][:, u] for v in range(len(scores)) if v != u]).tolist()
                  if len(scores) > 1 else [])
            for u in range(len(scores))]


def _evaluate_heads(run: _Run, t: int, strategy, acc: _Accuracy, row: TaskRow) -> None:
    """A multi-head network's evaluations: each task's test (and validation) accuracy with
    its task label given (Avalanche's evaluation loop), and the task-agnostic accuracy over
    the tasks seen (the headline of the class-incremental protocol for a strategy whose
    training already ranges over every class seen)."""
    row.accuracy = _evaluate(strategy, run.bench.test_stream, acc)
    if run.cfg.inference is not None:
        _evaluate_inference(run, t, strategy, row)
    # (single: one task's model, nothing to tell apart without the task label)
    elif not run.spec.single:
        row.agnostic_accuracy = agnostic_accuracy(
            strategy, run.test_sets, run.scenario.classes_per_task, t + 1,
            run.cfg.train.eval_batch_size)
    if run.valid_bench is not None:
        # the first evaluation of a dataset reads it through a DataLoader, which draws a
        # seed from the global RNG: keep training's random stream untouched
        cuda = [run.device] if run.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            row.valid_accuracy = _evaluate(strategy, run.valid_bench.test_stream, acc)
        if run.class_protocol and run.cfg.inference is None:
            row.valid_agnostic_accuracy = agnostic_accuracy(
                strategy, run.valid_sets, run.scenario.classes_per_task, t + 1,
                run.cfg.train.eval_batch_size)


def _evaluate_expanding(run: _Run, strategy, row: TaskRow) -> None:
    """An expanding head's evaluations, each set read once: Task-IL (each task's own
    columns) on every task, Class-IL (every class seen) on the tasks seen."""
    size = run.cfg.train.eval_batch_size
    row.accuracy, row.agnostic_accuracy = expanding_head_accuracy(
        strategy.model, run.test_sets, run.device, size)
    if run.valid_sets is not None:
        row.valid_accuracy, row.valid_agnostic_accuracy = expanding_head_accuracy(
            strategy.model, run.valid_sets, run.device, size)


def _record(run: _Run, rows: Sequence[TaskRow], strategy) -> dict:
    """The run record of ``rows`` (strict JSON: a diverged run's NaN/inf numbers become
    null, ``diverged`` true)."""
    exp, scenario = run.exp, run.scenario
    cols = run.columns(rows)
    model = strategy.model if strategy is not None else None  # (None: resumed at the end)
    hat_stats = None
    if hasattr(model, "mask_statistics"):
        hat_stats = model.mask_statistics(list(range(scenario.n_tasks)))
    held, agnostic = cols["memory_samples"], cols["agnostic_accuracy"]
    return finite_record(_as_record({
        "schema": SCHEMA_VERSION,
        "scenario": exp.scenario,
        "strategy": exp.strategy,
        "seed": exp.seed,
        "tag": exp.tag,
        "params": record_params(exp, run.cfg),
        "task_names": [task.name for task in scenario.tasks],
        "accuracy": cols["accuracy"],
        "valid_accuracy": cols["valid_accuracy"],
        "random_accuracy": [random_accuracy(task) for task in run.source.tasks],
        "epochs": cols["epochs"],
        "seconds": cols["seconds"],
        "peak_memory_mb": cols["peak_memory_mb"],
        "state_mb": cols["state_mb"],
        "memory_samples": None if all(h is None for h in held) else held,
        "agnostic_accuracy": None if any(a is None for a in agnostic) else agnostic,
        "history": cols["history"],
        "hat": hat_stats,
        "selection": dict(exp.selection) if exp.selection is not None else None,
        "versions": versions(),
        "device": str(run.device),
        # CPU results depend on torch's thread count (reduction order): say which it was
        "threads": torch.get_num_threads(),
        "diverged": False,
        "created": now_iso(),
        **_protocol_fields(run, cols),
    }))


def _protocol_fields(run: _Run, cols: Mapping[str, list | None]) -> dict[str, Any]:
    """The fields of a class-incremental record only (``reports.schema``)."""
    if not run.class_protocol:
        return {}
    fields = {"valid_agnostic_accuracy": cols["valid_agnostic_accuracy"],
              "agnostic_random_accuracy": class_random_accuracy(run.source)}
    rows = cols["task_inference"]
    if rows is not None and all(r is not None for r in rows):
        chosen = run.cfg.inference.task_score
        fields["task_prediction_accuracy"] = [r[chosen]["task_prediction_accuracy"]
                                              for r in rows]
        fields["task_inference"] = {"score": chosen, "scores": {
            s: {"agnostic_accuracy": [r[s]["agnostic_accuracy"] for r in rows],
                "valid_agnostic_accuracy": None if rows[0][s]["valid_agnostic_accuracy"] is None
                else [r[s]["valid_agnostic_accuracy"] for r in rows],
                "task_prediction_accuracy": [r[s]["task_prediction_accuracy"] for r in rows],
                "auroc": rows[-1][s]["auroc"]}
            for s in rows[0]}}
    return fields


def _as_record(values: Mapping[str, Any]) -> dict:
    """``values`` as a record: exactly the fields of the record contract
    (``reports.schema.FIELDS``), in its order."""
    names = field_names(protocol_of(values))
    # (a protocol's fields that not every strategy writes, e.g. task inference's, may be absent)
    optional = {f.name for f in FIELDS if f.protocol is not None and not f.written
                and f.name != "valid_agnostic_accuracy"}
    wrong = (set(values) - set(names)) | (set(names) - set(values) - optional)
    if wrong:
        raise RecordError(f"the runner's record fields differ from the record contract's: "
                          f"{sorted(wrong)}")
    return {name: values[name] for name in names if name in values}
