"""Training hyperparameters shared by every strategy (the paper's recipe by default) and the
optimizer they name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..common.config import ConfigError, check_count, check_range
from .lean_loop import SGD


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
        check_count("train.batch_size", self.batch_size)
        check_count("train.eval_batch_size", self.eval_batch_size)
        check_count("train.epochs", self.epochs)
        if self.valid_fraction is not None:
            check_range("train.valid_fraction", self.valid_fraction, 0, 1, high_open=True)
        check_count("train.patience", self.patience)
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
        return SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
