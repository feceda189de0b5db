"""Strategy registry: one place mapping names to constructors with the paper's defaults.

Each entry has a typed parameter dataclass (defaults = the paper's values, hat-reference
§2), a one-line description and a ``build`` function returning an Avalanche strategy.
``joint`` is the forgetting-ratio reference: the runner trains it from scratch on tasks
1..t for every t (Avalanche's ``JointTraining``, with per-sample heads); ``single`` is the
forward-transfer reference: task t alone, from the initialisation every run of the seed
starts from. ``pnn`` and
``pathnet`` replace the shared network they are given by their own one, built from its trunk's
description (same layers, narrower columns or modules) with one head per head of the shared
network, and use an optimizer of the same type and settings over it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from avalanche.training import Naive
from avalanche.training.supervised.joint_training import JointTraining
from torch import nn

from .agem import AGEM, AGEMConfig
from .clip import REFERENCE_CLIPGRAD
from .config import ConfigError, check_range, from_overrides, public_key, to_public_dict
from .der import DER, DERConfig
from .er_ace import ERACE, ERACEConfig
from .ewc import EWC
from .gdumb import GDumb, GDumbConfig
from .hat import HAT, HATConfig
from .icarl import ICaRL, ICaRLConfig
from .imm import IMM, IMMMeanConfig, IMMModeConfig
from .lfl import LessForgetfulLearning, LFLConfig
from .loop import SGD, use_lean_loop
from .lwf import LwF
from .packnet import PackNet, PackNetConfig, PackNetNet
from .pathnet import PathNet, PathNetConfig, PathNetNet
from .pnn import PNNConfig, ProgressiveNet, ProgressiveNeuralNetwork
from .recipe import same_optimizer
from .replay import Replay, ReplayConfig
from .sgd_f import SGDFrozen
from .si import SynapticIntelligence


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters shared by all strategies (the paper's recipe by default)."""

    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 64
    #: maximum epochs per experience (exactly this many with recipe=fixed)
    epochs: int = 200
    recipe: Literal["paper", "fixed"] = "paper"
    #: None: the scenario's default (10% for most, 15% for mixture)
    valid_fraction: float | None = None
    patience: int = 5
    lr_factor: float = 3.0
    lr_min: float = 1e-4
    eval_batch_size: int = 256
    #: global gradient-norm bound before every step; None: the strategy's reference value
    #: (``StrategySpec.clipgrad``: 100 for EWC and LwF, 10000 for SGD, joint and HAT, ...)
    clipgrad: float | None = None

    def __post_init__(self):
        check_range("train.lr", self.lr, 0, low_open=True)
        check_range("train.momentum", self.momentum, 0, 1, high_open=True)
        check_range("train.weight_decay", self.weight_decay, 0)
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if self.epochs < 1:
            raise ConfigError(f"train.epochs must be >= 1, got {self.epochs}")
        if self.valid_fraction is not None:
            check_range("train.valid_fraction", self.valid_fraction, 0, 1, high_open=True)
        if self.patience < 1:
            raise ConfigError(f"train.patience must be >= 1, got {self.patience}")
        check_range("train.lr_factor", self.lr_factor, 1, low_open=True,
                    hint=" (the learning rate is divided by it)")
        check_range("train.lr_min", self.lr_min, 0, low_open=True)
        if self.clipgrad is not None:
            check_range("train.clipgrad", self.clipgrad, 0, low_open=True)

    def check_combination(self) -> None:
        """Checks across fields (``resolve`` calls it on the whole config; single keys, e.g.
        a grid's values, are validated alone by ``__post_init__``)."""
        if self.recipe == "paper" and self.valid_fraction == 0:
            raise ConfigError(
                "train.valid_fraction=0 leaves no validation data for the paper's recipe; "
                "use train.recipe=fixed to train without validation"
            )


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.optimizer``."""
    if cfg.optimizer == "sgd":
        return SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@dataclass(frozen=True)
class NoParams:
    """A strategy without hyperparameters of its own."""


@dataclass(frozen=True)
class EWCConfig:
    lambda_: float = 5000.0
    mode: Literal["separate", "online"] = "separate"
    decay_factor: float | None = None

    def __post_init__(self):
        check_range("ewc.lambda", self.lambda_, 0)
        if self.decay_factor is not None:
            check_range("ewc.decay_factor", self.decay_factor, 0, 1)

    def check_combination(self) -> None:
        if self.decay_factor is not None and self.mode != "online":
            raise ConfigError("ewc.decay_factor needs ewc.mode=online")


@dataclass(frozen=True)
class LwFConfig:
    alpha: float = 2.0
    temperature: float = 1.0

    def __post_init__(self):
        check_range("lwf.alpha", self.alpha, 0)
        check_range("lwf.temperature", self.temperature, 0, low_open=True,
                    hint=" (the distillation divides the logits by it)")


@dataclass(frozen=True)
class SIConfig:
    lambda_: float = 1.0
    eps: float = 1e-7

    def __post_init__(self):
        check_range("si.lambda", self.lambda_, 0)
        check_range("si.eps", self.eps, 0, low_open=True)


@dataclass(frozen=True)
class BuildContext:
    """What every strategy constructor receives."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    train: TrainConfig
    plugins: list
    device: torch.device | str
    evaluator: Any

    def common(self) -> dict[str, Any]:
        return dict(
            model=self.model,
            optimizer=self.optimizer,
            criterion=nn.CrossEntropyLoss(),
            train_mb_size=self.train.batch_size,
            train_epochs=self.train.epochs,
            eval_mb_size=self.train.eval_batch_size,
            device=self.device,
            plugins=list(self.plugins),  # Avalanche wrappers append to this list
            evaluator=self.evaluator,
        )


