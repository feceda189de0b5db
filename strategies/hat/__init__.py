"""Hard Attention to the Task (Serrà et al., ICML 2018).

``layers`` (gated layers) → ``graph`` (gate groups from the traced trunk) → ``net`` (``HATNet``)
→ ``plugin`` (``HATPlugin``: the paper's training step; its CPU-exact shortcuts in
``fast_paths``) → ``strategy`` (``HAT``). ``config`` holds ``HATConfig``.
"""

from .config import HATConfig
from .layers import HATBatchNorm1d, HATBatchNorm2d, HATConv2d, HATError, HATLinear
from .net import HATNet, find_hat_model
from .plugin import (
    HATPlugin,
    anneal_s,
    attention_regulariser,
    compensation_factor,
    flushing_denormals,
)
from .strategy import HAT

__all__ = [
    "HAT", "HATConfig", "HATPlugin", "HATNet", "HATLinear", "HATConv2d", "HATBatchNorm1d",
    "HATBatchNorm2d", "HATError", "find_hat_model", "anneal_s", "attention_regulariser",
    "compensation_factor", "flushing_denormals",
]
