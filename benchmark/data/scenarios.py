"""Scenario registry: streams of tasks (task labels given), seed-controlled.

Every scenario is a sequence of tasks; each task has its own label space, remapped to
``0..n_classes-1`` (in increasing order of the source labels), and its own test set. Tensors
are float32, normalised per source dataset (scaled to [0, 1], then standardised per channel
with the mean/std of that dataset's training split; details in
:mod:`benchmark.data.datasets`).

=====================  =====  =========  ==========================================
name                   tasks  network    the seed drives
=====================  =====  =========  ==========================================
split-digits           5 x 2  mlp        nothing in the data (pairs fixed 0/1..8/9)
permuted-digits        5 x10  mlp        pixel permutations (task 1 permuted too)
mnist2                 2 x 5  mlp        nothing in the data (0-4 then 5-9)
pmnist                 10x10  mlp        pixel permutations (task 1 permuted too)
cifar                  10     alexnet    task order (5 x 2 CIFAR-10, 5 x 20 C-100)
mixture                8      alexnet    task order (one task per dataset)
split-mnist            5 x 2  mlp        nothing in the data (pairs fixed)
permuted-mnist         10x10  mlp        pixel permutations (same data as pmnist)
split-fmnist           5 x 2  mlp        nothing in the data (pairs fixed)
split-cifar10          5 x 2  alexnet    nothing in the data (pairs fixed)
split-cifar100         10x10  alexnet    nothing in the data (blocks 0-9, ...)
split-cifar100-10      10x10  resnet18   class order (seeded permutation)
split-cifar100-20      20x 5  resnet18   class order (seeded permutation)
split-tinyimagenet-5   5 x40  resnet18   class order (seeded permutation)
split-tinyimagenet-10  10x20  resnet18   class order (seeded permutation)
=====================  =====  =========  ==========================================

The four seeded splits are the standard class-incremental benchmarks (they run under either
protocol): the seed draws a permutation of all classes (``rng_for(seed, "order")``) and the
tasks are its consecutive blocks, so seeds 0-4 give five class orders; within a task, labels
follow the increasing source labels. ``split-cifar10`` and ``split-cifar100`` keep their fixed
orders.

Each spec declares the ``input_shape`` (C, H, W) of its tasks (:class:`ScenarioSpec`), known
before any data are read.

The seed also drives initialisation, validation split and batch order, but those belong to the
runner. ``valid_fraction`` (share of each task's training data the runner holds out) is 0.1,
except 0.15 for ``mixture``.

Data
----
The two digits scenarios are *embedded*: scikit-learn's bundled ``load_digits`` (1797 real 8x8
images), with a fixed stratified 70/30 train/test split (the same for every seed, like the
real datasets' test sets); they never download anything. All
others read torchvision datasets from ``data_root`` (torchvision's layout: ``MNIST/raw/``,
``FashionMNIST/raw/``, ``cifar-10-batches-py/``, ``cifar-100-python/``, ``svhn/``, ``gtsrb/``).
TinyImageNet (3x64x64, 200 classes; its labelled validation set is the test split) is never
downloaded: unzip ``tiny-imagenet-200.zip`` into ``<data_root>/tiny-imagenet-200/``.
The mixture's notMNIST and FaceScrub have no maintained download and are read from::

    <data_root>/notmnist/{train,test}/<letter>/*.png    letters A..J
    <data_root>/facescrub/{train,test}/<person>/*       e.g. *.png or *.jpg, 100 people

(class folders sorted by name, same folders in train/ and test/). In the mixture, grayscale
images are copied to 3 channels, 28x28 images zero-padded to 32x32, other sizes resized to 32x32.
:meth:`ScenarioSpec.check_available` checks every dataset a scenario needs and raises
:class:`~benchmark.errors.DatasetMissingError` (dataset, expected path, how to obtain it) before
any training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from reports.metrics import random_stratified_accuracy

from ..errors import DatasetMissingError, UnknownNameError
from . import datasets as ds


@dataclass(frozen=True)
class TaskData:
    """One task: tensors already preprocessed; labels remapped to 0..n_classes-1."""

    name: str
    n_classes: int
    train_x: torch.Tensor  # float32, shape (N, *input_shape)
    train_y: torch.Tensor  # int64, values in [0, n_classes)
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[int, ...] = ()  # source-dataset label of each task label 0..n_classes-1


@dataclass(frozen=True)
class Scenario:
    """A built scenario: tasks in training order for one seed."""

    name: str
    seed: int
    input_shape: tuple[int, ...]
    tasks: list[TaskData]
    valid_fraction: float  # fraction of each task's training data held out for validation

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def classes_per_task(self) -> list[int]:
        return [t.n_classes for t in self.tasks]


@dataclass(frozen=True)
class ScenarioSpec:
    """Registry entry."""

    name: str
    description: str
    n_tasks: int
    embedded: bool  # True when the data ship with the suite's dependencies (no download)
    network: str  # default network family: "mlp", "alexnet" or "resnet18"
    input_shape: tuple[int, int, int]  # (C, H, W) of every task's inputs
    builder: Callable[[int, Path], Scenario] = field(repr=False)
    sources: tuple[str, ...] = ()  # keys of benchmark.data.datasets.SOURCES read from data_root
    valid_fraction: float = 0.1  # the valid_fraction of the scenarios it builds

    def check_available(self, data_root: Path, download: bool = False) -> None:
        """Raise DatasetMissingError (before any training) when data are missing.

        Checks every source dataset the scenario needs (cheap: file presence only). With
        ``download=True`` missing torchvision datasets are fetched first; a failed download is
        reported as DatasetMissingError as well. The error names the first missing dataset and
        lists any other missing ones in its message.
        """
        errors = []
        for name in self.sources:
            try:
                ds.SOURCES[name].ensure(Path(data_root), download=download)
            except DatasetMissingError as exc:
                errors.append(exc)
        if errors:
            first = errors[0]
            if len(errors) > 1:
                others = "; ".join(f"{e.dataset} ({e.path})" for e in errors[1:])
                raise DatasetMissingError(
                    first.dataset, first.path, f"{first.how} (also missing: {others})"
                )
            raise first

    def build(self, seed: int, data_root: Path = Path("data")) -> Scenario:
        return self.builder(seed, Path(data_root))


# ---------------------------------------------------------------------------------------------
# Task construction


def _label_text(classes: Sequence[int]) -> str:
    c = list(classes)
    if len(c) > 1 and c == list(range(c[0], c[-1] + 1)):
        return f"{c[0]}-{c[-1]}"
    return ",".join(map(str, c))


def _class_tasks(raw: ds.RawDataset, groups: Sequence[Sequence[int]]) -> list[TaskData]:
    """One task per group of source classes; labels remapped to positions within the group.

    Pixels are normalised with the statistics of the whole source training split.
    """
    mean, std = ds.channel_stats(raw.train_x, raw.max_value)
    tasks = []
    for group in groups:
        group = tuple(int(c) for c in group)
        lut = torch.full((raw.n_classes,), -1, dtype=torch.int64)
        lut[list(group)] = torch.arange(len(group))
        members = torch.tensor(group)
        tr = torch.isin(raw.train_y, members)
        te = torch.isin(raw.test_y, members)
        name = raw.name if len(group) == raw.n_classes else f"{raw.name}:{_label_text(group)}"
        tasks.append(
            TaskData(
                name=name,
                n_classes=len(group),
                train_x=ds.normalise(raw.train_x[tr], mean, std, raw.max_value),
                train_y=lut[raw.train_y[tr]],
                test_x=ds.normalise(raw.test_x[te], mean, std, raw.max_value),
                test_y=lut[raw.test_y[te]],
                classes=group,
            )
        )
    return tasks


def _permuted_tasks(raw: ds.RawDataset, n_tasks: int, seed: int) -> list[TaskData]:
    """``n_tasks`` tasks over all classes, each a seeded permutation of the pixels (all of
    C*H*W; every task permuted, the first one too). Labels are shared by all tasks."""
    mean, std = ds.channel_stats(raw.train_x, raw.max_value)
    train = ds.normalise(raw.train_x, mean, std, raw.max_value)
    test = ds.normalise(raw.test_x, mean, std, raw.max_value)
    rng = ds.rng_for(seed, "permutation")
    n_pixels = train[0].numel()
    tasks = []
    for k in range(n_tasks):
        perm = torch.from_numpy(rng.permutation(n_pixels))
        tasks.append(
            TaskData(
                name=f"{raw.name}:perm{k}",
                n_classes=raw.n_classes,
                train_x=train.flatten(1)[:, perm].reshape(train.shape),
                train_y=raw.train_y,
                test_x=test.flatten(1)[:, perm].reshape(test.shape),
                test_y=raw.test_y,
                classes=tuple(range(raw.n_classes)),
            )
        )
    return tasks


def _shuffled(tasks: list[TaskData], seed: int) -> list[TaskData]:
    order = ds.rng_for(seed, "order").permutation(len(tasks))
    return [tasks[i] for i in order]


def _blocks(n_classes: int, size: int) -> list[tuple[int, ...]]:
    return [tuple(range(s, s + size)) for s in range(0, n_classes, size)]


def _scenario(name: str, seed: int, tasks: list[TaskData], valid_fraction: float) -> Scenario:
    shape = tuple(tasks[0].train_x.shape[1:])
    return Scenario(name, seed, shape, tasks, valid_fraction)


# ---------------------------------------------------------------------------------------------
# Builders


def _split_digits(seed: int, data_root: Path) -> Scenario:
    raw = ds.load_digits_split()
    return _scenario("split-digits", seed, _class_tasks(raw, _blocks(10, 2)), 0.1)


def _permuted_digits(seed: int, data_root: Path) -> Scenario:
    raw = ds.load_digits_split()
    return _scenario("permuted-digits", seed, _permuted_tasks(raw, 5, seed), 0.1)


def _mnist2(seed: int, data_root: Path) -> Scenario:
    raw = ds.load_source("mnist", data_root)
    return _scenario("mnist2", seed, _class_tasks(raw, _blocks(10, 5)), 0.1)


def _permuted_builder(name: str, n_tasks: int) -> Callable[[int, Path], Scenario]:
    def build(seed: int, data_root: Path) -> Scenario:
        raw = ds.load_source("mnist", data_root)
        return _scenario(name, seed, _permuted_tasks(raw, n_tasks, seed), 0.1)

    return build


def _split_builder(name: str, source: str, size: int) -> Callable[[int, Path], Scenario]:
    def build(seed: int, data_root: Path) -> Scenario:
        raw = ds.load_source(source, data_root)
        return _scenario(name, seed, _class_tasks(raw, _blocks(raw.n_classes, size)), 0.1)

    return build


def _seeded_split_builder(name: str, source: str, n_classes: int,
                          size: int) -> Callable[[int, Path], Scenario]:
    """Tasks of ``size`` classes: consecutive blocks of a seeded permutation of the classes."""

    def build(seed: int, data_root: Path) -> Scenario:
        raw = ds.load_source(source, data_root)
        if raw.n_classes != n_classes:
            raise ds.SOURCES[source].error(
                data_root, f"found {raw.n_classes} classes, {name} needs {n_classes}",
                offer_download=False)
        return _scenario(name, seed, _class_tasks(raw, class_order_blocks(seed, n_classes, size)),
                         0.1)

    return build


def class_order_blocks(seed: int, n_classes: int, size: int) -> list[tuple[int, ...]]:
    """The seeded splits' tasks: consecutive blocks of ``size`` classes of the permutation
    ``rng_for(seed, "order")`` draws, each block sorted."""
    if n_classes % size:
        raise ValueError(f"{n_classes} classes do not split into blocks of {size}")
    order = ds.rng_for(seed, "order").permutation(n_classes).tolist()
    return [tuple(sorted(order[s:s + size])) for s in range(0, n_classes, size)]


def _cifar(seed: int, data_root: Path) -> Scenario:
    tasks = _class_tasks(ds.load_source("cifar10", data_root), _blocks(10, 2))
    tasks += _class_tasks(ds.load_source("cifar100", data_root), _blocks(100, 20))
    return _scenario("cifar", seed, _shuffled(tasks, seed), 0.1)


MIXTURE_VALID_FRACTION = 0.15
MIXTURE_SOURCES = (
    "cifar10", "cifar100", "mnist", "svhn", "fmnist", "gtsrb", "facescrub", "notmnist",
)


def _mixture(seed: int, data_root: Path) -> Scenario:
    tasks = []
    for name in MIXTURE_SOURCES:
        raw = ds.load_source(name, data_root).replace_images(ds.to_rgb32)
        tasks += _class_tasks(raw, [range(raw.n_classes)])
    return _scenario("mixture", seed, _shuffled(tasks, seed), MIXTURE_VALID_FRACTION)


# ---------------------------------------------------------------------------------------------
# Registry


#: input shapes (C, H, W) of the scenarios' tasks
_DIGITS, _MNIST, _RGB32, _RGB64 = (1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64)


def _split(
    name: str, description: str, source: str, size: int, *, n_tasks: int, network: str,
    input_shape: tuple[int, int, int],
) -> ScenarioSpec:
    """A downloaded ``source`` in tasks of ``size`` consecutive classes (fixed order)."""
    return ScenarioSpec(name, description, n_tasks=n_tasks, embedded=False, network=network,
                        input_shape=input_shape, builder=_split_builder(name, source, size),
                        sources=(source,))


def _seeded_split(name: str, description: str, source: str, n_classes: int, size: int,
                  input_shape: tuple[int, int, int]) -> ScenarioSpec:
    """A downloaded ``source`` in tasks of ``size`` classes in a seeded class order."""
    return ScenarioSpec(name, description, n_tasks=n_classes // size, embedded=False,
                        network="resnet18", input_shape=input_shape,
                        builder=_seeded_split_builder(name, source, n_classes, size),
                        sources=(source,))


def _specs() -> list[ScenarioSpec]:
    S = ScenarioSpec
    return [
        S("split-digits",
          "sklearn digits 8x8 (embedded), 5 tasks of class pairs 0/1..8/9 in fixed order; "
          "fixed stratified 70/30 split",
          n_tasks=5, embedded=True, network="mlp", input_shape=_DIGITS,
          builder=_split_digits),
        S("permuted-digits",
          "sklearn digits 8x8 (embedded), 5 tasks of 10 classes, each a seeded pixel "
          "permutation (first task too); seed: permutations",
          n_tasks=5, embedded=True, network="mlp", input_shape=_DIGITS,
          builder=_permuted_digits),
        S("mnist2", "paper: MNIST digits 0-4 then 5-9 (2 tasks of 5 classes)",
          n_tasks=2, embedded=False, network="mlp", input_shape=_MNIST,
          builder=_mnist2, sources=("mnist",)),
        S("pmnist", "paper: 10 tasks, each a seeded pixel permutation of MNIST",
          n_tasks=10, embedded=False, network="mlp", input_shape=_MNIST,
          builder=_permuted_builder("pmnist", 10), sources=("mnist",)),
        S("cifar",
          "paper: CIFAR-10 in 5 tasks of 2 classes + CIFAR-100 in 5 tasks of 20, "
          "task order shuffled by the seed",
          n_tasks=10, embedded=False, network="alexnet", input_shape=_RGB32,
          builder=_cifar, sources=("cifar10", "cifar100")),
        S("mixture",
          "paper: 8 datasets at 3x32x32 (CIFAR-10/100, MNIST, SVHN, Fashion-MNIST, GTSRB, "
          "FaceScrub, notMNIST), one task each, order shuffled by the seed, 15% validation",
          n_tasks=8, embedded=False, network="alexnet", input_shape=_RGB32,
          builder=_mixture, sources=MIXTURE_SOURCES, valid_fraction=MIXTURE_VALID_FRACTION),
        _split("split-mnist", "standard: MNIST in 5 tasks of class pairs 0/1..8/9 (fixed order)",
               "mnist", 2, n_tasks=5, network="mlp", input_shape=_MNIST),
        S("permuted-mnist",
          "standard: 10 seeded pixel permutations of MNIST (same data as pmnist)",
          n_tasks=10, embedded=False, network="mlp", input_shape=_MNIST,
          builder=_permuted_builder("permuted-mnist", 10), sources=("mnist",)),
        _split("split-fmnist",
               "standard: Fashion-MNIST in 5 tasks of class pairs 0/1..8/9 (fixed order)",
               "fmnist", 2, n_tasks=5, network="mlp", input_shape=_MNIST),
        _split("split-cifar10",
               "standard: CIFAR-10 in 5 tasks of class pairs 0/1..8/9 (fixed order)",
               "cifar10", 2, n_tasks=5, network="alexnet", input_shape=_RGB32),
        _split("split-cifar100",
               "standard: CIFAR-100 in 10 tasks of 10 classes 0-9..90-99 (fixed order)",
               "cifar100", 10, n_tasks=10, network="alexnet", input_shape=_RGB32),
        _seeded_split("split-cifar100-10",
                      "class-incremental standard: CIFAR-100 in 10 tasks of 10 classes, class "
                      "order a seeded permutation", "cifar100", 100, 10, _RGB32),
        _seeded_split("split-cifar100-20",
                      "class-incremental standard: CIFAR-100 in 20 tasks of 5 classes, class "
                      "order a seeded permutation", "cifar100", 100, 5, _RGB32),
        _seeded_split("split-tinyimagenet-5",
                      "class-incremental standard: TinyImageNet (64x64, val as test) in 5 tasks "
                      "of 40 classes, class order a seeded permutation", "tinyimagenet", 200, 40,
                      _RGB64),
        _seeded_split("split-tinyimagenet-10",
                      "class-incremental standard: TinyImageNet (64x64, val as test) in 10 tasks "
                      "of 20 classes, class order a seeded permutation", "tinyimagenet", 200, 20,
                      _RGB64),
    ]


SCENARIOS: dict[str, ScenarioSpec] = {s.name: s for s in _specs()}


def get_scenario(name: str) -> ScenarioSpec:
    """Registry lookup; raises UnknownNameError listing the valid names."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise UnknownNameError("scenario", name, SCENARIOS) from None