@dataclass(frozen=True)
class StrategySpec:
    name: str
    description: str
    params: type
    #: the constructor; ``build`` calls it and gives the strategy the lean training loop
    make: Callable[[BuildContext, Any], Any]
    #: the model must be a HAT network
    gated: bool = False
    #: trained from scratch on tasks 1..t for every t (the reference A_J)
    joint: bool = False
    #: trained from scratch on task t alone for every t, from the same initialisation as
    #: every run of the seed (the single-task reference of forward transfer)
    single: bool = False
    #: the reference code's gradient-norm bound for this approach (``train.clipgrad``);
    #: None: ``REFERENCE_CLIPGRAD[name]`` (10000, plain SGD's, for names it lacks)
    clipgrad: float | None = None
    #: search space for ``python -m benchmark tune``: public parameter name -> values
    #: (the reference code's grids where it has one); empty: nothing to select
    space: Mapping[str, Sequence[Any]] = field(default_factory=dict)

    def __post_init__(self):
        if self.clipgrad is None:
            object.__setattr__(self, "clipgrad", REFERENCE_CLIPGRAD.get(self.name, 10000.0))
        fields = {public_key(f.name) for f in dataclasses.fields(self.params)}
        unknown = sorted(set(self.space) - fields)
        if unknown:
            raise ValueError(f"{self.name}: search space key '{unknown[0]}' is not a parameter")

    def config(self, overrides: Mapping[str, Any] | None = None):
        return from_overrides(self.params, overrides or {}, self.name)

    def build(self, ctx: BuildContext, config: Any):
        """The strategy, with ``lean_training_epoch`` (the same steps and callbacks)."""
        return use_lean_loop(self.make(ctx, config))

    def defaults(self) -> dict[str, Any]:
        return to_public_dict(self.params())


def _ewc(ctx: BuildContext, p: EWCConfig):
    decay = None
    if p.mode == "online":
        decay = p.decay_factor if p.decay_factor is not None else 1.0
    elif p.decay_factor is not None:
        raise ConfigError("ewc.decay_factor needs ewc.mode=online")
    return EWC(ewc_lambda=p.lambda_, mode=p.mode, decay_factor=decay, **ctx.common())


def _hat(ctx: BuildContext, p: HATConfig):
    kw = ctx.common()
    return HAT(**{k: getattr(p, k) for k in p.__dataclass_fields__}, **kw)


def _own_model(ctx: BuildContext, model: nn.Module) -> dict[str, Any]:
    """``ctx.common()`` for a strategy that replaces the shared network by its own one
    (built from the shared trunk's description): same optimizer type and settings."""
    model = model.to(ctx.device)
    return {**ctx.common(), "model": model, "optimizer": same_optimizer(ctx.optimizer, model)}


def _pnn(ctx: BuildContext, p: PNNConfig):
    model = ctx.model
    if not isinstance(model, ProgressiveNet):
        model = ProgressiveNet.from_multihead(model, width=p.width)
    return ProgressiveNeuralNetwork(**_own_model(ctx, model))


def _pathnet(ctx: BuildContext, p: PathNetConfig):
    model = ctx.model
    if not isinstance(model, PathNetNet):
        model = PathNetNet.from_multihead(model, width=p.width, n_modules=p.modules,
                                          n_active=p.active)
    elif (model.n_modules, model.n_active) != (p.modules, p.active):
        raise ConfigError(
            f"the PathNetNet given has M={model.n_modules}, N={model.n_active}, but "
            f"pathnet.modules={p.modules}, pathnet.active={p.active}"
        )
    return PathNet(generations=p.generations, population=p.population,
                   path_epochs=p.path_epochs, **_own_model(ctx, model))


