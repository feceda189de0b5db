"""A toy continual-learning method in one file, as a user adds one: its config, its plugin (an
L2 pull towards the weights the previous experiences left, using the suite's hooks), and one
registry entry (``SPEC``, added with ``strategies.registry.register``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training import Naive

from strategies.common.config import check_range
from strategies.registry import BuildContext, StrategySpec


@dataclass(frozen=True)
class ToyConfig:
    #: weight of the squared distance to the previous experiences' weights
    pull: float = 0.01

    def __post_init__(self):
        check_range("toy.pull", self.pull, 0)


class ToyPlugin(SupervisedPlugin):
    """Adds ``pull`` · ‖θ − θ_prev‖² over the parameters the previous experience ended with."""

    #: rebuilt before it is read again: left out of checkpoints
    checkpoint_transient = ("_last",)

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.anchor: dict[str, torch.Tensor] = {}
        self.experiences = 0
        self._last: torch.Tensor | None = None

    def penalty(self, model: torch.nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        terms = [(params[name] - old).pow(2).sum() for name, old in self.anchor.items()]
        return self.config.pull * torch.stack(terms).sum()

    def before_backward(self, strategy, **kwargs):
        if self.anchor:
            self._last = self.penalty(strategy.model)
            strategy.loss = strategy.loss + self._last

    def after_training_exp(self, strategy, **kwargs):
        self.anchor = {n: p.detach().clone() for n, p in strategy.model.named_parameters()}
        self.experiences += 1

    # the suite's hooks (strategies.common.hooks)
    @torch.no_grad()
    def validation_penalty(self, strategy) -> float:
        return float(self.penalty(strategy.model)) if self.anchor else 0.0

    def state_dict(self) -> dict:
        return {"anchor": dict(self.anchor), "experiences": self.experiences}

    def load_state_dict(self, state: dict) -> None:
        self.anchor, self.experiences = dict(state["anchor"]), int(state["experiences"])


def _make(ctx: BuildContext, p: ToyConfig):
    common = ctx.common()
    common["plugins"].append(ToyPlugin(p))
    return Naive(**common)


SPEC = StrategySpec("toy", "a toy method: an L2 pull towards the previous weights", ToyConfig,
                    _make, space={"pull": (0.001, 0.1)})
