"""Strategy registry: one place mapping names to constructors with the paper's defaults.

Each entry (``StrategySpec``) has a typed parameter dataclass (defaults = the paper's values,
docs/hat-reference.md §2), a one-line description, a ``build`` function returning an Avalanche
strategy, and every fact the benchmark needs about the method: its reference clipping bound,
search space, accepted trunk families, whether it clips itself or needs a gated model, whether
it has a task-agnostic prediction or a rehearsal memory. Adding a method is its file plus one
entry (``register`` adds one from outside this module).

``joint`` is the forgetting-ratio reference: the runner trains it from scratch on tasks 1..t
for every t (Avalanche's ``JointTraining``, with per-sample heads); ``single`` is the
forward-transfer reference: task t alone, from the initialisation every run of the seed starts
from. ``pnn`` and ``pathnet`` replace the shared network they are given by their own one,
built from its trunk's description (same layers, narrower columns or modules) with one head
per head of the shared network, and use an optimizer of the same type and settings over it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from avalanche.training import Naive
from avalanche.training.supervised.joint_training import JointTraining
from torch import nn

from .baselines.ewc import EWC, EWCConfig
from .baselines.imm import IMM, IMMMeanConfig, IMMModeConfig
from .baselines.lfl import LessForgetfulLearning, LFLConfig
from .baselines.lwf import LwF, LwFConfig
from .baselines.packnet import PackNet, PackNetConfig, PackNetNet
from .baselines.pathnet import PathNet, PathNetConfig, PathNetNet
from .baselines.pnn import PNNConfig, ProgressiveNet, ProgressiveNeuralNetwork
from .baselines.sgd_frozen import SGDFrozen
from .baselines.si import SIConfig, SynapticIntelligence
from .common.config import ConfigError, from_overrides, public_key, to_public_dict
from .hat import HAT, HATConfig
from .rehearsal.agem import AGEM, AGEMConfig
from .rehearsal.der import DER, DERConfig
from .rehearsal.er_ace import ERACE, ERACEConfig
from .rehearsal.gdumb import GDumb, GDumbConfig
from .rehearsal.icarl import ICaRL, ICaRLConfig
from .rehearsal.replay import Replay, ReplayConfig
from .training.lean_loop import use_lean_loop
from .training.recipe import same_optimizer
from .training.train_config import TrainConfig, make_optimizer  # noqa: F401 - re-exported


@dataclass(frozen=True)
class NoParams:
    """A strategy without hyperparameters of its own."""


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
    #: the reference code's global gradient-norm bound for this approach (the default of
    #: ``train.clipgrad``; joansj/hat, ``src/approaches/*.py``); 10000 is plain SGD's, also
    #: taken by the approaches the reference lacks
    clipgrad: float = 10000.0
    #: clips inside its own plugin, with its config's ``clipgrad`` (HAT: between its gradient
    #: conditioning and the step), instead of through ``GradientClipPlugin``
    clips_itself: bool = False
    #: keyword arguments of the network builder taken from the strategy's config (a gated
    #: model's ``HATNet.wrap`` options); None: none
    model_options: Callable[[Any], dict[str, Any]] | None = None
    #: the trunk families (``model.family``) it accepts; None: every family
    families: tuple[str, ...] | None = None
    #: search space for ``python -m benchmark tune``: public parameter name -> values
    #: (the reference code's grids where it has one); empty: nothing to select
    space: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    #: in the default strategy list of ``python -m benchmark tune``
    tune_by_default: bool = False
    #: has a task-agnostic prediction (a plugin's ``agnostic_scores`` or a shared trunk's heads
    #: concatenated); False: the record's ``agnostic_accuracy`` is null
    task_agnostic: bool = True
    #: keeps a rehearsal memory (the record's ``memory_samples`` is not null)
    rehearsal: bool = False
    #: how it runs in the class-incremental protocol (``scenario.protocol=class``):
    #: ``"expanding"``: its network reads as one expanding head over every class seen
    #: (``ExpandingHeadNet``, global labels), so its losses range over them; ``"own"``: its
    #: training already scores every class seen (a class = (task, label)) and it runs
    #: unchanged, read through its task-agnostic prediction; ``"inference"``: its weights
    #: depend on the task, so it trains as in the task protocol and predicts by task inference
    #: (``strategies.training.task_inference``: every learned task's path scored, the best
    #: task's class); None: it has no class-incremental prediction and refuses the protocol
    #: (the default: a strategy opts in)
    class_protocol: str | None = None

    def __post_init__(self):
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

    @property
    def reference_only(self) -> bool:
        """A reference (joint, single), not a method: kept out of the method tables."""
        return self.joint or self.single


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


def _hat_model_options(p: HATConfig) -> dict[str, Any]:
    """``HATNet.wrap``'s options from HAT's config."""
    return dict(smax=p.smax, binary_masks=not p.soft_masks, embedding_init=p.embedding_init)


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


def _rehearsal(
    name: str, description: str, params: type, strategy: type,
    space: Mapping[str, Sequence[Any]] | None = None, **options: Any,
) -> StrategySpec:
    """A rehearsal method's spec: built as ``strategy(config=p, **ctx.common())``."""
    return StrategySpec(name, description, params,
                        lambda ctx, p: strategy(config=p, **ctx.common()),
                        space=space or {}, rehearsal=True, **options)


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

