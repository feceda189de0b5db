"""PathNet (Fernando et al., 2017) for the suite's MLP and AlexNet-like trunks.

Own implementation (Avalanche has no PathNet). The network follows the HAT reference
implementation's: each of the trunk's L parametric layers (L = 2 for the default MLP, 5 for the
AlexNet-like net) is replaced by M parallel modules, each a narrow copy of that layer (same
kind, kernel, activation, dropout and pooling); a path picks N distinct modules per layer, and
a layer's output is the sum of its N modules' outputs (after their activation, dropout and
pooling). Each task has its own head on the path's output.

Module width: ``width`` is the fraction of the trunk layer's units (channels) each module gets
(at least 1); by default the largest one for which the M modules of every layer together hold
at most the shared trunk's parameter count (heads not counted), as the reference's
"expand_factor" does.

Training one task (a simplified tournament, documented deviation from the paper's P = 64
population with asynchronous binary tournaments, and from the reference's
10-epochs-per-path generations with per-path validation and lr schedules):

1. From the second task on, every module outside the earlier tasks' paths is re-initialised
   (as in the paper and the reference).
2. Evolution: ``population`` random paths (default 2: the reference's P); for each of the G
   ``generations`` every path trains (only its modules that are not frozen, plus the task's
   head) for ``path_epochs`` epochs of the task's training data with a fresh optimizer of the
   strategy's type and learning rate; its fitness is its mean training loss over that budget
   (lower wins; the paper's fitness is the training accuracy, the loss breaks its ties); every
   other path is replaced by a mutated copy of the winner (each of the L*N entries moves with
   probability 1/(N*L) by an integer in [-2, 2] modulo M, kept when it would repeat a module
   of the layer).
3. The last winner becomes the task's path and is trained by the strategy's normal loop for
   the configured epochs (with the training recipe: validation, lr schedule, best weights).
4. After the task its path's modules are frozen for good.

Exactness: frozen modules and every other task's head have ``requires_grad = False`` and no
gradient or optimizer state, so no optimizer (momentum and weight decay included) moves them,
and earlier tasks' outputs stay bit-identical. Paths and frozen modules are part of the model's
``state_dict`` (extra state), so best-weights restores and checkpoints keep them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from ..common.config import ConfigError, check_range
from ..common.multihead import (
    BaselineError,
    FreezingPlugin,
    MultiHeadNet,
    add_head,
    drop_optimizer_state,
    experience_task,
    freeze_all_but,
    multihead_parts,
)
from ..training.recipe import same_optimizer
from ..training.tensor_data import TensorLoader, training_part
from .trunk_plan import TrunkPlan, fit_fraction, meta_param_count

Path = list[list[int]]


#: most modules per layer ``pathnet.modules`` takes (each module keeps at least one unit, so
#: the network grows with M: far beyond the paper's 16 it only exhausts memory)
MAX_MODULES = 1024


@dataclass(frozen=True)
class PathNetConfig:
    """PathNet: M modules per layer, N active per path, G generations (the paper's 16/3/20)."""

    modules: int = 16
    active: int = 3
    generations: int = 20
    population: int = 2
    #: training budget of one path in one generation, in epochs of the task's training data
    path_epochs: float = 1.0
    #: module width as a fraction of the trunk layer; None: M modules match the trunk's size
    width: float | None = None

    def __post_init__(self):
        if not 1 <= self.modules <= MAX_MODULES:
            raise ConfigError(
                f"pathnet.modules must be in [1, {MAX_MODULES}] (modules per layer; the paper "
                f"uses 16), got {self.modules}")
        if not 1 <= self.active <= self.modules:
            raise ConfigError(
                f"pathnet.active must be in [1, pathnet.modules={self.modules}], got "
                f"{self.active}"
            )
        if self.generations < 1:
            raise ConfigError(f"pathnet.generations must be >= 1, got {self.generations}")
        if self.population < 2:
            raise ConfigError(f"pathnet.population must be >= 2, got {self.population}")
        check_range("pathnet.path_epochs", self.path_epochs, 0, low_open=True)
        if self.width is not None:
            check_range("pathnet.width", self.width, 0, 1, low_open=True)


class PathNetNet(MultiHeadNet):
    """M modules per trunk layer, one path (N modules per layer) and one head per task."""

    def __init__(self, plan: TrunkPlan, width: float, n_modules: int = 16, n_active: int = 3,
                 head_sizes: Sequence[int] = ()):
        if not 0 < width <= 1:
            raise ConfigError(f"pathnet.width must be in (0, 1], got {width}")
        if not 1 <= n_active <= n_modules:
            raise ConfigError(f"PathNet needs 1 <= N <= M, got N={n_active}, M={n_modules}")
        widths = plan.widths(width)
        super().__init__(plan.make_stem(), widths[-1], ())
        self.width = float(width)
        self.widths = widths
        self.n_modules = int(n_modules)
        self.n_active = int(n_active)
        ins = [plan.stages[0].in_units, *widths[:-1]]
        self.layers = nn.ModuleList(
            nn.ModuleList(s.make(i, o) for _ in range(n_modules))
            for s, i, o in zip(plan.stages, ins, widths, strict=True)
        )
        self.posts = nn.ModuleList(s.make_post() for s in plan.stages)
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)
        self.paths: dict[str, Path] = {}
        #: per layer, the modules frozen by earlier tasks' paths
        self.frozen: list[set[int]] = [set() for _ in self.layers]
        for task, n_classes in enumerate(head_sizes):
            self.add_task(task, n_classes)

    # ----------------------------------------------------------------- building
    @staticmethod
    def fit_width(plan: TrunkPlan, n_modules: int) -> float:
        """The widest modules for which M of them per layer fit the trunk's size."""
        def count(fraction: float) -> int:
            widths = plan.widths(fraction)
            ins = [plan.stages[0].in_units, *widths[:-1]]
            per_module = meta_param_count(lambda: nn.ModuleList(
                s.make(i, o) for s, i, o in zip(plan.stages, ins, widths, strict=True)))
            return n_modules * per_module
        return fit_fraction(count, plan.n_params)

    @classmethod
    def from_multihead(cls, model: nn.Module, width: float | None = None, n_modules: int = 16,
                       n_active: int = 3) -> PathNetNet:
        """A PathNet shaped after ``model``'s trunk, with a head per head of ``model``."""
        trunk, heads = multihead_parts(model)
        plan = TrunkPlan.from_trunk(trunk)
        if width is None:
            width = cls.fit_width(plan, n_modules)
        net = cls(plan, width, n_modules, n_active)
        for t in sorted(int(k) for k in heads):
            net.add_task(t, heads[str(t)].out_features)
        for p in model.parameters():
            return net.to(p.device)
        return net

    def add_task(self, task: int, n_classes: int) -> None:
        if not add_head(self.heads, task, self.feature_dim, n_classes, self._device_probe.device):
            return
        self.paths[str(int(task))] = self.random_path()
        self.max_class_label = max(self.max_class_label, int(n_classes))

    # -------------------------------------------------------------------- paths
    def random_path(self) -> Path:
        return [torch.randperm(self.n_modules)[: self.n_active].tolist() for _ in self.layers]

    def mutate(self, path: Path) -> Path:
        """Each entry moves by an integer in [-2, 2] (mod M) with probability 1/(N*L)."""
        prob = 1.0 / (self.n_active * len(self.layers))
        new = [list(layer) for layer in path]
        for layer in new:
            for k in range(len(layer)):
                if float(torch.rand(())) < prob:
                    cand = (layer[k] + int(torch.randint(-2, 3, ()))) % self.n_modules
                    if cand not in layer:
                        layer[k] = cand
        return new

    def path(self, task: int) -> Path:
        self.check_task(task)
        return [list(layer) for layer in self.paths[str(int(task))]]

    def set_path(self, task: int, path: Path) -> None:
        self.check_task(task)
        if len(path) != len(self.layers) or any(
            len(set(layer)) != self.n_active or not all(0 <= i < self.n_modules for i in layer)
            for layer in path
        ):
            raise ValueError(f"invalid path {path}: {len(self.layers)} layers of "
                             f"{self.n_active} distinct modules in [0, {self.n_modules})")
        self.paths[str(int(task))] = [[int(i) for i in layer] for layer in path]

    def freeze_path(self, task: int) -> None:
        for frozen, layer in zip(self.frozen, self.path(task), strict=True):
            frozen.update(layer)

    def trainable_parameters(self, task: int) -> list[nn.Parameter]:
        """The task's head and the modules of its path that no earlier task froze."""
        params = list(self.heads[str(int(task))].parameters())
        for mods, frozen, layer in zip(self.layers, self.frozen, self.path(task), strict=True):
            for i in layer:
                if i not in frozen:
                    params += list(mods[i].parameters())
        return params

    @torch.no_grad()
    def reinit_free_modules(self) -> list[nn.Parameter]:
        """Re-initialise every module no task froze; returns their parameters."""
        params = []
        for mods, frozen in zip(self.layers, self.frozen, strict=True):
            for i, mod in enumerate(mods):
                if i not in frozen:
                    mod.reset_parameters()
                    params += list(mod.parameters())
        return params

    # ------------------------------------------------------------------ forward
    def features(self, x: torch.Tensor, task: int) -> torch.Tensor:
        h = self.trunk(x)
        for mods, post, layer in zip(self.layers, self.posts, self.paths[str(int(task))],
                                     strict=True):
            out = post(mods[layer[0]](h))
            for i in layer[1:]:
                out = out + post(mods[i](h))
            h = out
        return h

    # ------------------------------------------------------------ checkpoints
    def get_extra_state(self):
        return {"paths": {k: [list(v) for v in p] for k, p in self.paths.items()},
                "frozen": [sorted(f) for f in self.frozen]}

    def set_extra_state(self, state) -> None:
        self.paths = {k: [list(v) for v in p] for k, p in state["paths"].items()}
        self.frozen = [set(f) for f in state["frozen"]]


