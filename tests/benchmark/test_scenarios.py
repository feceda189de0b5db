"""Tests of the scenario registry and the source-dataset loaders (benchmark/data/scenarios.py,
benchmark/data/datasets.py). No download: torchvision's MNIST path runs on tiny IDX files written
here; CIFAR/SVHN/GTSRB (checksummed by torchvision) are replaced by in-memory fakes where only
the composition logic is under test."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from benchmark.data import datasets as ds
from benchmark.data.scenarios import (
    MIXTURE_SOURCES,
    SCENARIOS,
    TaskData,
    class_order_blocks,
    describe_scenarios,
    get_scenario,
    random_accuracy,
    to_benchmark,
)
from benchmark.errors import DatasetMissingError, UnknownNameError

ALL_NAMES = {
    "split-digits", "permuted-digits", "mnist2", "pmnist", "cifar", "mixture",
    "split-mnist", "permuted-mnist", "split-fmnist", "split-cifar10", "split-cifar100",
    "split-cifar100-10", "split-cifar100-20", "split-tinyimagenet-5", "split-tinyimagenet-10",
}
#: the class-incremental splits: tasks are blocks of a seeded class order
SEEDED = {"split-cifar100-10": ("cifar100", 100, 10), "split-cifar100-20": ("cifar100", 100, 5),
          "split-tinyimagenet-5": ("tinyimagenet", 200, 40),
          "split-tinyimagenet-10": ("tinyimagenet", 200, 20)}

# ---------------------------------------------------------------------------------------------
# helpers


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """IDX3 file (magic 2051, big endian): uint8 images (N, H, W)."""
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    """IDX1 file (magic 2049, big endian): uint8 labels (N,)."""
    path.write_bytes(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def make_mnist_like(root: Path, folder: str = "MNIST", per_class=(3, 2), seed: int = 0):
    """Tiny MNIST-format dataset under root/<folder>/raw; every digit in both splits."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, k in zip(("train", "t10k"), per_class, strict=True):
        labels = np.tile(np.arange(10), k)
        images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        write_idx_images(raw / f"{split}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{split}-labels-idx1-ubyte", labels)
        out[split] = (images, labels)
    return out


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    files = make_mnist_like(root)
    return root, files


def fake_source(monkeypatch, name: str, raw: ds.RawDataset) -> None:
    """Replace a source by an in-memory dataset (no files required)."""
    patched = dataclasses.replace(ds.SOURCES[name], required=(), reader=lambda root: raw)
    monkeypatch.setitem(ds.SOURCES, name, patched)


def random_raw(name, n_classes, per_class, shape, seed=0) -> ds.RawDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_classes).repeat(per_class)
    x = torch.randint(0, 256, (len(y), *shape), generator=g, dtype=torch.uint8)
    return ds.RawDataset(name, n_classes, x, y, x[: n_classes].clone(), y[:n_classes].clone())


def columns_are_permutation(base: torch.Tensor, permuted: torch.Tensor) -> bool:
    """True when every column of `permuted` (N, D) equals a distinct-enough column of `base`:
    each permuted column is found among base's columns, and row-wise multisets agree."""
    b, p = base.flatten(1), permuted.flatten(1)
    if b.shape != p.shape:
        return False
    if not torch.equal(b.sort(dim=1).values, p.sort(dim=1).values):
        return False
    eq = (p.T.unsqueeze(1) == b.T.unsqueeze(0)).all(dim=2)  # (D_perm, D_base)
    return bool(eq.any(dim=1).all())


def assert_same_scenario(a, b):
    assert [t.name for t in a.tasks] == [t.name for t in b.tasks]
    for ta, tb in zip(a.tasks, b.tasks, strict=True):
        for f in ("train_x", "train_y", "test_x", "test_y"):
            assert torch.equal(getattr(ta, f), getattr(tb, f))


# ---------------------------------------------------------------------------------------------
# registry


