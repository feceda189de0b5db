"""HAT's hyperparameters (defaults: the paper's, smax = 400, c = 0.75)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..common.config import ConfigError, check_range
from .layers import EmbeddingInit

Anneal = Literal["reference", "paper"]


@dataclass(frozen=True)
class HATConfig:
    """HAT hyperparameters; defaults are the paper's (smax = 400, c = 0.75)."""

    smax: float = 400.0
    c: float = 0.75
    #: "reference": s from i/N (sample index of the batch start / samples);
    #: "paper": s from (b−1)/(B−1) (batch index / batches), Eq. 3.
    anneal: Anneal = "reference"
    #: False: binary masks (gate > 0.5) for evaluation and conditioning, exact protection.
    #: True: sigmoid(smax·e) masks as in the reference implementation.
    soft_masks: bool = False
    clipgrad: float = 10000.0
    thres_cosh: float = 50.0
    thres_emb: float = 6.0
    embedding_init: EmbeddingInit = "normal"
    #: on CPU, flush denormal floats to zero while training an experience
    #: (``torch.set_flush_denormal``; the previous mode is restored after it):
    #: gates σ(s·e) of unused units reach ~1e-40, and denormal activations and gradients
    #: make CPU matrix products 2–3× slower. No effect on GPU.
    flush_denormal: bool = True

    def __post_init__(self):
        if not (self.smax > 0 and math.isfinite(self.smax)):
            raise ConfigError(f"hat.smax must be > 0 (the paper uses 400), got {self.smax}")
        if not (self.c >= 0 and math.isfinite(self.c)):
            raise ConfigError(f"hat.c must be >= 0 (the paper uses 0.75), got {self.c}")
        for name in ("clipgrad", "thres_cosh", "thres_emb"):
            check_range(f"hat.{name}", getattr(self, name), 0, low_open=True)
        if self.anneal not in ("reference", "paper"):
            raise ConfigError(f"hat.anneal must be 'reference' or 'paper', got {self.anneal!r}")
        if self.embedding_init not in ("normal", "uniform"):
            raise ConfigError(
                f"hat.embedding_init must be 'normal' or 'uniform', got {self.embedding_init!r}"
            )
