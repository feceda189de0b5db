"""Continual-learning strategies for Avalanche: HAT and the registry of baselines.

This package never imports ``benchmark`` or ``reports``: it works in anyone's Avalanche script.
"""

from .agem import AGEM, AGEMConfig, AGEMPlugin, agem_projection
from .clip import REFERENCE_CLIPGRAD, GradientClipPlugin
from .config import ConfigError
from .data import FastDataPlugin, TensorLoader, materialize
from .der import DER, DERConfig, DERPlugin
from .er_ace import ERACE, ERACEConfig, ERACEPlugin
from .ewc import EWC, EWCPlugin
from .gdumb import GDumb, GDumbConfig, GDumbPlugin
from .hat import HAT, HATConfig, HATPlugin, anneal_s, attention_regulariser, compensation_factor
from .hat_layers import (
    HATBatchNorm1d,
    HATBatchNorm2d,
    HATConv2d,
    HATError,
    HATLinear,
    HATNet,
    find_hat_model,
)
from .icarl import ICaRL, ICaRLConfig, ICaRLPlugin, herding_order
from .imm import IMM, IMMMeanConfig, IMMModeConfig, IMMPlugin
from .lfl import LessForgetfulLearning, LFLConfig, LFLPlugin
from .lwf import LwF, LwFPlugin
from .models import MultiHeadNet, TaskNotTrainedError
from .packnet import PackNet, PackNetConfig, PackNetNet, PackNetPlugin
from .pathnet import PathNet, PathNetConfig, PathNetNet, PathNetPlugin
from .pnn import PNNConfig, PNNPlugin, ProgressiveNet, ProgressiveNeuralNetwork
from .recipe import RecipeConfig, TrainingRecipePlugin
from .registry import STRATEGIES, TrainConfig, get_strategy, make_optimizer
from .replay import Replay, ReplayConfig, ReplayPlugin
from .sgd_f import BaselineError, FreezeTrunkPlugin, SGDFrozen

__all__ = [
    "HAT", "HATConfig", "HATPlugin", "HATLinear", "HATConv2d", "HATBatchNorm1d", "HATBatchNorm2d",
    "HATNet", "HATError",
    "MultiHeadNet", "TaskNotTrainedError", "FastDataPlugin", "TensorLoader", "materialize",
    "RecipeConfig", "TrainingRecipePlugin", "STRATEGIES", "TrainConfig", "get_strategy",
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