def _packnet(ctx: BuildContext, p: PackNetConfig):
    # wraps the shared network's trunk in place (its Linear/Conv/BatchNorm layers); same heads
    model = ctx.model if isinstance(ctx.model, PackNetNet) else PackNetNet.from_multihead(
        ctx.model)
    return PackNet(prune_ratio=p.prune_ratio, post_prune_epochs=p.post_prune_epochs,
                   post_prune_lr_scale=p.post_prune_lr_scale, **_own_model(ctx, model))


# Search spaces of ``python -m benchmark tune`` (values ascending). The reference code's grids
# (joansj/hat, src/approaches/*.py comments) where it has one; otherwise documented ranges:
#: HAT: the reference's c and smax grids (hat.py), the paper's Fig. 5
HAT_SPACE = {"smax": (25, 50, 100, 200, 400, 800), "c": (0.1, 0.25, 0.5, 0.75, 1, 1.5, 2.5, 4)}
#: EWC: the reference grid was 500..50000 for its own Fisher; Avalanche's is a batch mean in
#: eval mode (0.24x the reference's on the same model) and sums per-task penalties, so its
#: best λ can lie decades away: 1 .. 1e6, decade steps, plus the paper's 5000
EWC_SPACE = {"lambda": (1, 10, 100, 1000, 5000, 10000, 100000, 1000000)}
#: LwF: the reference's alpha (its "lamb") and T grids (lwf.py)
LWF_SPACE = {"alpha": (0.1, 0.5, 1, 2, 4, 8, 10), "temperature": (0.5, 1, 2, 4)}
#: SI (not in the reference): Zenke et al. searched c in 0.01..1 for their estimator;
#: Avalanche clips the importances, which makes small λ nearly inert: 0.1 .. 1e5
SI_SPACE = {"lambda": (0.1, 1, 10, 100, 1000, 10000, 100000)}
#: IMM-mean, IMM-mode, LFL, PathNet: the reference's grids
IMM_MEAN_SPACE = {"lambda": (1e-6, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2)}
IMM_MODE_SPACE = {"lambda": (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1, 10)}
LFL_SPACE = {"lambda": (5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 1e-1)}
PATHNET_SPACE = {"generations": (5, 10, 20, 50, 100, 200)}
#: PackNet (not in the reference): the paper's prune ratios 0.5 and 0.75 and a range around
#: them; retraining after the prune or not (the reference's 10 epochs)
PACKNET_SPACE = {"prune_ratio": (0.25, 0.5, 0.75, 0.9), "post_prune_epochs": (0, 10)}
#: iCaRL: no search space: its only parameter, the memory budget K, is a resource held equal
#: across the rehearsal methods, not selected on validation (a larger memory scores higher)
#: Rehearsal (replay, agem, der, er-ace, gdumb): memory sizes are budgets held equal, never
#: searched. ER, ER-ACE: the memory batch relative to the training batch (1 = the papers');
#: DER++: the values its paper's best α, β take over its benchmarks and buffer sizes
#: (Buzzega et al. 2020, mammoth utils/best_args.py); A-GEM: the reference-gradient sample
#: around the reference code's 256; GDumb: nothing to select (its only parameter is the memory)
REPLAY_SPACE = {"mem_batch_ratio": (0.25, 0.5, 1, 2, 4)}
ER_ACE_SPACE = {"mem_batch_ratio": (0.25, 0.5, 1, 2, 4)}
DER_SPACE = {"alpha": (0.1, 0.2, 0.5, 1), "beta": (0.5, 1)}
AGEM_SPACE = {"sample_size": (16, 32, 64, 128, 256)}

