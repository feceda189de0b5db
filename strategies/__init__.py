"""Continual-learning strategies for Avalanche: HAT and the registry of baselines.

``hat/`` (the paper's method), ``baselines/`` (one file per method), ``rehearsal/`` (methods
with a memory), ``training/`` (the recipe, the lean loop, clipping, tensor data, task-agnostic
evaluation), ``common/`` (config helpers, the multi-head network, the plugin hooks) and
``registry.py`` (every method's ``StrategySpec``). This package never imports ``benchmark`` or
``reports``: it works in anyone's Avalanche script.
"""

from .baselines.ewc import EWC, EWCPlugin
from .baselines.imm import IMM, IMMMeanConfig, IMMModeConfig, IMMPlugin
from .baselines.lfl import LessForgetfulLearning, LFLConfig, LFLPlugin
from .baselines.lwf import LwF, LwFPlugin
from .baselines.packnet import PackNet, PackNetConfig, PackNetNet, PackNetPlugin
from .baselines.pathnet import PathNet, PathNetConfig, PathNetNet, PathNetPlugin
from .baselines.pnn import PNNConfig, PNNPlugin, ProgressiveNet, ProgressiveNeuralNetwork
from .baselines.sgd_frozen import FreezeTrunkPlugin, SGDFrozen
from .common.config import ConfigError
from .common.multihead import BaselineError, MultiHeadNet, TaskNotTrainedError
from .hat import (
    HAT,
    HATBatchNorm1d,
    HATBatchNorm2d,
    HATConfig,
    HATConv2d,
    HATError,
    HATLinear,
    HATNet,
    HATPlugin,
    anneal_s,
    attention_regulariser,
    compensation_factor,
    find_hat_model,
)
from .registry import (
    REFERENCE_CLIPGRAD,
    STRATEGIES,
    StrategySpec,
    TrainConfig,
    get_strategy,
    make_optimizer,
    register,
)
from .rehearsal.agem import AGEM, AGEMConfig, AGEMPlugin, agem_projection
from .rehearsal.der import DER, DERConfig, DERPlugin
from .rehearsal.er_ace import ERACE, ERACEConfig, ERACEPlugin
from .rehearsal.gdumb import GDumb, GDumbConfig, GDumbPlugin
from .rehearsal.icarl import ICaRL, ICaRLConfig, ICaRLPlugin, herding_order
from .rehearsal.replay import Replay, ReplayConfig, ReplayPlugin
from .training.clipping import GradientClipPlugin
from .training.recipe import RecipeConfig, TrainingRecipePlugin
from .training.tensor_data import FastDataPlugin, TensorLoader, materialize

__all__ = [
    "HAT", "HATConfig", "HATPlugin", "HATLinear", "HATConv2d", "HATBatchNorm1d", "HATBatchNorm2d",
    "HATNet", "HATError",
    "MultiHeadNet", "TaskNotTrainedError", "FastDataPlugin", "TensorLoader", "materialize",
    "RecipeConfig", "TrainingRecipePlugin", "STRATEGIES", "StrategySpec", "register",
    "TrainConfig", "get_strategy",
    "make_optimizer", "ConfigError", "find_hat_model", "anneal_s", "attention_regulariser",
    "compensation_factor", "SGDFrozen", "FreezeTrunkPlugin", "BaselineError", "IMM",
    "IMMPlugin", "IMMMeanConfig", "IMMModeConfig", "LessForgetfulLearning", "LFLPlugin",
    "LFLConfig", "PathNet", "PathNetNet", "PathNetPlugin", "PathNetConfig",
    "PackNet", "PackNetNet", "PackNetPlugin", "PackNetConfig",
    "ProgressiveNet", "ProgressiveNeuralNetwork", "PNNPlugin", "PNNConfig",
    "EWC", "EWCPlugin", "LwF", "LwFPlugin", "GradientClipPlugin", "REFERENCE_CLIPGRAD",
    "ICaRL", "ICaRLConfig", "ICaRLPlugin", "herding_order",
    "Replay", "ReplayConfig", "ReplayPlugin", "AGEM", "AGEMConfig", "AGEMPlugin",
    "agem_projection", "DER", "DERConfig", "DERPlugin", "ERACE", "ERACEConfig", "ERACEPlugin",
    "GDumb", "GDumbConfig", "GDumbPlugin",
]