def test_registry_entries_and_listing():
    assert set(SCENARIOS) == ALL_NAMES
    rows = describe_scenarios()
    assert [r["name"] for r in rows] == list(SCENARIOS)
    for row in rows:
        assert set(row) == {"name", "description", "n_tasks", "embedded", "network"}
        assert row["description"] and "\n" not in row["description"]
        assert row["network"] in {"mlp", "alexnet", "resnet18"}
    embedded = {r["name"] for r in rows if r["embedded"]}
    assert embedded == {"split-digits", "permuted-digits"}
    expected_tasks = {"mnist2": 2, "pmnist": 10, "cifar": 10, "mixture": 8, "split-cifar100": 10,
                      "split-cifar10": 5, "split-cifar100-10": 10, "split-cifar100-20": 20,
                      "split-tinyimagenet-5": 5, "split-tinyimagenet-10": 10}
    for name, n in expected_tasks.items():
        assert SCENARIOS[name].n_tasks == n
    assert SCENARIOS["cifar"].network == "alexnet" and SCENARIOS["pmnist"].network == "mlp"
    assert set(SCENARIOS["mixture"].sources) == set(MIXTURE_SOURCES) and len(MIXTURE_SOURCES) == 8
    assert SCENARIOS["mixture"].valid_fraction == 0.15 and SCENARIOS["cifar"].valid_fraction == 0.1


def test_specs_declare_their_input_shape():
    """Each spec's input shape is known before any data are read, and is the built one's."""
    digits, mnist, rgb = (1, 8, 8), (1, 28, 28), (3, 32, 32)
    assert {name: spec.input_shape for name, spec in SCENARIOS.items()} == {
        "split-digits": digits, "permuted-digits": digits, "mnist2": mnist, "pmnist": mnist,
        "split-mnist": mnist, "permuted-mnist": mnist, "split-fmnist": mnist, "cifar": rgb,
        "mixture": rgb, "split-cifar10": rgb, "split-cifar100": rgb,
        "split-cifar100-10": rgb, "split-cifar100-20": rgb,
        "split-tinyimagenet-5": (3, 64, 64), "split-tinyimagenet-10": (3, 64, 64),
    }
    for name in ("split-digits", "permuted-digits"):
        assert get_scenario(name).build(0).input_shape == SCENARIOS[name].input_shape


def test_unknown_scenario_lists_valid_names():
    with pytest.raises(UnknownNameError) as info:
        get_scenario("split-digitz")
    message = str(info.value)
    assert "split-digitz" in message and "split-digits" in message and "mixture" in message
    assert isinstance(info.value, KeyError)


# ---------------------------------------------------------------------------------------------
# embedded scenarios


def test_split_digits_shapes_split_and_normalisation():
    sc = get_scenario("split-digits").build(0)
    assert sc.n_tasks == 5 and sc.input_shape == (1, 8, 8) and sc.valid_fraction == 0.1
    assert sc.classes_per_task == [2] * 5
    counts = np.bincount(load_digits().target)
    for i, t in enumerate(sc.tasks):
        assert t.classes == (2 * i, 2 * i + 1)
        assert t.train_x.dtype == torch.float32 and t.train_y.dtype == torch.int64
        assert t.train_x.shape[1:] == (1, 8, 8) and t.test_x.shape[1:] == (1, 8, 8)
        for y in (t.train_y, t.test_y):
            assert set(y.tolist()) == {0, 1}
        # stratified 70/30 per class
        for label in (0, 1):
            n = counts[2 * i + label]
            assert int((t.test_y == label).sum()) == round(0.3 * n)
            assert int((t.train_y == label).sum()) == n - round(0.3 * n)
    # tasks together hold the whole training split: normalised with its statistics
    all_train = torch.cat([t.train_x for t in sc.tasks])
    assert len(all_train) + sum(len(t.test_y) for t in sc.tasks) == 1797
    assert abs(all_train.mean().item()) < 1e-5
    assert abs(all_train.std(unbiased=False).item() - 1) < 1e-4


