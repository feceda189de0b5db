"""The paper's networks (hat-reference §3), plain or HAT-gated, sized from the scenario.

Baselines and HAT share the same trunk: ``build_model`` builds one ``nn.Sequential`` and
either puts heads on it (``MultiHeadNet``) or upgrades it with ``HATNet.wrap``.

- AlexNet-like (3×32×32): conv 64 (k = size/8), conv 128 (k = size/10), conv 256 (k = 2),
  each ReLU → dropout → 2×2 max-pool (dropout 0.2, 0.2, 0.5), then fc 2048, fc 2048 (ReLU,
  dropout 0.5); about 6.5 M trunk parameters at 32×32.
- MLP: input dropout 0.2, hidden layers of ``hidden`` units (ReLU, dropout 0.5). The paper's
  HAT MLP is 2 × 2000; the embedded default is 2 × 100 to fit the 8×8 digits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn

from strategies import ConfigError, HATNet, MultiHeadNet


@dataclass(frozen=True)
class ModelConfig:
    """Network hyperparameters; ``None`` fields take the scenario's default."""

    family: Literal["mlp", "alexnet"] | None = None
    hidden: int | None = None
    layers: int = 2
    dropout: float = 0.5
    input_dropout: float = 0.2

    def __post_init__(self):
        if self.family not in (None, "mlp", "alexnet"):
            raise ConfigError(f"model.family must be 'mlp' or 'alexnet', got {self.family!r}")
        if self.hidden is not None and self.hidden < 1:
            raise ConfigError(f"model.hidden must be >= 1, got {self.hidden}")
        if self.layers < 1:
            raise ConfigError(f"model.layers must be >= 1, got {self.layers}")
        for name in ("dropout", "input_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")


def mlp_trunk(
    input_shape: Sequence[int], hidden: int = 2000, layers: int = 2,
    dropout: float = 0.5, input_dropout: float = 0.2,
) -> nn.Sequential:
    mods: list[nn.Module] = [nn.Flatten(), nn.Dropout(input_dropout)]
    width = math.prod(input_shape)
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
        width = hidden
    return nn.Sequential(*mods)


def alexnet_trunk(input_shape: Sequence[int], hidden: int = 2048) -> nn.Sequential:
    channels, size = input_shape[0], input_shape[-1]
    if input_shape[-2] != size or size < 16:
        raise ConfigError(
            f"the AlexNet-like network needs square images of at least 16×16, got {input_shape}"
        )
    mods: list[nn.Module] = []
    in_ch = channels
    for out_ch, kernel, drop in ((64, size // 8, 0.2), (128, size // 10, 0.2), (256, 2, 0.5)):
        mods += [nn.Conv2d(in_ch, out_ch, kernel), nn.ReLU(), nn.Dropout(drop), nn.MaxPool2d(2)]
        size = (size - kernel + 1) // 2
        in_ch = out_ch
    mods += [nn.Flatten(), nn.Linear(in_ch * size * size, hidden), nn.ReLU(), nn.Dropout(0.5),
             nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.5)]
    return nn.Sequential(*mods)


def build_trunk(cfg: ModelConfig, input_shape: Sequence[int]) -> tuple[nn.Sequential, int]:
    """The plain trunk and its feature size."""
    if cfg.family == "alexnet":
        hidden = cfg.hidden or 2048
        return alexnet_trunk(input_shape, hidden), hidden
    hidden = cfg.hidden or 2000
    trunk = mlp_trunk(input_shape, hidden, cfg.layers, cfg.dropout, cfg.input_dropout)
    return trunk, hidden


def build_model(
    cfg: ModelConfig, input_shape: Sequence[int], head_sizes: Sequence[int], *,
    gated: bool, smax: float = 400.0, binary_masks: bool = True,
    embedding_init: Literal["normal", "uniform"] = "normal",
) -> MultiHeadNet:
    """A multi-head network with one head per task; HAT-gated when ``gated``."""
    trunk, features = build_trunk(cfg, input_shape)
    if gated:
        return HATNet.wrap(trunk, input_shape, head_sizes, smax=smax,
                           binary_masks=binary_masks, embedding_init=embedding_init)
    return MultiHeadNet(trunk, features, head_sizes)
