"""Progressive Neural Networks (Rusu et al., 2016) for the suite's MLP and AlexNet-like trunks.

One column per task, each a narrower copy of the shared trunk (same layer types, kernels,
activations, dropout and pooling; every layer's width times ``width``), with lateral adapters
from all earlier columns into every layer after the first and into the task's head. While a
task trains, only its own column, adapters and head have ``requires_grad``; every earlier
column (and every other head) is frozen and loses its gradient and optimizer state, so the
outputs of earlier tasks stay bit-identical whatever the optimizer (see ``freeze_all_but`` in
``strategies.common.multihead``).

Adapters are the paper's non-linear ones, as in the HAT reference implementation: the earlier
columns' activations h^{<k}_{l-1}, each scaled by a learned scalar alpha_j (initialised small,
N(0, 0.1^2)), are concatenated and reduced to one column's width by V (a 1x1 convolution for
conv layers, a linear layer on the flattened features for linear layers), then ReLU, then U,
an operation of the layer's own type (same kernel, stride and padding for a conv), added to the
column's pre-activation. The head adapter has no ReLU.

Column width: ``width`` is the fraction of each trunk layer's units (channels) a column gets
(at least 1). By default it is chosen so that all the columns with all their adapters (those
into the heads included) hold at most as many parameters as the shared trunk (the heads
themselves not counted), for the tasks whose heads the model has when the strategy is built
(the runner creates every task's head up front): compare like with like. The reference
implementation fixes columns at 1.117/n_tasks of each layer instead (about the same: 0.112
against 0.109 here for the AlexNet-like net and 10 tasks).

Own implementation, not Avalanche's ``PNN``/``PNNStrategy``: those only build MLPs of equal
hidden sizes without dropout, put their own ``MultiHeadClassifier`` on the last column, and have
no adapter into the head nor any convolutional column.

The layer-by-layer description of the trunk (``TrunkPlan``) is in ``trunk_plan``, shared with
PathNet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from ..common.config import ConfigError, check_range
from ..common.multihead import (
    BaselineError,
    FreezingPlugin,
    MultiHeadNet,
    experience_task,
    freeze_all_but,
    multihead_parts,
)
from .trunk_plan import Stage, TrunkPlan, fit_fraction, meta_param_count


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


# ------------------------------------------------------------------------ PNN model
class LateralAdapter(nn.Module):
    """Earlier columns' activations → alpha-scaled concat → V → (ReLU) → U."""

    def __init__(self, n_prev: int, stage: Stage, in_units: int, out_units: int,
                 nonlinear: bool = True):
        super().__init__()
        self.alpha = nn.Parameter(0.1 * torch.randn(n_prev))
        if stage.kind == "conv":
            self.V = nn.Conv2d(n_prev * in_units, in_units, kernel_size=1)
        else:
            width = in_units * stage.mult
            self.V = nn.Linear(n_prev * width, width)
        self.U = stage.make(in_units, out_units)
        self.nonlinear = nonlinear

    def forward(self, prev: Sequence[torch.Tensor]) -> torch.Tensor:
        a = torch.cat(list(prev), dim=1)  # every column has the same width
        scale = self.alpha.repeat_interleave(prev[0].shape[1])
        a = a * scale.view(1, -1, *([1] * (a.dim() - 2)))  # alpha_j on column j's block
        a = self.V(a)
        if self.nonlinear:
            a = F.relu(a)
        return self.U(a)


class PNNColumn(nn.Module):
    """Column ``index``: the trunk's layers at ``widths``, adapters from ``index`` columns."""

    def __init__(self, plan: TrunkPlan, widths: Sequence[int], index: int):
        super().__init__()
        ins = [plan.stages[0].in_units, *widths[:-1]]
        self.layers = nn.ModuleList(
            s.make(i, o) for s, i, o in zip(plan.stages, ins, widths, strict=True))
        self.posts = nn.ModuleList(s.make_post() for s in plan.stages)
        self.adapters = nn.ModuleList(
            LateralAdapter(index, s, i, o)
            for s, i, o in zip(plan.stages[1:], ins[1:], widths[1:], strict=True)
        ) if index > 0 else nn.ModuleList()


