"""What the rehearsal plugins share: a memory filled from the training part only, its state,
and the keyword-only strategy that appends its plugin.

- ``RehearsalPlugin``: the plugin's ``config`` and ``memory`` (one of ``memory.py``'s), the
  experiences taken in so far (``n_experiences``), ``memory_samples`` (the samples held, which
  the runner records) and the ``state_dict``/``load_state_dict`` pair over the memory.
  Every memory is filled by ``strategies.training.tensor_data.training_part(strategy)``: the
  experience's training samples, never the recipe's validation part (Avalanche's plugins
  read ``strategy.experience.dataset``, validation samples included).
- ``MemoryBatchConfig``: the Config of a memory with memory batches (ER, ER-ACE).
- ``RehearsalStrategy``: a ``SupervisedTemplate`` taking ``config=`` (or the Config's fields as
  keywords) and appending its plugin, as Avalanche's wrappers do.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

from avalanche.core import SupervisedPlugin
from avalanche.training.templates import SupervisedTemplate

from ..common.config import check_count, check_range, split_config

__all__ = ["MemoryBatchConfig", "RehearsalPlugin", "RehearsalStrategy", "memory_batch_size"]


@dataclass(frozen=True)
class MemoryBatchConfig:
    """A memory of ``mem_size`` samples in all and memory batches of ``mem_batch_ratio`` times
    ``train.batch_size``; errors name the strategy by its ``section``."""

    section: ClassVar[str]
    mem_size: int = 200
    mem_batch_ratio: float = 1.0

    def __post_init__(self):
        check_count(f"{self.section}.mem_size", self.mem_size)
        check_range(f"{self.section}.mem_batch_ratio", self.mem_batch_ratio, 0, low_open=True,
                    hint=" (the memory batch is this times train.batch_size)")


def memory_batch_size(ratio: float, train_mb_size: int) -> int:
    """Samples per memory batch: ``ratio`` times the training batch, at least one."""
    return max(1, round(ratio * train_mb_size))


class RehearsalPlugin(SupervisedPlugin):
    """Base of the rehearsal plugins: ``config``, ``memory``, ``n_experiences`` and the state.

    Put it first among the bases, before an Avalanche plugin whose hooks the subclass keeps:
    ``__init__`` passes ``*args``/``**kwargs`` on to that plugin's ``__init__``.
    """

    #: whether ``n_experiences`` is counted and part of the state
    counts_experiences: ClassVar[bool] = True

    def __init__(self, config: Any, memory: Any, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.config = config
        self.memory = memory
        if self.counts_experiences:
            self.n_experiences = 0

    def memory_samples(self) -> int:
        """Samples the memory holds."""
        return len(self.memory)

    def state_dict(self) -> dict:
        state: dict[str, Any] = {"memory": self.memory.state_dict()}
        if self.counts_experiences:
            state["n_experiences"] = self.n_experiences
        return state

    def load_state_dict(self, state: dict) -> None:
        self.memory.load_state_dict(state["memory"])
        if self.counts_experiences:
            self.n_experiences = int(state["n_experiences"])


class RehearsalStrategy(SupervisedTemplate):
    """A keyword-only ``SupervisedTemplate`` with its own plugin, built from ``config`` (or from
    the Config's fields given as keywords) and kept as ``self.<plugin_attribute>``."""

    config_class: ClassVar[type]
    plugin_class: ClassVar[type]
    plugin_attribute: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any):
        # Avalanche wraps each template's ``__init__`` in a check that every keyword is named
        # by an ``__init__`` signature along the MRO, which the Config's fields are not: take
        # the plain ``__init__`` instead (``split_config`` takes the fields from ``kwargs``;
        # ``SupervisedTemplate``'s own wrapper still checks the keywords left)
        super().__init_subclass__(**kwargs)
        cls.__init__ = inspect.unwrap(cls.__init__)

    def __init__(self, *, config: Any = None, plugins: list | None = None, **kwargs: Any):
        plugin = self.plugin_class(split_config(self.config_class, config, kwargs))
        setattr(self, self.plugin_attribute, plugin)
        super().__init__(plugins=[*(plugins or []), plugin], **kwargs)
