"""What one run is and what it uses: ``Experiment`` and its resolved settings.

``resolve`` validates an experiment's overrides and fills the scenario's and the strategy's
defaults (raises ``ConfigError``); ``record_params`` is the record's ``params``;
``run_settings`` is everything a run's results depend on (params, versions, device, torch
threads). The plan, the existing-record check, the checkpoint fingerprint and the run itself
all compare against ``run_settings``, so "what does this run use?" has one answer.
Pure: no training, no files written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from strategies import ConfigError, TrainConfig, get_strategy
from strategies.common.config import check_count, from_overrides, to_public_dict
from strategies.registry import INFERENCE, STRATEGIES
from strategies.training.recipe import n_held_out

from .data.scenarios import MIXTURE_SOURCES, SCENARIOS, Scenario, get_scenario
from .networks import DEFAULT_BLOCKS, DEFAULT_HIDDEN, RESNETS, ModelConfig, check_network
from .records import versions

Overrides = Mapping[str, Mapping[str, Any]]

#: network defaults on the embedded scenarios (the MLP's width; other families keep theirs)
EMBEDDED_MODEL = {"hidden": 100}
#: each scenario's input shape (its spec's ``input_shape``), known before any data are read:
#: the network is checked against it up front
INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    name: spec.input_shape for name, spec in SCENARIOS.items()}


@dataclass(frozen=True)
class Experiment:
    """One run: what ``run_experiment`` needs, all typed."""

    scenario: str
    strategy: str
    seed: int
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tag: str = ""
    #: how the strategy's hyperparameters were selected on validation (a tuned preset's block
    #: for this strategy, see ``benchmark.tuning``), copied into the record; None: not selected
    selection: Mapping[str, Any] | None = None

    @property
    def protocol(self) -> str:
        """``scenario.protocol`` as given (``task`` unless set; ``resolve`` validates it)."""
        return str(self.overrides.get("scenario", {}).get("protocol", "task"))


@dataclass(frozen=True)
class ScenarioConfig:
    """``scenario.*`` overrides: what to take from the built scenario."""

    #: train only this task (a task name of the scenario, e.g. ``mnist`` in ``mixture`` or
    #: ``digits:0-1`` in ``split-digits``), alone: the paper's compression experiment
    task: str | None = None
    #: ``task``: task-incremental (the paper's: a head per task, the task label given at
    #: test); ``class``: class-incremental (one prediction over every class seen, no task
    #: label at test; ``docs/class-incremental.md``)
    protocol: Literal["task", "class"] = "task"


@dataclass(frozen=True)
class InferenceConfig:
    """``<strategy>.task_score``: how a strategy whose weights depend on the task (hat,
    packnet, pnn, pathnet) predicts in the class-incremental protocol, the task score of task
    inference (``strategies.training.task_inference.SCORES``; the published HAT_CIL uses
    max_softmax). Every score is measured in every such run (it changes no training); this
    one is the record's headline, and ``tune`` selects it on validation. A key of the
    strategy's section, recorded in its ``params`` block of class-incremental records only."""

    task_score: Literal["max_softmax", "max_logit", "energy", "neg_entropy"] = "max_softmax"
    #: > 0: the scores are calibrated per task (``strategies.training.calibration``) on a
    #: memory of this many training samples, balanced over the tasks seen (the record's
    #: ``memory_samples``; give the rehearsal methods' budget); 0: no memory, raw scores
    calibration_samples: int = 0

    def check_in(self, strategy: str) -> None:
        """ConfigError unless the values are in range, naming the key as given
        (``<strategy>.calibration_samples``: these keys live in the strategy's section;
        ``from_overrides`` calls this)."""
        check_count(f"{strategy}.calibration_samples", self.calibration_samples, 0)


#: the keys of a strategy's section that are its task inference's (``InferenceConfig``)
INFERENCE_KEYS = ("task_score", "calibration_samples")