class PathNetPlugin(FreezingPlugin):
    """Path evolution before each experience, training of the winner, then freezing."""

    def __init__(self, generations: int = 20, population: int = 2, path_epochs: float = 1.0):
        super().__init__()
        self.generations = int(generations)
        self.population = int(population)
        self.path_epochs = float(path_epochs)
        #: per trained task, the fitness (mean training loss) of each path in each generation
        self.fitness: list[list[list[float]]] = []

    def before_training_exp(self, strategy, **kwargs):
        model = strategy.model
        if not isinstance(model, PathNetNet):
            raise BaselineError("the PathNet strategy needs a PathNetNet model")
        task = experience_task(strategy)
        model.check_task(task)
        if task in self.trained_tasks:
            raise BaselineError(
                f"PathNet already trained task {task} and froze its path; PathNet needs a new "
                "task label per experience"
            )
        if self.trained_tasks:
            drop_optimizer_state(strategy.optimizer, model.reinit_free_modules())
        data = training_part(strategy)
        model.set_path(task, self._evolve(strategy, model, task, data))
        self._frozen = freeze_all_but(model, model.trainable_parameters(task),
                                      strategy.optimizer)

    def _batches(self, data, batch_size: int) -> Iterator[list[torch.Tensor]]:
        while True:
            yield from TensorLoader(data, batch_size, shuffle=True)

    def _evolve(self, strategy, model: PathNetNet, task: int, data) -> list[list[int]]:
        batch_size = strategy.train_mb_size
        steps = max(1, round(self.path_epochs * math.ceil(len(data[0]) / batch_size)))
        batches = self._batches(data, batch_size)
        population = [model.random_path() for _ in range(self.population)]
        history = []
        winner = population[0]
        was = model.training
        model.train()
        for gen in range(self.generations):
            fit = [self._train_path(strategy, model, task, path, batches, steps)
                   for path in population]
            history.append(fit)
            best = min(range(len(fit)), key=fit.__getitem__)
            winner = population[best]
            if gen + 1 < self.generations:
                population = [winner if i == best else model.mutate(winner)
                              for i in range(len(population))]
        model.train(was)
        self.fitness.append(history)
        return winner

    def _train_path(self, strategy, model: PathNetNet, task: int, path, batches,
                    steps: int) -> float:
        model.set_path(task, path)
        params = model.trainable_parameters(task)
        freeze_all_but(model, params)
        optimizer = same_optimizer(strategy.optimizer, params)
        total = torch.zeros((), device=strategy.device)
        n = 0
        for _ in range(steps):
            x, y, _t = next(batches)
            loss = strategy._criterion(model.forward_single_task(x, task), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(y)
            n += len(y)
        return float(total) / max(n, 1)

    def after_training_exp(self, strategy, **kwargs):
        strategy.model.freeze_path(experience_task(strategy))
        super().after_training_exp(strategy, **kwargs)


class PathNet(SupervisedTemplate):
    """PathNet as a strategy; ``model`` must be a ``PathNetNet`` (see ``from_multihead``)."""

    def __init__(self, *, model: nn.Module, generations: int = 20, population: int = 2,
                 path_epochs: float = 1.0, plugins=None, **kwargs):
        if not isinstance(model, PathNetNet):
            raise BaselineError(
                "PathNet needs a PathNetNet model: build one with PathNetNet.from_multihead"
            )
        self.pathnet_plugin = PathNetPlugin(generations, population, path_epochs)
        super().__init__(model=model, plugins=[*(plugins or []), self.pathnet_plugin], **kwargs)
