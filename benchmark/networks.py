"""The paper's networks (docs/hat-reference.md §3) and two ResNets, plain or HAT-gated, sized from
the scenario.

Baselines and HAT share the same trunk: ``build_model`` builds one trunk module and either
puts heads on it (``MultiHeadNet``) or upgrades it with ``HATNet.wrap``.

- AlexNet-like (3×32×32): conv 64 (k = size/8), conv 128 (k = size/10), conv 256 (k = 2),
  each ReLU → dropout → 2×2 max-pool (dropout 0.2, 0.2, 0.5), then fc 2048, fc 2048 (ReLU,
  dropout 0.5); about 6.5 M trunk parameters at 32×32.
- MLP: input dropout 0.2, hidden layers of ``hidden`` units (ReLU, dropout 0.5). The paper's
  HAT MLP is 2 × 2000; the embedded default is 2 × 100 to fit the 8×8 digits.
- ResNet-18: torchvision's ``resnet18`` (random init, never downloaded) up to its global
  average pool (``fc`` is ``nn.Identity``): 512 features, about 11.2 M parameters. Its stem
  (``ModelConfig.stem``): ``imagenet`` is torchvision's (7×7 stride-2 conv, 3×3 max-pool),
  ``cifar`` the usual variant for small images (3×3 stride-1 conv, no max-pool); ``auto``
  (default) takes the CIFAR stem for images of at most 64 px a side (CIFAR, TinyImageNet, the
  digits), torchvision's above. Inputs with other than 3 channels get a first conv with that
  many input channels. Fixed widths: ``hidden`` does not apply.
- ResNet-32: He et al.'s CIFAR ResNet (6n + 2 layers, n = ``blocks``, 5 by default): a 3×3
  conv of ``hidden`` channels (16 by default), three stages of n basic blocks of ``hidden``,
  2·``hidden`` and 4·``hidden`` channels (stride 2 at the start of stages 2 and 3, where the
  shortcut is a 1×1 stride-2 conv + BatchNorm, FACIL's option B), global average pool:
  4·``hidden`` features, about 0.47 M parameters at n = 5. Any image size.

BatchNorm: every BatchNorm of the ResNets directly follows a bias-free conv and is that conv's
only consumer. Baselines (``gated=False``) keep it as ordinary BatchNorm shared by all tasks,
as FACIL and most papers do. ``HATNet.wrap`` turns each into a per-task BatchNorm that applies
its conv's gate: shared statistics would change the outputs of earlier tasks and break HAT's
exact protection.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torchvision
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
    #: a checkpoint keeps the generator state the masks were drawn from, not the masks: a
    #: resumed run draws the same chunk again (``_masks``, 4 MiB, would dwarf an MLP's weights)
    checkpoint_transient = ("_masks",)

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__(p, inplace)
        self._masks: torch.Tensor | None = None
        self._used = 0
        #: torch's global generator state before ``_masks`` was drawn, and the masks' dtype
        self._drawn_from: torch.Tensor | None = None
        self._mask_dtype: torch.dtype | None = None

    def __getstate__(self):
        return {**super().__getstate__(), "_masks": None, "_used": 0, "_drawn_from": None,
                "_mask_dtype": None}

    def _redraw(self) -> torch.Tensor:
        """The chunk in use, drawn again from its generator state (after a resume); the
        global generator is left where it was."""
        now = torch.get_rng_state()
        torch.set_rng_state(self._drawn_from)
        try:
            return self.draw(self.CHUNK, self._mask_dtype)
        finally:
            torch.set_rng_state(now)

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
        if masks is None and self._drawn_from is not None:  # resumed from a checkpoint
            masks = self._masks = self._redraw()
        if masks is None or masks.dtype != x.dtype or self._used + n > len(masks):
            self._drawn_from, self._mask_dtype = torch.get_rng_state(), x.dtype
            masks = self._masks = self.draw(self.CHUNK, x.dtype)  # new tensor: saved
            self._used = 0  # slices of the old one stay valid for backward
        mask = masks[self._used : self._used + n].view(x.shape)
        self._used += n
        return x * mask


Family = Literal["mlp", "alexnet", "resnet18", "resnet32"]
FAMILIES: tuple[str, ...] = typing.get_args(Family)
RESNETS = ("resnet18", "resnet32")
#: ``model.hidden`` when not given: MLP width, AlexNet fc width, ResNet-32 base width (the
#: MLP's is 100 on the embedded scenarios, see ``benchmark.experiment``); ResNet-18 has none
DEFAULT_HIDDEN = {"mlp": 2000, "alexnet": 2048, "resnet32": 16}
#: ResNet-32's residual blocks per stage when ``model.blocks`` is not given (6·5 + 2 = 32)
DEFAULT_BLOCKS = 5
#: ``stem=auto``: the CIFAR stem for images of at most this many pixels a side
CIFAR_STEM_MAX = 64
Stem = Literal["auto", "imagenet", "cifar"]
#: the largest trunk the suite builds: 1e9 parameters are 4 GB of float32 weights, and
#: training holds several copies (gradients, optimizer state, the recipe's best weights,
#: EWC/SI snapshots); the paper's networks have 2.7 M (MLP 2×2000 on MNIST) to 6.6 M
#: (AlexNet-like), ResNet-18 11.2 M
MAX_PARAMETERS = 10**9
#: most hidden layers of the MLP (``model.layers``) and residual blocks per stage of
#: ResNet-32 (``model.blocks``; 200 is He et al.'s deepest CIFAR ResNet, 1202 layers)
MAX_LAYERS = 100
MAX_BLOCKS = 200


@dataclass(frozen=True)
class ModelConfig:
    """Network hyperparameters; ``None`` fields take the scenario's or the family's default.

    ``family``: ``mlp``, ``alexnet``, ``resnet18`` or ``resnet32`` (None: the scenario's).
    ``hidden``: the MLP's and the AlexNet-like net's hidden width, ResNet-32's base width
    (16); refused for ResNet-18 (fixed widths). ``layers``, ``dropout``, ``input_dropout``:
    the MLP's (the runner refuses them for the other families). ``blocks``: ResNet-32's
    residual blocks per stage (None: 5, i.e. 32 layers). ``stem``: ResNet-18's first layers
    (None: ``auto``, see the module docstring). ``blocks`` and ``stem`` stay None for the
    families they do not apply to, and the run record leaves them out then.
    """

    family: Family | None = None
    hidden: int | None = None
    layers: int = 2
    dropout: float = 0.5
    input_dropout: float = 0.2
    blocks: int | None = None
    stem: Stem | None = None

    def __post_init__(self):
        if self.family not in (None, *FAMILIES):
            raise ConfigError(
                f"model.family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if self.hidden is not None and self.hidden < 1:
            raise ConfigError(f"model.hidden must be >= 1, got {self.hidden}")
        # (its upper bound depends on the input: check_network, MAX_PARAMETERS)
        if self.family == "resnet18" and self.hidden is not None:
            raise ConfigError(
                f"model.hidden={self.hidden} does not apply to resnet18: its widths are fixed "
                "(torchvision's 64-128-256-512); remove model.hidden, or use "
                "model.family=resnet32, whose base width it sets"
            )
        if self.blocks is not None and not 1 <= self.blocks <= MAX_BLOCKS:
            raise ConfigError(
                f"model.blocks must be >= 1 and <= {MAX_BLOCKS} (residual blocks per stage; "
                f"{MAX_BLOCKS} is a 1202-layer ResNet), got {self.blocks}")
        if self.stem is not None and self.stem not in typing.get_args(Stem):
            raise ConfigError(
                f"model.stem must be one of {', '.join(typing.get_args(Stem))}, got "
                f"{self.stem!r}")
        for name, owner, what in (("blocks", "resnet32", " (residual blocks per stage)"),
                                  ("stem", "resnet18", "")):
            if getattr(self, name) is not None and self.family not in (None, owner):
                raise ConfigError(
                    f"model.{name} applies to {owner} only{what}, not to {self.family}; "
                    f"remove it, or use model.family={owner}"
                )
        if not 1 <= self.layers <= MAX_LAYERS:
            raise ConfigError(
                f"model.layers must be >= 1 and <= {MAX_LAYERS} (the MLP's hidden layers), got "
                f"{self.layers}")
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


def alexnet_plan(input_shape: Sequence[int]) -> tuple[list[tuple[int, int, int, float]], int]:
    """The AlexNet-like network's convolutions for ``input_shape`` as (in channels, out
    channels, kernel, dropout), and the flattened size after them; one ConfigError for
    inputs it cannot take (not square images of at least 16×16)."""
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or shape[-2] != shape[-1] or shape[-1] < 16:
        raise ConfigError(
            f"the AlexNet-like network needs square images of at least 16×16, got input shape "
            f"{shape}; use model.family=mlp for smaller inputs"
        )
    channels, size = shape[0], shape[-1]
    convs = []
    in_ch = channels
    for out_ch, kernel, drop in ((64, size // 8, 0.2), (128, size // 10, 0.2), (256, 2, 0.5)):
        convs.append((in_ch, out_ch, kernel, drop))
        size = (size - kernel + 1) // 2
        in_ch = out_ch
    return convs, in_ch * size * size


def alexnet_trunk(input_shape: Sequence[int], hidden: int = 2048) -> nn.Sequential:
    convs, flat = alexnet_plan(input_shape)
    mods: list[nn.Module] = []
    for in_ch, out_ch, kernel, drop in convs:
        mods += [nn.Conv2d(in_ch, out_ch, kernel), nn.ReLU(), Dropout(drop), nn.MaxPool2d(2)]
    mods += [nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), Dropout(0.5),
             nn.Linear(hidden, hidden), nn.ReLU(), Dropout(0.5)]
    return nn.Sequential(*mods)


def image_shape(input_shape: Sequence[int], family: str) -> tuple[int, int, int]:
    """``input_shape`` as (channels, height, width), or one ConfigError for a family that
    needs images (the ResNets) on flat inputs."""
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(
            f"model.family={family} needs image inputs (channels, height, width), got input "
            f"shape {shape}; use model.family=mlp for flat inputs"
        )
    return shape  # type: ignore[return-value]


def _first_conv(in_channels: int, out_channels: int, kernel: int, stride: int,
                padding: int) -> nn.Conv2d:
    """A bias-free first conv initialised as torchvision initialises ResNet convs."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def resnet18_trunk(input_shape: Sequence[int], cifar_stem: bool) -> nn.Module:
    """torchvision's ResNet-18 (random init) with ``fc = nn.Identity()``: 512 features.

    ``cifar_stem``: conv1 becomes a 3×3 stride-1 conv (padding 1) and the max-pool goes. A
    first conv is also replaced (same kernel, stride and padding) when the images have other
    than 3 channels."""
    channels, _, _ = image_shape(input_shape, "resnet18")
    net = torchvision.models.resnet18(weights=None)
    net.fc = nn.Identity()
    if cifar_stem:
        net.conv1 = _first_conv(channels, 64, 3, 1, 1)
        net.maxpool = nn.Identity()
    elif channels != 3:
        old = net.conv1
        net.conv1 = _first_conv(channels, old.out_channels, old.kernel_size[0],
                                old.stride[0], old.padding[0])
    return net


