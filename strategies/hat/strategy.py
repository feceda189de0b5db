"""HAT as an Avalanche strategy: a ``SupervisedTemplate`` with ``HATPlugin``."""

from __future__ import annotations

import torch
from avalanche.training.templates import SupervisedTemplate
from torch import nn
from torch.nn import CrossEntropyLoss

from .config import Anneal, HATConfig
from .layers import EmbeddingInit, HATError
from .net import find_hat_model
from .plugin import HATPlugin


class HAT(SupervisedTemplate):
    """Hard Attention to the Task: a ``SupervisedTemplate`` with ``HATPlugin``.

    ``model`` must be a ``HATNet`` (see ``HATNet.wrap``).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion=None,
        smax: float = 400.0,
        c: float = 0.75,
        anneal: Anneal = "reference",
        soft_masks: bool = False,
        clipgrad: float = 10000.0,
        thres_cosh: float = 50.0,
        thres_emb: float = 6.0,
        embedding_init: EmbeddingInit = "normal",
        flush_denormal: bool = True,
        train_mb_size: int = 64,
        train_epochs: int = 1,
        eval_mb_size: int | None = None,
        device: str | torch.device = "cpu",
        plugins: list | None = None,
        **base_kwargs,
    ):
        find_hat_model(model)
        if any(isinstance(p, HATPlugin) for p in plugins or []):
            raise HATError(
                "HAT adds its own HATPlugin: remove the HATPlugin from plugins=, or pass it "
                "to another strategy (e.g. Naive) instead of HAT"
            )
        self.hat_plugin = HATPlugin(
            HATConfig(
                smax=smax, c=c, anneal=anneal, soft_masks=soft_masks, clipgrad=clipgrad,
                thres_cosh=thres_cosh, thres_emb=thres_emb, embedding_init=embedding_init,
                flush_denormal=flush_denormal,
            )
        )
        plugins = [*(plugins or []), self.hat_plugin]
        super().__init__(
            model=model,
            optimizer=optimizer,
            criterion=criterion if criterion is not None else CrossEntropyLoss(),
            train_mb_size=train_mb_size,
            train_epochs=train_epochs,
            eval_mb_size=eval_mb_size or train_mb_size,
            device=device,
            plugins=plugins,
            **base_kwargs,
        )
