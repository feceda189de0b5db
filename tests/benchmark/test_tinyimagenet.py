"""The TinyImageNet source (benchmark/data/datasets.py) on tiny fake trees in the standard
``tiny-imagenet-200`` layout written here (no download), and the seeded TinyImageNet splits
built from such a tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.data import datasets as ds
from benchmark.data.scenarios import class_order_blocks, get_scenario
from benchmark.errors import DatasetMissingError

#: deliberately not in sorted order: class indices follow the sorted wnids
WNIDS = ("n03", "n01", "n02")


def write_tiny(root: Path, wnids=WNIDS, n_train: int = 4, n_val: int = 2,
               seed: int = 0) -> Path:
    """A fake tiny-imagenet-200 tree: ``n_train`` training and ``n_val`` validation JPEGs per
    class (64x64 RGB), wnids.txt in the order given, val annotations interleaving classes."""
    base = root / ds.TINY_FOLDER
    rng = np.random.default_rng(seed)
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    for w in wnids:
        folder = base / "train" / w / "images"
        folder.mkdir(parents=True)
        (base / "train" / w / f"{w}_boxes.txt").write_text("ignored\n")
        for k in range(n_train):
            img = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
            Image.fromarray(img).save(folder / f"{w}_{k}.JPEG")
    lines = []
    for _ in range(n_val):
        for w in wnids:
            name = f"val_{len(lines)}.JPEG"
            img = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
            Image.fromarray(img).save(base / "val" / "images" / name)
            lines.append(f"{name}\t{w}\t0\t0\t63\t63\n")
    (base / "val" / "val_annotations.txt").write_text("".join(lines))
    return base


def decoded(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).transpose(2, 0, 1)


def test_reads_the_standard_layout(tmp_path):
    base = write_tiny(tmp_path)
    raw = ds.load_source("tinyimagenet", tmp_path)
    assert raw.name == "tinyimagenet" and raw.n_classes == 3
    assert raw.classes == ("n01", "n02", "n03")  # sorted wnids, not the file's order
    assert raw.train_x.dtype == torch.uint8 and raw.train_x.shape == (12, 3, 64, 64)
    assert raw.test_x.shape == (6, 3, 64, 64)
    assert raw.train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # the test split is the validation set, in the annotation file's order
    assert raw.test_y.tolist() == [2, 0, 1, 2, 0, 1]
    assert np.array_equal(raw.train_x[4].numpy(),
                          decoded(base / "train" / "n02" / "images" / "n02_0.JPEG"))
    assert np.array_equal(raw.test_x[1].numpy(), decoded(base / "val" / "images" / "val_1.JPEG"))


def test_grayscale_and_odd_sizes_become_rgb64(tmp_path):
    base = write_tiny(tmp_path)
    gray = np.full((64, 64), 77, dtype=np.uint8)
    Image.fromarray(gray).save(base / "train" / "n01" / "images" / "n01_0.JPEG")
    Image.fromarray(np.zeros((50, 70, 3), dtype=np.uint8)).save(
        base / "val" / "images" / "val_0.JPEG")
    raw = ds.load_source("tinyimagenet", tmp_path)
    first = raw.train_x[0]
    assert torch.equal(first[0], first[1]) and torch.equal(first[0], first[2])
    assert abs(int(first.float().mean()) - 77) <= 2
    assert raw.test_x.shape[1:] == (3, 64, 64)


def test_missing_folder_names_the_dataset_path_and_zip(tmp_path):
    for download in (False, True):  # nothing is ever downloaded
        with pytest.raises(DatasetMissingError) as info:
            get_scenario("split-tinyimagenet-10").check_available(tmp_path, download=download)
        err = info.value
        assert err.dataset == "tinyimagenet"
        assert err.path == str(tmp_path / "tiny-imagenet-200")
        message = str(err)
        assert "the folder does not exist" in message
        assert "http://cs231n.stanford.edu/tiny-imagenet-200.zip" in message
        assert "not even with --download" in message
    with pytest.raises(DatasetMissingError):
        get_scenario("split-tinyimagenet-5").build(0, tmp_path)


def test_missing_annotations_are_named(tmp_path):
    base = write_tiny(tmp_path)
    (base / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DatasetMissingError) as info:
        ds.SOURCES["tinyimagenet"].ensure(tmp_path)
    assert "missing val/val_annotations.txt" in str(info.value)


@pytest.mark.parametrize("line, problem", [
    ("val_9.JPEG n01 0 0 63 63", "expected 'file<TAB>wnid<TAB>bbox...'"),
    ("val_9.JPEG\tn99\t0\t0\t63\t63", "wnid 'n99' is not in wnids.txt"),
    ("val_0.JPEG\tn01\t0\t0\t63\t63", "val_0.JPEG is listed twice"),
])
def test_malformed_annotation_line_names_file_and_line(tmp_path, line, problem):
    base = write_tiny(tmp_path)
    annotations = base / "val" / "val_annotations.txt"
    rows = annotations.read_text().splitlines()
    annotations.write_text("\n".join(rows[:2] + [line] + rows[2:]) + "\n")
    with pytest.raises(DatasetMissingError) as info:
        ds.load_source("tinyimagenet", tmp_path)
    message = str(info.value)
    assert f"{annotations} line 3: " in message and problem in message


def test_listed_but_absent_val_image_and_empty_class(tmp_path):
    base = write_tiny(tmp_path)
    (base / "val" / "images" / "val_4.JPEG").unlink()
    with pytest.raises(DatasetMissingError) as info:
        ds.load_source("tinyimagenet", tmp_path)
    assert "val_4.JPEG" in str(info.value) and "missing" in str(info.value)

    other = tmp_path / "other"
    base = write_tiny(other)
    for p in (base / "train" / "n02" / "images").iterdir():
        p.unlink()
    with pytest.raises(DatasetMissingError) as info:
        ds.load_source("tinyimagenet", other)
    assert "train/n02/images" in str(info.value)


def test_unreadable_image_is_named(tmp_path):
    base = write_tiny(tmp_path)
    broken = base / "train" / "n03" / "images" / "n03_1.JPEG"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetMissingError) as info:
        ds.load_source("tinyimagenet", tmp_path)
    assert "could not be read" in str(info.value) and str(broken) in str(info.value)


def test_split_tinyimagenet_from_files(tmp_path):
    """200 classes of one training and one validation image each: the tasks are the seeded
    blocks of classes, labels 0..k-1, every image in exactly one task."""
    wnids = tuple(f"n{c:08d}" for c in range(200))
    write_tiny(tmp_path, wnids, n_train=1, n_val=1)
    raw = ds.load_source("tinyimagenet", tmp_path)
    for name, n_tasks in (("split-tinyimagenet-5", 5), ("split-tinyimagenet-10", 10)):
        spec = get_scenario(name)
        spec.check_available(tmp_path)
        sc = spec.build(3, tmp_path)
        size = 200 // n_tasks
        assert sc.n_tasks == spec.n_tasks == n_tasks and sc.input_shape == (3, 64, 64)
        assert sc.classes_per_task == [size] * n_tasks
        assert [t.classes for t in sc.tasks] == class_order_blocks(3, 200, size)
        for t in sc.tasks:
            assert t.train_y.tolist() == list(range(size))  # one image per class, sorted
            assert sorted(t.test_y.tolist()) == list(range(size))
            first = raw.train_y.tolist().index(t.classes[0])
            mean, std = ds.channel_stats(raw.train_x)
            assert torch.equal(t.train_x[0], ds.normalise(raw.train_x[first:first + 1], mean,
                                                          std)[0])
        assert sum(len(t.test_y) for t in sc.tasks) == 200


def test_split_tinyimagenet_needs_200_classes(tmp_path):
    write_tiny(tmp_path)
    with pytest.raises(DatasetMissingError) as info:
        get_scenario("split-tinyimagenet-5").build(0, tmp_path)
    assert "found 3 classes, split-tinyimagenet-5 needs 200" in str(info.value)
