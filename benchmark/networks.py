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

import torch
from torch import nn

from strategies import ConfigError, HATNet, MultiHeadNet

_MASK_DTYPES = (torch.float32, torch.float64)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with cheaper masks on CPU: the same distribution, p in steps of 2⁻¹⁶.

    Torch's CPU dropout draws one 32-bit random number per element through ``bernoulli_``
    and costs about a quarter of a training step of the embedded MLP. Here masks are drawn
    ahead, ``CHUNK`` elements at a time, from torch's global generator (seeded runs repeat):
    one 64-bit draw gives four 16-bit uniforms u, an element is kept when
    u ≥ round(p·2¹⁶) and then scaled by 1/(1 − p), as torch scales. A forward pass takes
    the next slice of masks and multiplies (one operation; backward multiplies by the same
    slice). Copies (``copy.deepcopy``, pickling) draw their own masks. On accelerators, in
    evaluation mode and in place: torch's dropout.
    """

    #: mask elements drawn at once (4 MiB of float32); larger inputs draw their own
    CHUNK = 1 << 20

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__(p, inplace)
        self._masks: torch.Tensor | None = None
        self._used = 0

    def __getstate__(self):
        return {**super().__getstate__(), "_masks": None, "_used": 0}

    def draw(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        """``n`` fresh mask values: 1/(1 − p) with probability ≈ 1 − p, else 0."""
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
        u = words.view(torch.int16)[:n].to(dtype)  # uniform integers in [-2¹⁵, 2¹⁵)
        scale = 1.0 / (1.0 - self.p)
        k = round(self.p * 65536) - 32768  # keep when u ≥ k
        # (u − k + ½)·2s is ≥ s when kept and ≤ −s otherwise: clamped, exactly s or 0
        return u.sub_(k - 0.5).mul_(2 * scale).clamp_(0.0, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and x.is_cpu and x.dtype in _MASK_DTYPES and not self.inplace
                and 0.0 < self.p < 1.0):
            return super().forward(x)
        n = x.numel()
        if 4 * n > self.CHUNK:
            return x * self.draw(n, x.dtype).view(x.shape)
        masks = self._masks
        if masks is None or masks.dtype != x.dtype or self._used + n > len(masks):
            masks = self._masks = self.draw(self.CHUNK, x.dtype)  # new tensor: saved
            self._used = 0  # slices of the old one stay valid for backward
        mask = masks[self._used : self._used + n].view(x.shape)
        self._used += n
        return x * mask


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
    mods: list[nn.Module] = [nn.Flatten(), Dropout(input_dropout)]
    width = math.prod(input_shape)
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.ReLU(), Dropout(dropout)]
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
        mods += [nn.Conv2d(in_ch, out_ch, kernel), nn.ReLU(), Dropout(drop), nn.MaxPool2d(2)]
        size = (size - kernel + 1) // 2
        in_ch = out_ch
    mods += [nn.Flatten(), nn.Linear(in_ch * size * size, hidden), nn.ReLU(), Dropout(0.5),
             nn.Linear(hidden, hidden), nn.ReLU(), Dropout(0.5)]
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