#: trunk families that PNN and PathNet rebuild layer by layer (a chain of Linear/Conv2d layers,
#: no BatchNorm or residual blocks)
LAYERWISE = ("mlp", "alexnet")

#: ``StrategySpec.class_protocol`` values
EXPANDING, OWN, INFERENCE = "expanding", "own", "inference"

# ``clipgrad``: the reference's bound per approach (src/approaches/<file>): 100 in ewc.py and
# lwf.py, 200 in lfl.py, 1000 in imm_mode.py and pathnet.py, 10000 in sgd.py, sgd_frozen.py,
# joint.py, hat.py, progressive.py and imm_mean.py; plain SGD's 10000 for the approaches the
# reference lacks (SI, PackNet, the rehearsal methods, the single-task reference)
STRATEGIES: dict[str, StrategySpec] = {
    s.name: s
    for s in [
        StrategySpec("naive", "SGD fine-tuning, no protection (the paper's SGD)", NoParams,
                     lambda ctx, p: Naive(**ctx.common()),
                     tune_by_default=True, class_protocol=EXPANDING),
        StrategySpec("ewc", "Elastic Weight Consolidation (Kirkpatrick et al. 2017), "
                     "Avalanche's with the Fisher on the training part only",
                     EWCConfig, _ewc, space=EWC_SPACE,
                     clipgrad=100.0, tune_by_default=True, class_protocol=EXPANDING),
        StrategySpec("lwf", "Learning without Forgetting (Li & Hoiem 2016), Avalanche's with the "
                     "teacher in eval mode",
                     LwFConfig,
                     lambda ctx, p: LwF(alpha=p.alpha, temperature=p.temperature,
                                        **ctx.common()), space=LWF_SPACE,
                     clipgrad=100.0, tune_by_default=True, class_protocol=EXPANDING),
        StrategySpec("si", "Synaptic Intelligence (Zenke et al. 2017), Avalanche's plugin with "
                     "a CPU fix; not in the HAT paper", SIConfig,
                     lambda ctx, p: SynapticIntelligence(si_lambda=p.lambda_, eps=p.eps,
                                                         **ctx.common()),
                     space=SI_SPACE,
                     tune_by_default=True, class_protocol=EXPANDING),
        StrategySpec("hat", "Hard Attention to the Task (Serrà et al. 2018)", HATConfig, _hat,
                     gated=True, space=HAT_SPACE,
                     clips_itself=True, model_options=_hat_model_options, tune_by_default=True,
                     task_agnostic=False, class_protocol=INFERENCE),
        StrategySpec("sgd-f", "SGD fine-tuning of the first task, then only new heads train "
                     "(the trunk is frozen)", NoParams,
                     lambda ctx, p: SGDFrozen(**ctx.common()), class_protocol=EXPANDING),
        StrategySpec("imm-mean", "Incremental Moment Matching, mean (Lee et al. 2017): "
                     "L2-transfer, then the trunks of all tasks averaged", IMMMeanConfig,
                     lambda ctx, p: IMM(mode="mean", lambda_=p.lambda_, **ctx.common()),
                     space=IMM_MEAN_SPACE, class_protocol=EXPANDING),
        StrategySpec("imm-mode", "Incremental Moment Matching, mode (Lee et al. 2017): "
                     "L2-transfer, then a Fisher-weighted merge of the trunks", IMMModeConfig,
                     lambda ctx, p: IMM(mode="mode", lambda_=p.lambda_, eps=p.eps,
                                        fisher_batch=p.fisher_batch, **ctx.common()),
                     space=IMM_MODE_SPACE,
                     clipgrad=1000.0, class_protocol=EXPANDING),
        StrategySpec("lfl", "Less-Forgetful Learning (Jung et al. 2016): features kept close "
                     "to the previous model's", LFLConfig,
                     lambda ctx, p: LessForgetfulLearning(lambda_=p.lambda_, features=p.features,
                                                           **ctx.common()),
                     space=LFL_SPACE,
                     clipgrad=200.0, class_protocol=EXPANDING),
        StrategySpec("pathnet", "PathNet (Fernando et al. 2017): evolved paths of modules, "
                     "earlier tasks' paths frozen", PathNetConfig, _pathnet,
                     space=PATHNET_SPACE,
                     clipgrad=1000.0, families=LAYERWISE, task_agnostic=False,
                     class_protocol=INFERENCE),
        StrategySpec("packnet", "PackNet (Mallya & Lazebnik 2018): after each task its smallest "
                     "weights are pruned for later tasks, the rest retrained and frozen",
                     PackNetConfig, _packnet, space=PACKNET_SPACE,
                     task_agnostic=False, class_protocol=INFERENCE),
        StrategySpec("pnn", "Progressive Neural Networks (Rusu et al. 2016): a narrower "
                     "column per task with lateral adapters", PNNConfig, _pnn,
                     families=LAYERWISE, task_agnostic=False, class_protocol=INFERENCE),
        _rehearsal("icarl", "iCaRL (Rebuffi et al. 2017): herding exemplars of every class "
                   "seen, sigmoid distillation, nearest-mean-of-exemplars classification",
                   ICaRLConfig, ICaRL, class_protocol=OWN),
        _rehearsal("replay", "Experience replay (Chaudhry et al. 2019): each batch with a "
                   "memory batch; memory balanced over experiences, Avalanche's semantics",
                   ReplayConfig, Replay, REPLAY_SPACE, class_protocol=EXPANDING),
        _rehearsal("agem", "A-GEM (Chaudhry et al. 2019): the gradient projected when it "
                   "conflicts with a memory sample's", AGEMConfig, AGEM, AGEM_SPACE,
                   class_protocol=EXPANDING),
        _rehearsal("der", "DER++ (Buzzega et al. 2020): replay of labels and of the logits "
                   "stored at insertion, reservoir memory", DERConfig, DER, DER_SPACE,
                   class_protocol=EXPANDING),
        _rehearsal("er-ace", "ER-ACE (Caccia et al. 2022): replay with the current batch's "
                   "loss over its own classes only; class-balanced memory", ERACEConfig,
                   ERACE, ER_ACE_SPACE, class_protocol=EXPANDING),
        _rehearsal("gdumb", "GDumb (Prabhu et al. 2020): retrained from its initialisation "
                   "on a class-balanced memory alone at every task", GDumbConfig, GDumb,
                   class_protocol=EXPANDING),
        StrategySpec("joint", "joint (multitask) training on tasks 1..t, from scratch for "
                     "each t: the forgetting-ratio reference A_J", NoParams,
                     lambda ctx, p: JointTraining(**ctx.common()), joint=True,
                     tune_by_default=True, class_protocol=EXPANDING),
        StrategySpec("single", "task t alone, from the same initialisation, for each t: the "
                     "single-task reference of forward transfer (not a method)", NoParams,
                     lambda ctx, p: Naive(**ctx.common()), single=True,
                     task_agnostic=False),
    ]
}


#: the reference clipping bound of every registered strategy (``StrategySpec.clipgrad``)
REFERENCE_CLIPGRAD: dict[str, float] = {name: s.clipgrad for name, s in STRATEGIES.items()}


def register(spec: StrategySpec, *, replace: bool = False) -> StrategySpec:
    """Add ``spec`` to the registry (its name must be new unless ``replace``): the strategy is
    then known to every command (``run``, ``tune``, the checkpoints, the report). Processes
    that run experiments must register it too (e.g. by importing the module that does)."""
    if spec.name in STRATEGIES and not replace:
        raise ConfigError(f"strategy '{spec.name}' is already registered")
    STRATEGIES[spec.name] = spec
    REFERENCE_CLIPGRAD[spec.name] = spec.clipgrad
    return spec


def get_strategy(name: str) -> StrategySpec:
    """Registry lookup with a clear error listing the valid names."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown strategy '{name}'; valid strategies: {', '.join(sorted(STRATEGIES))}"
        ) from None