class ProgressiveNet(MultiHeadNet):
    """A ``MultiHeadNet`` whose "trunk" is one PNN column per task (created with its head)."""

    def __init__(self, plan: TrunkPlan, width: float, head_sizes: Sequence[int] = ()):
        if not 0 < width <= 1:
            raise ConfigError(f"pnn.width must be in (0, 1], got {width}")
        widths = plan.widths(width)
        super().__init__(plan.make_stem(), widths[-1], ())
        self.plan = plan
        self.width = float(width)
        self.widths = widths
        self.columns = nn.ModuleDict()
        self.head_adapters = nn.ModuleDict()
        #: task ids in column order: a column receives laterals from all earlier ones
        self.order: list[int] = []
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)
        for task, n_classes in enumerate(head_sizes):
            self.add_task(task, n_classes)

    # ----------------------------------------------------------------- building
    @staticmethod
    def fit_width(plan: TrunkPlan, head_sizes: Sequence[int]) -> float:
        """The widest columns for which one column per head, with the lateral adapters
        (those into the heads included, the heads themselves not), fit the trunk's size."""
        def count(fraction: float) -> int:
            widths = plan.widths(fraction)

            def build() -> nn.Module:
                mods = nn.ModuleList(PNNColumn(plan, widths, k) for k in range(len(head_sizes)))
                for k, n in enumerate(head_sizes[1:], start=1):
                    mods.append(LateralAdapter(k, Stage("linear", widths[-1], n), widths[-1], n,
                                               nonlinear=False))
                return mods

            return meta_param_count(build)
        return fit_fraction(count, plan.n_params)

    @classmethod
    def from_multihead(cls, model: nn.Module, width: float | None = None) -> ProgressiveNet:
        """Columns shaped after ``model``'s trunk, one per head of ``model`` (task order)."""
        trunk, heads = multihead_parts(model)
        plan = TrunkPlan.from_trunk(trunk)
        tasks = sorted(int(k) for k in heads)
        if width is None:
            if not tasks:
                raise ConfigError(
                    "pnn.width=None sizes the columns for the number of tasks, but the model "
                    "has no heads yet: create the heads first (model.add_task) or set pnn.width"
                )
            width = cls.fit_width(plan, [heads[str(t)].out_features for t in tasks])
        net = cls(plan, width)
        for t in tasks:
            net.add_task(t, heads[str(t)].out_features)
        return net.to(_device_of(model))

    def add_task(self, task: int, n_classes: int) -> None:
        key = str(int(task))
        if key in self.heads:
            return
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1 for task {task}, got {n_classes}")
        device = self._device_probe.device
        k = len(self.order)
        self.columns[key] = PNNColumn(self.plan, self.widths, k).to(device)
        self.heads[key] = nn.Linear(self.feature_dim, int(n_classes)).to(device)
        if k > 0:
            head_stage = Stage("linear", self.feature_dim, int(n_classes))
            self.head_adapters[key] = LateralAdapter(
                k, head_stage, self.feature_dim, int(n_classes), nonlinear=False).to(device)
        self.order.append(int(task))
        self.max_class_label = max(self.max_class_label, int(n_classes))

    def column_index(self, task: int) -> int:
        self.check_task(task)
        return self.order.index(int(task))

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """What task ``task`` trains: its column (with adapters), head and head adapter."""
        key = str(int(task))
        params = [*self.columns[key].parameters(), *self.heads[key].parameters()]
        if key in self.head_adapters:
            params += list(self.head_adapters[key].parameters())
        return params

    # ------------------------------------------------------------------ forward
    def column_outputs(self, x: torch.Tensor, k: int) -> list[torch.Tensor]:
        """Last hidden activations of columns 0..k."""
        cols = [self.columns[str(t)] for t in self.order[: k + 1]]
        h0 = self.trunk(x)
        hs = [h0] * len(cols)
        for level in range(len(self.widths)):
            new = []
            for j, col in enumerate(cols):
                z = col.layers[level](hs[j])
                if level > 0 and j > 0:
                    z = z + col.adapters[level - 1](hs[:j])
                new.append(col.posts[level](z))
            hs = new
        return hs

    def features(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.column_outputs(x, self.column_index(task))[-1]

    def forward_single_task(self, x: torch.Tensor, task_label: int) -> torch.Tensor:
        task = int(task_label)
        k = self.column_index(task)
        hs = self.column_outputs(x, k)
        out = self.heads[str(task)](hs[k])
        if k > 0:
            out = out + self.head_adapters[str(task)](hs[:k])
        return out


# ------------------------------------------------------------------ plugin, strategy
@dataclass(frozen=True)
class PNNConfig:
    """PNN: column width as a fraction of the trunk's layers (None: match the trunk's size)."""

    width: float | None = None

    def __post_init__(self):
        if self.width is not None:
            check_range("pnn.width", self.width, 0, 1, low_open=True)


class PNNPlugin(FreezingPlugin):
    """Train the experience's column only; every other column and head is frozen."""

    def before_training_exp(self, strategy, **kwargs):
        model = strategy.model
        if not isinstance(model, ProgressiveNet):
            raise BaselineError("the PNN strategy needs a ProgressiveNet model")
        task = experience_task(strategy)
        k = model.column_index(task)
        if task in self.trained_tasks:
            raise BaselineError(
                f"PNN already trained task {task}: retraining its column would change every "
                "later column's input; PNN needs a new task label per experience"
            )
        missing = [t for t in model.order[:k] if t not in self.trained_tasks]
        if missing:
            raise BaselineError(
                f"task {task}'s column reads from the columns of tasks {missing}, which are "
                "not trained yet: train the tasks in the order their heads were created"
            )
        self._frozen = freeze_all_but(model, model.task_parameters(task), strategy.optimizer)


class ProgressiveNeuralNetwork(SupervisedTemplate):
    """PNN as a strategy; ``model`` must be a ``ProgressiveNet`` (see ``from_multihead``)."""

    def __init__(self, *, model: nn.Module, plugins=None, **kwargs):
        if not isinstance(model, ProgressiveNet):
            raise BaselineError(
                "ProgressiveNeuralNetwork needs a ProgressiveNet model: build one with "
                "ProgressiveNet.from_multihead(model)"
            )
        self.pnn_plugin = PNNPlugin()
        super().__init__(model=model, plugins=[*(plugins or []), self.pnn_plugin], **kwargs)


__all__ = [
    "LateralAdapter", "PNNColumn", "PNNConfig", "PNNPlugin", "ProgressiveNet",
    "ProgressiveNeuralNetwork",
]