def test_digits_test_set_is_the_same_for_every_seed():
    """No seed's training (and so validation) data holds another seed's test images: tuning
    on seeds 100-102 never sees the test images of the evaluation seeds 0-2."""
    for name in ("split-digits", "permuted-digits"):
        a, b = get_scenario(name).build(0), get_scenario(name).build(101)
        assert_same_scenario(a, get_scenario(name).build(0))
        for ta, tb in zip(a.tasks, b.tasks, strict=True):
            assert torch.equal(ta.test_y, tb.test_y) and torch.equal(ta.train_y, tb.train_y)
            if name == "split-digits":  # permuted-digits: the same images, other permutations
                assert torch.equal(ta.test_x, tb.test_x) and torch.equal(ta.train_x, tb.train_x)
    raw = ds.load_digits_split()
    test = {tuple(x.flatten().tolist()) for x in raw.test_x}
    train = {tuple(x.flatten().tolist()) for x in raw.train_x}
    assert len(raw.test_y) + len(raw.train_y) == 1797 and len(test) > 500
    assert [t.classes for t in get_scenario("split-digits").build(3).tasks] == [
        (0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]  # fixed pairs
    assert len(test & train) < 0.02 * len(test)  # (sklearn's digits hold a few duplicates)


def test_permuted_digits_tasks_are_exact_permutations():
    spec = get_scenario("permuted-digits")
    sc = spec.build(0)
    assert sc.n_tasks == 5 and sc.input_shape == (1, 8, 8) and sc.classes_per_task == [10] * 5
    raw = ds.load_digits_split()  # the same split, unpermuted
    mean, std = ds.channel_stats(raw.train_x, raw.max_value)
    base_train = ds.normalise(raw.train_x, mean, std, raw.max_value)
    base_test = ds.normalise(raw.test_x, mean, std, raw.max_value)
    for t in sc.tasks:
        assert torch.equal(t.train_y, raw.train_y) and torch.equal(t.test_y, raw.test_y)
        assert columns_are_permutation(base_train, t.train_x)
        assert columns_are_permutation(base_test, t.test_x)
        assert not torch.equal(t.train_x, base_train)  # the first task is permuted too
    for i in range(5):
        for j in range(i + 1, 5):
            assert not torch.equal(sc.tasks[i].train_x, sc.tasks[j].train_x)
    # determinism: same seed identical, another seed other permutations
    assert_same_scenario(sc, spec.build(0))
    other = spec.build(1)
    assert not torch.equal(sc.tasks[0].train_x[:, 0, 0], other.tasks[0].train_x[:, 0, 0])


def test_digits_scenarios_share_the_seeded_split():
    raw = ds.load_digits_split()  # the split both digits scenarios use, every seed
    assert raw.train_x.dtype == torch.uint8 and raw.max_value == 16
    mean, std = ds.channel_stats(raw.train_x, raw.max_value)
    split = get_scenario("split-digits").build(4)
    permuted = get_scenario("permuted-digits").build(4)
    chosen = raw.test_y >= 8
    expected = ds.normalise(raw.test_x[chosen], mean, std, raw.max_value)
    assert torch.equal(split.tasks[4].test_x, expected)
    assert torch.equal(split.tasks[4].test_y, raw.test_y[chosen] - 8)
    assert torch.equal(permuted.tasks[0].test_y, raw.test_y)


def test_embedded_check_never_raises(tmp_path):
    for name in ("split-digits", "permuted-digits"):
        get_scenario(name).check_available(tmp_path / "nothing-here")
        get_scenario(name).check_available(tmp_path / "nothing-here", download=True)


# ---------------------------------------------------------------------------------------------
# random accuracy, Avalanche benchmark


def _task(train_y, test_y, n_classes):
    ty, sy = torch.tensor(train_y), torch.tensor(test_y)
    return TaskData("t", n_classes, torch.zeros(len(ty), 1), ty, torch.zeros(len(sy), 1), sy)


def test_random_accuracy_hand_computed():
    # p_train = (3/4, 1/4), p_test = (1/4, 3/4): 3/16 + 3/16
    assert random_accuracy(_task([0, 0, 0, 1], [0, 1, 1, 1], 2)) == pytest.approx(0.375)
    # class 2 absent from test, class 1 absent from train: only class 0 counts: 0.5 * 0.25
    assert random_accuracy(_task([0, 2], [0, 1, 1, 1], 3)) == pytest.approx(0.125)
    # balanced 10 classes: 0.1
    assert random_accuracy(_task(list(range(10)) * 2, list(range(10)), 10)) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        random_accuracy(_task([], [0], 2))


def test_to_benchmark_task_labels_and_triplets():
    sc = get_scenario("split-digits").build(0)
    bm = to_benchmark(sc)
    assert len(bm.train_stream) == 5 and len(bm.test_stream) == 5
    for stream, split in ((bm.train_stream, "train"), (bm.test_stream, "test")):
        for i, exp in enumerate(stream):
            task = sc.tasks[i]
            assert exp.task_labels == [i]
            assert sorted(exp.classes_in_this_experience) == [0, 1]
            assert len(exp.dataset) == len(getattr(task, f"{split}_y"))
            x, y, t = exp.dataset[0]
            assert t == i and x.shape == (1, 8, 8)
            assert torch.equal(x, getattr(task, f"{split}_x")[0])
            assert y == int(getattr(task, f"{split}_y")[0])


# ---------------------------------------------------------------------------------------------
# missing data


@pytest.mark.parametrize(
    "name, datasets",
    [
        ("mnist2", ["mnist"]),
        ("pmnist", ["mnist"]),
        ("cifar", ["cifar10", "cifar100"]),
        ("mixture", list(MIXTURE_SOURCES)),
    ],
)
def test_missing_dataset_error_names_dataset_and_path(tmp_path, name, datasets):
    spec = get_scenario(name)
    with pytest.raises(DatasetMissingError) as info:
        spec.check_available(tmp_path)
    err = info.value
    message = str(err)
    assert err.dataset == datasets[0]
    assert err.path == str(tmp_path / ds.SOURCES[datasets[0]].folder)
    assert err.path in message and "--download" in message
    for other in datasets:  # every needed dataset is reported, with its expected folder
        assert str(tmp_path / ds.SOURCES[other].folder) in message
    # building without the data is the same clean error, not a traceback from torchvision
    with pytest.raises(DatasetMissingError):
        spec.build(0, tmp_path)


def test_missing_notmnist_explains_layout(tmp_path):
    with pytest.raises(DatasetMissingError) as info:
        ds.SOURCES["notmnist"].ensure(tmp_path, download=True)
    message = str(info.value)
    assert "train/<letter>/*.png" in message and str(tmp_path / "notmnist") in message
    assert "--download" not in message  # nothing to download


def test_missing_single_file_is_named(tmp_path):
    make_mnist_like(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetMissingError) as info:
        get_scenario("split-mnist").check_available(tmp_path)
    assert "missing t10k-labels-idx1-ubyte" in str(info.value)


def test_download_failure_and_success_via_fetch(tmp_path, monkeypatch):
    def failing(root):
        raise OSError("Name or service not known")

    monkeypatch.setitem(
        ds.SOURCES, "mnist", dataclasses.replace(ds.SOURCES["mnist"], fetch=failing)
    )
    with pytest.raises(DatasetMissingError) as info:
        get_scenario("mnist2").check_available(tmp_path, download=True)
    message = str(info.value)
    assert "download via torchvision failed" in message and "Name or service" in message
    assert "--download" not in message and "IDX" in message

    monkeypatch.setitem(
        ds.SOURCES, "mnist",
        dataclasses.replace(ds.SOURCES["mnist"], fetch=lambda root: make_mnist_like(root)),
    )
    get_scenario("mnist2").check_available(tmp_path, download=True)  # no error
    get_scenario("mnist2").check_available(tmp_path)  # now present


@pytest.mark.parametrize(("damage", "why"), [
    (lambda b: b"\x00\x00\x99\x99", "is not an uncompressed uint8 IDX file"),
    (lambda b: b[:-7], "has 31 bytes where its header gives 38"),  # truncated
    (lambda b: b + b"\x00", "has 39 bytes where its header gives 38"),
    (lambda b: b[:6], "is truncated"),
    (lambda b: b"\x1f\x8b" + b[2:], "is not an uncompressed uint8 IDX file"),  # gzip magic
])
def test_damaged_idx_is_refused_up_front_as_damaged(tmp_path, damage, why):
    """Before any run starts (the command checks availability first), naming the file and a
    remedy that works: --download alone would find the files present and fetch nothing."""
    make_mnist_like(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    for download in (False, True):
        with pytest.raises(DatasetMissingError) as info:
            get_scenario("mnist2").check_available(tmp_path, download=download)
        msg = str(info.value)
        assert msg.startswith("dataset 'mnist' is damaged at ") and "not found" not in msg
        assert f"train-labels-idx1-ubyte {why}" in msg, msg
        assert "delete the damaged files and rerun with --download" in msg


def test_unreadable_files_are_reported_as_damaged(tmp_path, monkeypatch):
    """Files that pass the header check but that the reader cannot read."""
    from benchmark.data import datasets

    make_mnist_like(tmp_path)
    src = datasets.SOURCES["mnist"]

    def broken(root):
        raise RuntimeError("unexpected end of data")

    monkeypatch.setitem(datasets.SOURCES, "mnist", dataclasses.replace(src, reader=broken))
    with pytest.raises(DatasetMissingError) as info:
        get_scenario("mnist2").build(0, tmp_path)
    assert "is damaged at" in str(info.value) and "could not be read" in str(info.value)


# ---------------------------------------------------------------------------------------------
# torchvision MNIST path on tiny IDX files


def test_mnist_loader_reads_idx_files(mnist_root):
    root, files = mnist_root
    raw = ds.load_source("mnist", root)
    train_images, train_labels = files["train"]
    assert raw.train_x.dtype == torch.uint8 and raw.train_x.shape == (30, 1, 28, 28)
    assert raw.test_x.shape == (20, 1, 28, 28)
    assert np.array_equal(raw.train_x[:, 0].numpy(), train_images)
    assert np.array_equal(raw.train_y.numpy(), train_labels)
    assert raw.train_y.dtype == torch.int64


def test_mnist2_on_idx_files(mnist_root):
    root, files = mnist_root
    sc = get_scenario("mnist2").build(0, root)
    assert sc.n_tasks == 2 and sc.input_shape == (1, 28, 28) and sc.classes_per_task == [5, 5]
    assert sc.input_shape == get_scenario("mnist2").input_shape
    assert [t.classes for t in sc.tasks] == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    images, labels = files["train"]
    scaled = images.astype(np.float64) / 255
    mean, std = scaled.mean(), scaled.std()
    for k, t in enumerate(sc.tasks):
        chosen = (labels >= 5 * k) & (labels < 5 * k + 5)
        assert np.array_equal(t.train_y.numpy(), labels[chosen] - 5 * k)
        expected = (scaled[chosen] - mean) / std
        assert t.train_x.dtype == torch.float32
        np.testing.assert_allclose(t.train_x[:, 0].numpy(), expected, atol=1e-5)
        assert set(t.test_y.tolist()) == set(range(5))


def test_pmnist_on_idx_files(mnist_root):
    root, _ = mnist_root
    spec = get_scenario("pmnist")
    sc = spec.build(0, root)
    assert sc.n_tasks == 10 and sc.input_shape == (1, 28, 28) and sc.classes_per_task == [10] * 10
    assert sc.input_shape == spec.input_shape
    raw = ds.load_source("mnist", root)
    mean, std = ds.channel_stats(raw.train_x)
    base = ds.normalise(raw.train_x, mean, std)
    for t in sc.tasks:
        assert torch.equal(t.train_y, raw.train_y)
        assert columns_are_permutation(base, t.train_x)
        assert not torch.equal(base, t.train_x)
    assert_same_scenario(sc, spec.build(0, root))
    other = spec.build(1, root)
    assert not torch.equal(sc.tasks[0].train_x, other.tasks[0].train_x)
    # permuted-mnist: the same data under Avalanche's name
    assert_same_scenario(sc, get_scenario("permuted-mnist").build(0, root))


def test_split_mnist_and_fmnist_on_idx_files(tmp_path):
    make_mnist_like(tmp_path, "MNIST")
    make_mnist_like(tmp_path, "FashionMNIST", seed=1)
    for name in ("split-mnist", "split-fmnist"):
        sc = get_scenario(name).build(0, tmp_path)
        assert sc.n_tasks == 5 and sc.input_shape == (1, 28, 28)
        assert sc.input_shape == get_scenario(name).input_shape
        assert sc.classes_per_task == [2] * 5
        for i, t in enumerate(sc.tasks):
            assert t.classes == (2 * i, 2 * i + 1)
            assert set(t.train_y.tolist()) == {0, 1} and set(t.test_y.tolist()) == {0, 1}
            assert len(t.train_y) == 6 and len(t.test_y) == 4
    a = get_scenario("split-mnist").build(0, tmp_path)
    b = get_scenario("split-fmnist").build(0, tmp_path)
    assert not torch.equal(a.tasks[0].train_x, b.tasks[0].train_x)  # read the right files


# ---------------------------------------------------------------------------------------------
# folder datasets (notMNIST, FaceScrub)


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_notmnist_folder_layout(tmp_path):
    rng = np.random.default_rng(0)
    written = {}
    for split, n in (("train", 2), ("test", 1)):
        for letter in "ACB":
            for k in range(n):
                img = rng.integers(1, 256, size=(28, 28), dtype=np.uint8)
                _write_png(tmp_path / "notmnist" / split / letter / f"{k}.png", img)
                written[(split, letter, k)] = img
    (tmp_path / "notmnist" / "train" / "A" / "notes.txt").write_text("ignored")
    (tmp_path / "notmnist" / "train" / "B" / "broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="unreadable"):
        raw = ds.load_source("notmnist", tmp_path)
    assert raw.classes == ("A", "B", "C") and raw.n_classes == 3
    assert raw.train_x.shape == (6, 1, 32, 32) and raw.test_x.shape == (3, 1, 32, 32)
    assert raw.train_y.tolist() == [0, 0, 1, 1, 2, 2] and raw.test_y.tolist() == [0, 1, 2]
    # 28x28 padded by 2 zero pixels on each side, content unchanged
    assert np.array_equal(raw.train_x[2, 0, 2:30, 2:30].numpy(), written[("train", "B", 0)])
    assert int(raw.train_x[:, :, :2].sum()) == 0 and int(raw.train_x[:, :, :, 30:].sum()) == 0


def test_folder_classes_must_match(tmp_path):
    img = np.zeros((28, 28), dtype=np.uint8)
    _write_png(tmp_path / "notmnist" / "train" / "A" / "0.png", img)
    _write_png(tmp_path / "notmnist" / "test" / "B" / "0.png", img)
    with pytest.raises(DatasetMissingError) as info:
        ds.load_source("notmnist", tmp_path)
    assert "same class folders" in str(info.value)


def test_facescrub_folder_resized_to_rgb32(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for person in ("ann", "bob"):
            img = rng.integers(0, 256, size=(40, 36, 3), dtype=np.uint8)
            _write_png(tmp_path / "facescrub" / split / person / "0.jpg", img)
    raw = ds.load_source("facescrub", tmp_path)
    assert raw.train_x.shape == (2, 3, 32, 32) and raw.classes == ("ann", "bob")


def test_gtsrb_through_torchvision_resized(tmp_path):
    from PIL import Image

    base = tmp_path / "gtsrb"
    rng = np.random.default_rng(0)
    for cls, size in (("00000", (30, 30)), ("00001", (45, 40))):
        folder = base / "GTSRB" / "Training" / cls
        folder.mkdir(parents=True)
        img = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / "a.ppm")
    test_dir = base / "GTSRB" / "Final_Test" / "Images"
    test_dir.mkdir(parents=True)
    Image.fromarray(np.zeros((50, 60, 3), dtype=np.uint8)).save(test_dir / "00000.ppm")
    (base / "GT-final_test.csv").write_text("Filename;Width;Height;ClassId\n00000.ppm;60;50;1\n")
    raw = ds.load_source("gtsrb", tmp_path)
    assert raw.train_x.shape == (2, 3, 32, 32) and raw.train_y.tolist() == [0, 1]
    assert raw.test_x.shape == (1, 3, 32, 32) and raw.test_y.tolist() == [1]


# ---------------------------------------------------------------------------------------------
# composition of the paper's CIFAR and mixture setups (sources replaced by in-memory fakes)


def test_cifar_composition_and_order(monkeypatch, tmp_path):
    fake_source(monkeypatch, "cifar10", random_raw("cifar10", 10, 2, (3, 32, 32)))
    fake_source(monkeypatch, "cifar100", random_raw("cifar100", 100, 1, (3, 32, 32), seed=1))
    spec = get_scenario("cifar")
    spec.check_available(tmp_path)
    sc = spec.build(0, tmp_path)
    assert sc.n_tasks == 10 and sc.input_shape == (3, 32, 32) and sc.valid_fraction == 0.1
    assert sc.input_shape == spec.input_shape
    assert sorted(sc.classes_per_task) == [2] * 5 + [20] * 5
    names = [t.name for t in sc.tasks]
    assert set(names) == {f"cifar10:{2 * i}-{2 * i + 1}" for i in range(5)} | {
        f"cifar100:{20 * i}-{20 * i + 19}" for i in range(5)
    }
    for t in sc.tasks:
        assert set(t.train_y.tolist()) == set(range(t.n_classes))
    assert_same_scenario(sc, spec.build(0, tmp_path))
    orders = {tuple(t.name for t in spec.build(s, tmp_path).tasks) for s in range(4)}
    assert len(orders) > 1  # the seed shuffles the task order


def test_mixture_composition(monkeypatch, tmp_path):
    shapes = {
        "cifar10": (10, (3, 32, 32)), "cifar100": (100, (3, 32, 32)), "mnist": (10, (1, 28, 28)),
        "svhn": (10, (3, 32, 32)), "fmnist": (10, (1, 28, 28)), "gtsrb": (43, (3, 32, 32)),
        "facescrub": (5, (3, 32, 32)), "notmnist": (10, (1, 32, 32)),
    }
    for i, (name, (n, shape)) in enumerate(shapes.items()):
        fake_source(monkeypatch, name, random_raw(name, n, 1, shape, seed=i))
    spec = get_scenario("mixture")
    sc = spec.build(3, tmp_path)
    assert sc.n_tasks == 8 and sc.input_shape == (3, 32, 32) and sc.valid_fraction == 0.15
    assert sc.input_shape == spec.input_shape
    by_name = {t.name: t for t in sc.tasks}
    assert set(by_name) == set(MIXTURE_SOURCES)
    for name, (n, _) in shapes.items():
        t = by_name[name]
        assert t.n_classes == n and t.train_x.shape[1:] == (3, 32, 32)
    mnist = by_name["mnist"].train_x
    assert torch.equal(mnist[:, 0], mnist[:, 1]) and torch.equal(mnist[:, 0], mnist[:, 2])
    border = mnist[:, 0, 0, :]  # padded rows hold the normalised value of a 0 pixel
    assert torch.allclose(border, border.flatten()[0].expand_as(border))
    orders = {tuple(t.name for t in spec.build(s, tmp_path).tasks) for s in range(3)}
    assert len(orders) > 1


# ---------------------------------------------------------------------------------------------
# helpers of benchmark.data.datasets


def test_channel_stats_exact_and_rgb32():
    x = torch.randint(0, 256, (7, 3, 5, 6), dtype=torch.uint8)
    mean, std = ds.channel_stats(x)
    ref = x.double().div(255).transpose(0, 1).reshape(3, -1)
    assert torch.allclose(mean, ref.mean(1)) and torch.allclose(std, ref.std(1, unbiased=False))
    y = ds.normalise(x, mean, std)
    assert y.dtype == torch.float32
    assert torch.allclose(y.double().transpose(0, 1).reshape(3, -1).mean(1),
                          torch.zeros(3, dtype=torch.float64), atol=1e-5)
    gray = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    out = ds.to_rgb32(gray)
    assert out.shape == (2, 3, 32, 32) and torch.equal(out[:, 2, 2:30, 2:30], gray[:, 0])
    assert ds.to_rgb32(torch.zeros(2, 3, 48, 40, dtype=torch.uint8)).shape == (2, 3, 32, 32)


# ---------------------------------------------------------------------------------------------
# the class-incremental splits (seeded class order; sources replaced by in-memory fakes)


def test_seeded_splits_registry():
    for name, (source, n_classes, size) in SEEDED.items():
        spec = SCENARIOS[name]
        assert spec.sources == (source,) and spec.network == "resnet18" and not spec.embedded
        assert spec.n_tasks == n_classes // size and spec.valid_fraction == 0.1
    # the fixed-order splits keep their network and data
    assert SCENARIOS["split-cifar10"].network == SCENARIOS["split-cifar100"].network == "alexnet"


@pytest.mark.parametrize("n_classes, size", [(100, 10), (100, 5), (200, 40), (200, 20)])
def test_class_order_blocks_partition_and_follow_the_seed(n_classes, size):
    orders = [class_order_blocks(seed, n_classes, size) for seed in range(5)]
    for seed, blocks in enumerate(orders):
        assert blocks == class_order_blocks(seed, n_classes, size)  # same seed, same order
        assert len(blocks) == n_classes // size and all(len(b) == size for b in blocks)
        assert all(list(b) == sorted(b) for b in blocks)
        assert sorted(c for b in blocks for c in b) == list(range(n_classes))  # a partition
        assert blocks != [tuple(range(s, s + size)) for s in range(0, n_classes, size)]
    assert len({tuple(b) for b in orders}) == 5  # seeds 0-4: five class orders
    assert len({b[0] for b in orders}) == 5  # the first task differs too
    with pytest.raises(ValueError):
        class_order_blocks(0, 10, 3)


@pytest.mark.parametrize("name", sorted(SEEDED))
def test_seeded_split_tasks(name, monkeypatch, tmp_path):
    source, n_classes, size = SEEDED[name]
    shape = get_scenario(name).input_shape
    raw = random_raw(source, n_classes, 2, shape, seed=1)
    fake_source(monkeypatch, source, raw)
    spec = get_scenario(name)
    spec.check_available(tmp_path)
    sc = spec.build(0, tmp_path)
    assert sc.n_tasks == spec.n_tasks and sc.input_shape == shape and sc.valid_fraction == 0.1
    assert sc.classes_per_task == [size] * spec.n_tasks
    assert [t.classes for t in sc.tasks] == class_order_blocks(0, n_classes, size)
    mean, std = ds.channel_stats(raw.train_x)
    for t in sc.tasks:
        assert t.name == f"{source}:{','.join(map(str, t.classes))}"
        assert set(t.train_y.tolist()) == set(t.test_y.tolist()) == set(range(size))
        chosen = torch.isin(raw.train_y, torch.tensor(t.classes))
        # label k of the task is its k-th smallest source class
        assert torch.equal(torch.tensor(t.classes)[t.train_y], raw.train_y[chosen])
        assert torch.equal(t.train_x, ds.normalise(raw.train_x[chosen], mean, std))
    assert sum(len(t.train_y) for t in sc.tasks) == len(raw.train_y)
    assert_same_scenario(sc, spec.build(0, tmp_path))
    other = spec.build(1, tmp_path)
    assert [t.classes for t in other.tasks] != [t.classes for t in sc.tasks]
    assert [t.classes for t in other.tasks] == class_order_blocks(1, n_classes, size)


def test_fixed_splits_keep_their_order(monkeypatch, tmp_path):
    """split-cifar10 and split-cifar100 keep the fixed blocks 0/1..8/9 and 0-9..90-99."""
    fake_source(monkeypatch, "cifar10", random_raw("cifar10", 10, 2, (3, 32, 32)))
    fake_source(monkeypatch, "cifar100", random_raw("cifar100", 100, 1, (3, 32, 32), seed=1))
    for name, size, n in (("split-cifar10", 2, 10), ("split-cifar100", 10, 100)):
        for seed in (0, 3):
            sc = get_scenario(name).build(seed, tmp_path)
            assert [t.classes for t in sc.tasks] == [
                tuple(range(s, s + size)) for s in range(0, n, size)]