def uses_cifar_stem(stem: str | None, input_shape: Sequence[int]) -> bool:
    """Whether ResNet-18 takes the CIFAR stem: ``stem`` cifar, or auto (None) on images of
    at most ``CIFAR_STEM_MAX`` pixels a side."""
    if stem in (None, "auto"):
        return max(image_shape(input_shape, "resnet18")[1:]) <= CIFAR_STEM_MAX
    return stem == "cifar"


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN, plus the shortcut, then ReLU. The shortcut is the input,
    or a 1×1 conv (stride ``stride``) + BN where the shape changes (FACIL's option B).

    Modules are registered in the order they run; every BN is the only consumer of the conv
    before it; ``forward`` has no data-dependent control flow (torch.fx traces it)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return self.relu2(out)


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet with 6·``blocks`` + 2 layers (the head is the last one):
    conv3×3 (``width``) + BN + ReLU, three stages of ``blocks`` basic blocks with ``width``,
    2·``width`` and 4·``width`` channels (stride 2 at the start of stages 2 and 3), global
    average pool, flatten: 4·``width`` features."""

    def __init__(self, in_channels: int, blocks: int = DEFAULT_BLOCKS, width: int = 16):
        super().__init__()
        if blocks < 1 or width < 1:
            raise ConfigError(f"ResNet-32 needs blocks >= 1 and width >= 1, got {blocks}, "
                              f"{width}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        stages: list[nn.Module] = []
        channels = width
        for i, out_channels in enumerate((width, 2 * width, 4 * width)):
            stage = [BasicBlock(channels, out_channels, 1 if i == 0 else 2)]
            stage += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            channels = out_channels
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.features = channels
        for m in self.modules():  # as torchvision's ResNets
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.avgpool(x), 1)


def resnet32_trunk(input_shape: Sequence[int], blocks: int = DEFAULT_BLOCKS,
                   width: int = 16) -> CifarResNet:
    """The CIFAR ResNet (``CifarResNet``) for ``input_shape``: 4·``width`` features; 32
    layers at ``blocks=5`` (about 0.47 M trunk parameters at width 16)."""
    channels, _, _ = image_shape(input_shape, "resnet32")
    return CifarResNet(channels, blocks, width)


def build_trunk(cfg: ModelConfig, input_shape: Sequence[int]) -> tuple[nn.Module, int]:
    """The plain trunk and its feature size."""
    if cfg.family == "alexnet":
        hidden = cfg.hidden or DEFAULT_HIDDEN["alexnet"]
        return alexnet_trunk(input_shape, hidden), hidden
    if cfg.family == "resnet18":
        return resnet18_trunk(input_shape, uses_cifar_stem(cfg.stem, input_shape)), 512
    if cfg.family == "resnet32":
        trunk = resnet32_trunk(input_shape, cfg.blocks or DEFAULT_BLOCKS,
                               cfg.hidden or DEFAULT_HIDDEN["resnet32"])
        return trunk, trunk.features
    hidden = cfg.hidden or DEFAULT_HIDDEN["mlp"]
    trunk = mlp_trunk(input_shape, hidden, cfg.layers, cfg.dropout, cfg.input_dropout)
    return trunk, hidden


#: torchvision's ResNet-18 without ``fc`` and without its first conv (whose size depends on
#: the input's channels and the stem): 11,176,512 − 64·3·7·7
RESNET18_WITHOUT_CONV1 = 11_176_512 - 64 * 3 * 7 * 7


def trunk_parameters(cfg: ModelConfig, input_shape: Sequence[int]) -> int:
    """Parameters of ``build_trunk(cfg, input_shape)``, counted without building it; one
    ConfigError when the family cannot take ``input_shape``."""
    family = cfg.family or "mlp"
    if family == "alexnet":
        hidden = cfg.hidden or DEFAULT_HIDDEN["alexnet"]
        convs, flat = alexnet_plan(input_shape)
        conv = sum(i * o * k * k + o for i, o, k, _ in convs)
        return conv + flat * hidden + hidden + hidden * hidden + hidden
    if family == "resnet18":
        channels = image_shape(input_shape, "resnet18")[0]
        kernel = 3 if uses_cifar_stem(cfg.stem, input_shape) else 7
        return RESNET18_WITHOUT_CONV1 + 64 * channels * kernel * kernel
    if family == "resnet32":
        channels = image_shape(input_shape, "resnet32")[0]
        width = cfg.hidden or DEFAULT_HIDDEN["resnet32"]
        blocks = cfg.blocks or DEFAULT_BLOCKS

        def block(i: int, o: int) -> int:  # two 3×3 convs + BN, a 1×1 conv + BN shortcut
            return 9 * i * o + 9 * o * o + 4 * o + (i * o + 2 * o if i != o else 0)

        total = 9 * channels * width + 2 * width
        ins = width
        for out in (width, 2 * width, 4 * width):
            total += block(ins, out) + (blocks - 1) * block(out, out)
            ins = out
        return total
    hidden = cfg.hidden or DEFAULT_HIDDEN["mlp"]
    width = math.prod(int(v) for v in input_shape)
    return width * hidden + hidden + (cfg.layers - 1) * (hidden * hidden + hidden)


def check_network(cfg: ModelConfig, input_shape: Sequence[int]) -> int:
    """Refuse (one ConfigError, before anything is built) a network its family cannot build
    on ``input_shape`` or whose trunk exceeds ``MAX_PARAMETERS``; return its parameters."""
    count = trunk_parameters(cfg, input_shape)
    if count > MAX_PARAMETERS:
        family = cfg.family or "mlp"
        knobs = {"mlp": "model.hidden or model.layers", "alexnet": "model.hidden",
                 "resnet32": "model.hidden or model.blocks"}.get(family, "the network")
        given = ", ".join(f"model.{k}={v}" for k, v in (("hidden", cfg.hidden),
                          ("layers", cfg.layers if family == "mlp" else None),
                          ("blocks", cfg.blocks)) if v is not None)
        raise ConfigError(
            f"{given} makes the {family} trunk {count:.3g} parameters on inputs of shape "
            f"{tuple(input_shape)}, above the suite's bound of {MAX_PARAMETERS:.0e} (4 GB of "
            f"float32 weights before gradients and optimizer state); lower {knobs}"
        )
    return count


def build_model(
    cfg: ModelConfig, input_shape: Sequence[int], head_sizes: Sequence[int], *,
    gated: bool, smax: float = 400.0, binary_masks: bool = True,
    embedding_init: Literal["normal", "uniform"] = "normal",
) -> MultiHeadNet:
    """A multi-head network with one head per task; HAT-gated when ``gated``.

    Baselines keep the trunk's BatchNorm (ResNets) shared by all tasks; ``HATNet.wrap`` makes
    it per task (see the module docstring)."""
    trunk, features = build_trunk(cfg, input_shape)
    if gated:
        return HATNet.wrap(trunk, input_shape, head_sizes, smax=smax,
                           binary_masks=binary_masks, embedding_init=embedding_init)
    return MultiHeadNet(trunk, features, head_sizes)
