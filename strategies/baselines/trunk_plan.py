"""A ``nn.Sequential`` trunk described layer by layer, for the baselines that rebuild it
(PNN's columns, PathNet's modules): ``TrunkPlan``, ``fit_fraction`` and ``meta_param_count``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..common.multihead import BaselineError


@dataclass(frozen=True)
class Stage:
    """One parametric layer of a trunk plus the parameter-free modules that follow it."""

    kind: str  # "linear" or "conv"
    in_units: int  # input features (linear) or channels (conv) in the trunk
    out_units: int
    #: inputs per input unit: 1, or the spatial positions of a flattened conv map
    mult: int = 1
    bias: bool = True
    conv: dict = field(default_factory=dict)  # kernel_size, stride, padding, dilation, ...
    post: tuple[nn.Module, ...] = ()

    def make(self, in_units: int, out_units: int) -> nn.Module:
        """This stage's layer with ``in_units`` inputs (channels) and ``out_units`` outputs."""
        if self.kind == "linear":
            return nn.Linear(in_units * self.mult, out_units, bias=self.bias)
        return nn.Conv2d(in_units, out_units, bias=self.bias, **self.conv)

    def make_post(self) -> nn.Sequential:
        return nn.Sequential(*(copy.deepcopy(m) for m in self.post))


@dataclass(frozen=True)
class TrunkPlan:
    """A ``nn.Sequential`` trunk of Linear/Conv2d layers and parameter-free modules."""

    stem: tuple[nn.Module, ...]
    stages: tuple[Stage, ...]
    n_params: int

    @classmethod
    def from_trunk(cls, trunk: nn.Module) -> TrunkPlan:
        if not isinstance(trunk, nn.Sequential):
            raise BaselineError(
                f"PNN/PathNet rebuild the trunk layer by layer and need an nn.Sequential "
                f"trunk, got {type(trunk).__name__}"
            )
        stem: list[nn.Module] = []
        stages: list[dict] = []
        for mod in trunk:
            if isinstance(mod, nn.Conv2d):
                if mod.groups != 1:
                    raise BaselineError("PNN/PathNet support Conv2d layers with groups=1 only")
                if stages and (stages[-1]["kind"] != "conv"
                               or stages[-1]["out_units"] != mod.in_channels):
                    raise BaselineError(
                        f"unsupported trunk: {mod} does not follow a conv layer with "
                        f"{mod.in_channels} channels"
                    )
                conv = dict(kernel_size=mod.kernel_size, stride=mod.stride,
                            padding=mod.padding, dilation=mod.dilation,
                            padding_mode=mod.padding_mode)
                stages.append(dict(kind="conv", in_units=mod.in_channels,
                                   out_units=mod.out_channels, mult=1,
                                   bias=mod.bias is not None, conv=conv, post=[]))
            elif isinstance(mod, nn.Linear):
                in_units, mult = mod.in_features, 1
                if stages:
                    prev = stages[-1]["out_units"]
                    if stages[-1]["kind"] == "linear" and mod.in_features != prev:
                        raise BaselineError(f"unsupported trunk: {mod} follows {prev} units")
                    if mod.in_features % prev:
                        raise BaselineError(
                            f"unsupported trunk: {mod} does not read a flattened map of "
                            f"{prev} channels"
                        )
                    in_units, mult = prev, mod.in_features // prev
                stages.append(dict(kind="linear", in_units=in_units, out_units=mod.out_features,
                                   mult=mult, bias=mod.bias is not None, conv={}, post=[]))
            elif any(True for _ in mod.parameters()) or any(True for _ in mod.buffers()):
                raise BaselineError(
                    f"PNN/PathNet support Linear, Conv2d and parameter-free modules in the "
                    f"trunk, not {type(mod).__name__}"
                )
            elif stages:
                stages[-1]["post"].append(mod)
            else:
                stem.append(mod)
        if not stages or stages[-1]["kind"] != "linear":
            raise BaselineError("PNN/PathNet need a trunk whose last parametric layer is Linear")
        n_params = sum(p.numel() for p in trunk.parameters())
        built = tuple(Stage(**{**s, "post": tuple(s["post"])}) for s in stages)
        return cls(tuple(stem), built, n_params)

    def widths(self, fraction: float) -> list[int]:
        """Each layer's units (channels) scaled by ``fraction``, at least 1."""
        return [max(1, int(fraction * s.out_units)) for s in self.stages]

    def make_stem(self) -> nn.Sequential:
        return nn.Sequential(*(copy.deepcopy(m) for m in self.stem))


def fit_fraction(count: Callable[[float], int], budget: int, hi: float = 1.0) -> float:
    """The largest fraction in (0, hi] whose ``count`` stays within ``budget`` (bisection;
    ``count`` must be non-decreasing). The smallest tried fraction if none fits."""
    lo_f, hi_f = 0.0, hi
    if count(hi) <= budget:
        return hi
    for _ in range(40):
        mid = (lo_f + hi_f) / 2
        if count(mid) <= budget:
            lo_f = mid
        else:
            hi_f = mid
    return lo_f if lo_f > 0 else hi_f


def meta_param_count(build: Callable[[], nn.Module]) -> int:
    """Parameters of the module ``build()`` returns, built on the meta device (no memory)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())