def describe_scenarios() -> list[dict]:
    """One row per registered scenario, for the CLI's ``list`` command."""
    return [
        {
            "name": s.name,
            "description": s.description,
            "n_tasks": s.n_tasks,
            "embedded": s.embedded,
            "network": s.network,
        }
        for s in SCENARIOS.values()
    ]


def random_accuracy(task: TaskData) -> float:
    """Expected test accuracy of a stratified random classifier (docs/hat-reference.md §5).

    It predicts label c with the training frequency p_train(c), so its expected accuracy is
    sum_c p_train(c) * p_test(c).
    """
    if task.train_y.numel() == 0 or task.test_y.numel() == 0:
        raise ValueError(f"task {task.name!r} has an empty train or test split")
    k = task.n_classes
    return random_stratified_accuracy(torch.bincount(task.train_y, minlength=k).numpy(),
                                      torch.bincount(task.test_y, minlength=k).numpy())


def to_benchmark(scenario: Scenario):
    """Avalanche benchmark with train_stream/test_stream; experience i has task label i.

    Built with Avalanche's ``tensors_benchmark`` and explicit task labels, so dataset items are
    ``(x, y, t)`` triplets and ``exp.task_labels == [i]``. (Avalanche 0.6's
    ``task_incremental_benchmark`` is avoided: it breaks multi-head models.)
    """
    from avalanche.benchmarks import tensors_benchmark  # slow import: only when needed

    return tensors_benchmark(
        train_tensors=[[t.train_x, t.train_y] for t in scenario.tasks],
        test_tensors=[[t.test_x, t.test_y] for t in scenario.tasks],
        task_labels=list(range(scenario.n_tasks)),
    )
