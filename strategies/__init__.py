"""Continual-learning strategies for Avalanche: HAT and the registry of baselines.

This package never imports ``benchmark`` or ``reports``: it works in anyone's Avalanche script.
"""

from .clip import REFERENCE_CLIPGRAD, GradientClipPlugin
from .config import ConfigError
from .data import FastDataPlugin, TensorLoader, materialize
from .ewc import EWC, EWCPlugin
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
from .imm import IMM, IMMMeanConfig, IMMModeConfig, IMMPlugin
from .lfl import LessForgetfulLearning, LFLConfig, LFLPlugin
from .lwf import LwF, LwFPlugin
from .models import MultiHeadNet, TaskNotTrainedError
from .pathnet import PathNet, PathNetConfig, PathNetNet, PathNetPlugin
from .pnn import PNNConfig, PNNPlugin, ProgressiveNet, ProgressiveNeuralNetwork
from .recipe import RecipeConfig, TrainingRecipePlugin
from .registry import STRATEGIES, TrainConfig, get_strategy, make_optimizer
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
    "ProgressiveNet", "ProgressiveNeuralNetwork", "PNNPlugin", "PNNConfig",
    "EWC", "EWCPlugin", "LwF", "LwFPlugin", "GradientClipPlugin", "REFERENCE_CLIPGRAD",
]
