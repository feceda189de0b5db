"""What every strategy trains and is evaluated with: the paper's recipe (``recipe``), the lean
training loop and its SGD (``lean_loop``), gradient clipping (``clipping``), tensor loaders
(``tensor_data``) and task-agnostic evaluation (``agnostic``)."""

from .agnostic import agnostic_accuracy, agnostic_scorer
from .clipping import GradientClipPlugin
from .lean_loop import SGD, clip_grad_norm, set_training, use_lean_loop
from .recipe import RecipeConfig, TrainingRecipePlugin, same_optimizer, split_indices
from .tensor_data import FastDataPlugin, TensorLoader, materialize, training_part
from .train_config import TrainConfig, make_optimizer

__all__ = [
    "agnostic_accuracy", "agnostic_scorer", "GradientClipPlugin", "SGD",
    "clip_grad_norm", "set_training", "use_lean_loop", "RecipeConfig", "TrainingRecipePlugin",
    "same_optimizer", "split_indices", "FastDataPlugin", "TensorLoader", "materialize",
    "training_part", "TrainConfig", "make_optimizer",
]