def split_inference(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A strategy section's overrides as (the strategy's own, its task inference's)."""
    own = dict(overrides)
    return own, {k: own.pop(k) for k in list(own) if k in INFERENCE_KEYS}


@dataclass(frozen=True)
class ResolvedConfig:
    train: TrainConfig
    model: ModelConfig
    strategy: Any
    scenario: ScenarioConfig = ScenarioConfig()
    #: set for a run that predicts by task inference (class protocol); None otherwise
    inference: InferenceConfig | None = None


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
    strat_over, inference_over = split_inference(exp.overrides.get(exp.strategy, {}))
    strat = spec.config(strat_over)
    if hasattr(strat, "check_combination"):
        strat.check_combination()
    train, strat = _resolve_clipgrad(spec, train, strat, exp.overrides.get("train", {}),
                                     strat_over)
    scen = from_overrides(ScenarioConfig, exp.overrides.get("scenario", {}), "scenario")
    if scen.protocol == "class" and scen.task is not None:
        raise ConfigError(
            f"scenario.task={scen.task} trains one task alone: nothing to tell apart without "
            "the task label; drop scenario.task, or run it with scenario.protocol=task")
    if scen.protocol == "class" and spec.class_protocol is None:
        if spec.single:
            why = "it trains one task alone: nothing to tell apart without the task label"
        elif not spec.task_agnostic:
            why = ("its weights are chosen by the task label, and no task-inference rule is "
                   "implemented")
        else:
            why = ("its StrategySpec declares no class_protocol: say how its network reads "
                   "over every class seen")
        raise ConfigError(
            f"{exp.strategy} has no class-incremental prediction ({why}): run it with "
            "scenario.protocol=task, or leave it out of the class-incremental runs")
    inference = None
    if scen.protocol == "class" and spec.class_protocol == INFERENCE:
        inference = from_overrides(InferenceConfig, inference_over, exp.strategy)
    elif inference_over:
        raise ConfigError(
            f"{exp.strategy}.{next(iter(inference_over))} applies to the class-incremental "
            "protocol of a strategy that predicts by task inference (hat, packnet, pnn, "
            "pathnet with scenario.protocol=class); drop it")
    return ResolvedConfig(train, model, strat, scen, inference)


def _resolve_model(strategy: str, model_over: Mapping[str, Any], embedded: bool,
                   network: str) -> ModelConfig:
    """``model.*`` overrides with the scenario's family and the family's defaults filled."""
    model = from_overrides(ModelConfig, model_over, "model")
    if model.family is None:
        model = replace(model, family=network)
    family = model.family
    supported = get_strategy(strategy).families
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

    A strategy that clips inside its own plugin (``spec.clips_itself``: a ``clipgrad`` field
    of its config, e.g. applied between its gradient conditioning and the step) takes
    ``train.clipgrad`` as that value; giving both with different values is an error."""
    if not spec.clips_itself:
        if train.clipgrad is None:
            train = replace(train, clipgrad=spec.clipgrad)
        return train, strat
    own = strat.clipgrad
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
    # only the scenario settings that differ from the defaults (``{"task": ...}``,
    # ``{"protocol": "class"}``): a task-incremental run of every task has no such block
    default = to_public_dict(ScenarioConfig())
    scenario = {k: v for k, v in to_public_dict(cfg.scenario).items() if v != default[k]}
    if scenario:
        params["scenario"] = scenario
    if cfg.inference is not None:
        params[exp.strategy].update(to_public_dict(cfg.inference))
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
        return list(MIXTURE_SOURCES)
    return None


def resolve_for(exp: Experiment, scenario: Scenario | None = None,
                input_shape: Sequence[int] | None = None) -> ResolvedConfig:
    """``resolve`` with the defaults of ``exp``'s scenario: the built ``scenario``'s (its
    validation fraction and input shape; its tasks' sizes are checked against the validation
    split: ``check_valid_fraction``), or without it its spec's (no data are read; the
    network is checked against ``input_shape`` when given: the spec's is ``INPUT_SHAPES``)."""
    spec = get_scenario(exp.scenario)
    if scenario is not None:
        cfg = resolve(exp, scenario.valid_fraction, spec.embedded, spec.network,
                      scenario.input_shape)
        check_valid_fraction(cfg, scenario)
        return cfg
    return resolve(exp, spec.valid_fraction, spec.embedded, spec.network, input_shape)


def max_valid_fraction(n: int, n_classes: int) -> float:
    """The largest ``train.valid_fraction`` (3 decimals, more where 3 give none) that leaves a
    task of ``n`` training samples at least ``n_classes`` of them to train on; 0 when none
    does (the recipe holds out at least one sample)."""
    room = n - n_classes  # the most samples validation may take
    if room < 1:
        return 0.0
    if n_classes <= 1:
        return 0.999  # (the recipe always leaves one sample to train on)
    for digits in range(3, 10):
        scale = 10**digits
        f = math.floor((room + 0.5) / n * scale) / scale
        while f > 0 and n - n_held_out(n, f) < n_classes:
            f = round(f - 1 / scale, digits)
        if f > 0:
            return f
    return 0.0


def check_valid_fraction(cfg: ResolvedConfig, scenario: Scenario) -> None:
    """ConfigError unless every task the run trains (``scenario.task``'s alone, when given)
    keeps at least one training sample per class after the paper's recipe holds out
    ``train.valid_fraction`` (at least one sample) for validation; the message gives the
    largest value the scenario allows."""
    fraction = cfg.train.valid_fraction
    if cfg.train.recipe != "paper" or not fraction:
        return
    tasks = select_task(scenario, cfg.scenario.task).tasks
    for task in tasks:
        n = len(task.train_y)
        kept = n - n_held_out(n, fraction)
        if kept >= task.n_classes:
            continue
        best = min(max_valid_fraction(len(t.train_y), t.n_classes) for t in tasks)
        where = scenario.name + (f" task {tasks[0].name}" if cfg.scenario.task else "")
        fix = (f"give train.valid_fraction <= {best:g} for {where}" if best > 0 else
               "use train.recipe=fixed (no validation split)")
        raise ConfigError(
            f"train.valid_fraction={fraction:g} leaves task {task.name} of {scenario.name} "
            f"{kept} training sample{'s' * (kept != 1)} for its {task.n_classes} classes: "
            f"{fix} (each task keeps at least one training sample per class)")


def run_settings(exp: Experiment, device: Any, threads: int,
                 cfg: ResolvedConfig | None = None) -> dict[str, Any]:
    """Everything the results of ``exp`` depend on, as JSON values: scenario, strategy, seed,
    tag, the record's ``params``, the versions, the device and torch's thread count.

    ``cfg``: the run's resolved config (resolved here from the scenario's defaults when
    None). The existing-record check compares ``params`` against a record's, a checkpoint
    is valid only for equal settings (its fingerprint)."""
    return json.loads(json.dumps({
        "scenario": exp.scenario,
        "strategy": exp.strategy,
        "seed": exp.seed,
        "tag": exp.tag,
        "params": run_params(exp, cfg),
        "versions": versions(),
        "device": str(torch.device(device)),
        "threads": int(threads),
    }))


def run_params(exp: Experiment, cfg: ResolvedConfig | None = None) -> dict[str, Any]:
    """``record_params`` as JSON values (as a written record holds them); ``cfg`` resolved
    from the scenario's defaults when None."""
    return json.loads(json.dumps(record_params(exp, resolve_for(exp) if cfg is None else cfg)))


def experiments_for(
    scenario: str, strategies: Iterable[str], seeds: Iterable[int], overrides: Overrides,
    tag: str = "",
) -> list[Experiment]:
    """The product strategies × seeds, seeds outermost (one scenario build per seed)."""
    return [Experiment(scenario, s, seed, overrides, tag) for seed in seeds for s in strategies]