STRATEGIES: dict[str, StrategySpec] = {
    s.name: s
    for s in [
        StrategySpec("naive", "SGD fine-tuning, no protection (the paper's SGD)", NoParams,
                     lambda ctx, p: Naive(**ctx.common())),
        StrategySpec("ewc", "Elastic Weight Consolidation (Kirkpatrick et al. 2017), "
                     "Avalanche's with the Fisher on the training part only",
                     EWCConfig, _ewc, space=EWC_SPACE),
        StrategySpec("lwf", "Learning without Forgetting (Li & Hoiem 2016), Avalanche's with the "
                     "teacher in eval mode",
                     LwFConfig,
                     lambda ctx, p: LwF(alpha=p.alpha, temperature=p.temperature,
                                        **ctx.common()), space=LWF_SPACE),
        StrategySpec("si", "Synaptic Intelligence (Zenke et al. 2017), Avalanche's plugin with "
                     "a CPU fix; not in the HAT paper", SIConfig,
                     lambda ctx, p: SynapticIntelligence(si_lambda=p.lambda_, eps=p.eps,
                                                         **ctx.common()),
                     space=SI_SPACE),
        StrategySpec("hat", "Hard Attention to the Task (Serrà et al. 2018)", HATConfig, _hat,
                     gated=True, space=HAT_SPACE),
        StrategySpec("sgd-f", "SGD fine-tuning of the first task, then only new heads train "
                     "(the trunk is frozen)", NoParams,
                     lambda ctx, p: SGDFrozen(**ctx.common())),
        StrategySpec("imm-mean", "Incremental Moment Matching, mean (Lee et al. 2017): "
                     "L2-transfer, then the trunks of all tasks averaged", IMMMeanConfig,
                     lambda ctx, p: IMM(mode="mean", lambda_=p.lambda_, **ctx.common()),
                     space=IMM_MEAN_SPACE),
        StrategySpec("imm-mode", "Incremental Moment Matching, mode (Lee et al. 2017): "
                     "L2-transfer, then a Fisher-weighted merge of the trunks", IMMModeConfig,
                     lambda ctx, p: IMM(mode="mode", lambda_=p.lambda_, eps=p.eps,
                                        fisher_batch=p.fisher_batch, **ctx.common()),
                     space=IMM_MODE_SPACE),
        StrategySpec("lfl", "Less-Forgetful Learning (Jung et al. 2016): features kept close "
                     "to the previous model's", LFLConfig,
                     lambda ctx, p: LessForgetfulLearning(lambda_=p.lambda_, features=p.features,
                                                           **ctx.common()),
                     space=LFL_SPACE),
        StrategySpec("pathnet", "PathNet (Fernando et al. 2017): evolved paths of modules, "
                     "earlier tasks' paths frozen", PathNetConfig, _pathnet,
                     space=PATHNET_SPACE),
        StrategySpec("packnet", "PackNet (Mallya & Lazebnik 2018): after each task its smallest "
                     "weights are pruned for later tasks, the rest retrained and frozen",
                     PackNetConfig, _packnet, space=PACKNET_SPACE),
        StrategySpec("pnn", "Progressive Neural Networks (Rusu et al. 2016): a narrower "
                     "column per task with lateral adapters", PNNConfig, _pnn),
        StrategySpec("icarl", "iCaRL (Rebuffi et al. 2017): herding exemplars of every class "
                     "seen, sigmoid distillation, nearest-mean-of-exemplars classification",
                     ICaRLConfig,
                     lambda ctx, p: ICaRL(mem_size=p.mem_size, **ctx.common()),
                     clipgrad=10000.0),
        StrategySpec("replay", "Experience replay (Chaudhry et al. 2019): each batch with a "
                     "memory batch; memory balanced over experiences, Avalanche's semantics",
                     ReplayConfig,
                     lambda ctx, p: Replay(mem_size=p.mem_size,
                                           mem_batch_ratio=p.mem_batch_ratio, **ctx.common()),
                     space=REPLAY_SPACE),
        StrategySpec("agem", "A-GEM (Chaudhry et al. 2019): the gradient projected when it "
                     "conflicts with a memory sample's", AGEMConfig,
                     lambda ctx, p: AGEM(patterns_per_experience=p.patterns_per_experience,
                                         sample_size=p.sample_size, **ctx.common()),
                     space=AGEM_SPACE),
        StrategySpec("der", "DER++ (Buzzega et al. 2020): replay of labels and of the logits "
                     "stored at insertion, reservoir memory", DERConfig,
                     lambda ctx, p: DER(mem_size=p.mem_size, alpha=p.alpha, beta=p.beta,
                                        mem_batch_ratio=p.mem_batch_ratio, **ctx.common()),
                     space=DER_SPACE),
        StrategySpec("er-ace", "ER-ACE (Caccia et al. 2022): replay with the current batch's "
                     "loss over its own classes only; class-balanced memory", ERACEConfig,
                     lambda ctx, p: ERACE(mem_size=p.mem_size,
                                          mem_batch_ratio=p.mem_batch_ratio, **ctx.common()),
                     space=ER_ACE_SPACE),
        StrategySpec("gdumb", "GDumb (Prabhu et al. 2020): retrained from its initialisation "
                     "on a class-balanced memory alone at every task", GDumbConfig,
                     lambda ctx, p: GDumb(mem_size=p.mem_size, **ctx.common())),
        StrategySpec("joint", "joint (multitask) training on tasks 1..t, from scratch for "
                     "each t: the forgetting-ratio reference A_J", NoParams,
                     lambda ctx, p: JointTraining(**ctx.common()), joint=True),
        StrategySpec("single", "task t alone, from the same initialisation, for each t: the "
                     "single-task reference of forward transfer (not a method)", NoParams,
                     lambda ctx, p: Naive(**ctx.common()), single=True),
    ]
}


def get_strategy(name: str) -> StrategySpec:
    """Registry lookup with a clear error listing the valid names."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown strategy '{name}'; valid strategies: {', '.join(sorted(STRATEGIES))}"
        ) from None
