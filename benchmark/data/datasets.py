"""Source datasets: where they live under ``data_root``, how to check, fetch and load them.

Every loader returns a :class:`RawDataset`: integer pixels (``uint8``, shape ``(N, C, H, W)``)
and ``int64`` labels for the official train and test splits. Turning pixels into float32
happens later, vectorised, in :func:`normalise` (see "Normalisation" below).

Layout under ``data_root``
--------------------------
The torchvision datasets use torchvision's own layout, so ``--download`` (torchvision with
``download=True``) and files placed by hand end up in the same place::

    <data_root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte         (uncompressed IDX)
    <data_root>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    <data_root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}
    <data_root>/cifar-100-python/{train,test,meta}
    <data_root>/svhn/{train,test}_32x32.mat
    <data_root>/gtsrb/GTSRB/Training/<class>/*.ppm
    <data_root>/gtsrb/GTSRB/Final_Test/Images/*.ppm   + <data_root>/gtsrb/GT-final_test.csv

TinyImageNet (200 classes, 64x64 RGB) has no torchvision dataset and is never downloaded, not
even with ``--download``: unzip the standard ``tiny-imagenet-200.zip``
(http://cs231n.stanford.edu/tiny-imagenet-200.zip) into the data root::

    <data_root>/tiny-imagenet-200/wnids.txt                    200 class ids (wnids), one a line
    <data_root>/tiny-imagenet-200/train/<wnid>/images/*.JPEG    500 training images per class
    <data_root>/tiny-imagenet-200/val/images/*.JPEG             50 per class: the test split
    <data_root>/tiny-imagenet-200/val/val_annotations.txt       tab-separated: file, wnid, bbox

Class ``c`` is the c-th wnid in *sorted* order (not the file's order). The official test set has
no labels, so the labelled validation set is the test split (as in the literature); training
images are read in sorted file order per class, test images in the annotation file's order.
Images are read as RGB (a few are grayscale); any not 64x64 is resized to 64x64.

notMNIST and FaceScrub have no maintained download. They are read from an ImageFolder-like
layout that the user fills (any train/test split of their choice)::

    <data_root>/notmnist/train/<letter>/*.png       letters A..J, one folder per class
    <data_root>/notmnist/test/<letter>/*.png
    <data_root>/facescrub/train/<person>/*.{png,jpg,jpeg,...}   the paper used 100 people
    <data_root>/facescrub/test/<person>/*

Class folders are sorted by name and numbered from 0; train and test must hold the same
class folders. Files with other extensions are ignored; unreadable images are skipped with a
warning. notMNIST images are read as grayscale (28x28 images padded to 32x32, other sizes
resized), FaceScrub images as RGB resized to 32x32. GTSRB images (of varying size) are resized
to 32x32 RGB when loaded.

The digits of scikit-learn (``load_digits``: 1797 real 8x8 images, values 0..16) ship with
scikit-learn, so they are always available; :func:`load_digits_split` splits them with a fixed
(the same for every run seed), per-class (stratified) 70/30 train/test split.

Normalisation
-------------
Pixels are scaled to [0, 1] (divided by 255, or by 16 for the digits), then each channel is
standardised with the mean and standard deviation of the *training split* of its source dataset
(:func:`channel_stats`, computed exactly from pixel-value histograms, after any padding or
resizing). For the full MNIST and CIFAR-10 training sets this yields the usual constants
(0.1307/0.3081; (0.4914, 0.4822, 0.4465)/(0.2470, 0.2435, 0.2616)); computing them keeps one rule
for sources without published constants (GTSRB, notMNIST, FaceScrub, padded 32x32 variants, the
seed-dependent training split of the digits).

Seeds
-----
:func:`rng_for` derives an independent NumPy generator per (purpose, seed): "split" (train/test
split of the digits), "order" (task order, or the class order of the seeded class splits),
"permutation" (pixel permutations).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reports.text import one_line

from ..errors import DatasetMissingError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff")

_PURPOSES = {"split": 1, "order": 2, "permutation": 3}


def rng_for(seed: int, purpose: str) -> np.random.Generator:
    """Independent, reproducible generator for one use of the seed (see module docstring)."""
    return np.random.default_rng([_PURPOSES[purpose], int(seed)])


@dataclass(frozen=True)
class RawDataset:
    """One source dataset before normalisation: integer pixels, official train/test splits."""

    name: str
    n_classes: int
    train_x: torch.Tensor  # uint8, (N, C, H, W)
    train_y: torch.Tensor  # int64, values in [0, n_classes)
    test_x: torch.Tensor
    test_y: torch.Tensor
    max_value: int = 255  # pixel value that maps to 1.0
    classes: tuple[str, ...] = ()  # class names, when the source has them (folder datasets)

    def replace_images(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> RawDataset:
        """Same dataset with ``fn`` applied to the images of both splits."""
        return RawDataset(
            self.name, self.n_classes, fn(self.train_x), self.train_y, fn(self.test_x),
            self.test_y, self.max_value, self.classes,
        )


# ---------------------------------------------------------------------------------------------
# Normalisation and geometry


def channel_stats(x: torch.Tensor, max_value: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-channel mean and std of ``x / max_value`` for integer images ``(N, C, H, W)``.

    Computed from a 256-bin histogram per channel, so no float copy of the images is made.
    A constant channel gets std 1 (no division by zero).
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {x.dtype}")
    values = torch.arange(256, dtype=torch.float64) / max_value
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        total = counts.sum().clamp_min(1.0)
        mean = (counts * values).sum() / total
        var = (counts * (values - mean) ** 2).sum() / total
        means.append(mean)
        stds.append(var.sqrt() if var > 0 else torch.tensor(1.0, dtype=torch.float64))
    return torch.stack(means), torch.stack(stds)


def normalise(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, max_value: int = 255
) -> torch.Tensor:
    """float32 ``(x / max_value - mean[c]) / std[c]``, vectorised, one float allocation."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    out = x.to(torch.float32)
    out.div_(max_value)
    out.sub_(mean.to(torch.float32).view(shape)).div_(std.to(torch.float32).view(shape))
    return out


def to_rgb32(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` to ``(N, 3, 32, 32)``: 28x28 zero-padded by 2 pixels, other sizes
    resized (bilinear, antialiased); one channel copied to three."""
    if x.shape[1] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got {x.shape[1]}")
    size = tuple(x.shape[-2:])
    if size == (28, 28):
        x = F.pad(x, (2, 2, 2, 2))
    elif size != (32, 32):
        x = F.interpolate(x.float(), size=(32, 32), mode="bilinear", antialias=True)
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def _fit_32(img, pad_28: bool):
    """PIL image to 32x32: padded when it is 28x28 and ``pad_28``, else resized."""
    from PIL import Image

    if img.size == (32, 32):
        return img
    if pad_28 and img.size == (28, 28):
        canvas = Image.new(img.mode, (32, 32), 0)
        canvas.paste(img, (2, 2))
        return canvas
    return img.resize((32, 32), Image.BILINEAR)


def _stack_images(arrays: list[np.ndarray]) -> torch.Tensor:
    """List of HxW or HxWxC uint8 arrays to a uint8 tensor (N, C, H, W)."""
    x = np.stack(arrays).astype(np.uint8, copy=False)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x))


# ---------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class Source:
    """A dataset on disk under ``data_root`` (see the module docstring for the layout)."""

    name: str  # registry key, used in errors: "mnist", "cifar10", ...
    title: str  # human name
    folder: str  # relative to data_root: where its files live (the path shown in errors)
    required: tuple[str, ...]  # relative to folder; must exist (folders must not be empty)
    manual: str  # how to place the files by hand
    reader: Callable[[Path], RawDataset]  # receives data_root
    fetch: Callable[[Path], None] | None = None  # download via torchvision into data_root
    n_classes: int | None = None  # None: given by the class folders found
    #: a cheap check of the required files' integrity (receives the folder and ``required``):
    #: a problem or None
    validate: Callable[[Path, Sequence[str]], str | None] | None = None

    def path(self, data_root: Path) -> Path:
        return Path(data_root).expanduser().absolute() / self.folder

    def missing(self, data_root: Path) -> list[str]:
        """Required entries that are absent (or empty folders)."""
        base = self.path(data_root)
        absent = []
        for rel in self.required:
            p = base / rel
            if not p.exists() or (p.is_dir() and not any(p.iterdir())):
                absent.append(rel)
        return absent

    def error(
        self, data_root: Path, detail: str, offer_download: bool = True, damaged: bool = False
    ) -> DatasetMissingError:
        remedy = self.manual
        if damaged:
            remedy = ("delete the damaged files and rerun with --download to fetch them via "
                      f"torchvision, or {remedy}" if self.fetch is not None
                      else f"replace the damaged files: {remedy}")
        elif self.fetch is not None and offer_download:
            remedy = f"run with --download to fetch it via torchvision, or {remedy}"
        return DatasetMissingError(self.name, str(self.path(data_root)), f"{detail}; {remedy}",
                                   damaged)

    def ensure(self, data_root: Path, download: bool = False) -> None:
        """Raise DatasetMissingError unless the files are there (after downloading if asked)."""
        absent = self.missing(data_root)
        if absent and download and self.fetch is not None:
            try:
                self.fetch(Path(data_root))
            except Exception as exc:  # network, checksum, disk: all end as one clear error
                raise self.error(
                    data_root, f"download via torchvision failed ({one_line(exc, 200)})", False
                ) from exc
            absent = self.missing(data_root)
        if absent:
            if self.path(data_root).is_dir():
                detail = "missing " + ", ".join(absent)
            else:
                detail = "the folder does not exist"
            raise self.error(data_root, detail, offer_download=not download)
        problem = (self.validate(self.path(data_root), self.required)
                   if self.validate is not None else None)
        if problem is not None:
            raise self.error(data_root, problem, damaged=True)

    def load(self, data_root: Path) -> RawDataset:
        """Check, then read both splits; unreadable files become DatasetMissingError too."""
        self.ensure(data_root)
        try:
            raw = self.reader(Path(data_root))
        except DatasetMissingError:
            raise
        except Exception as exc:
            why = f"the files could not be read ({one_line(exc, 200)})"
            raise self.error(data_root, why, damaged=True) from exc
        n = raw.n_classes
        for y in (raw.train_y, raw.test_y):
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n):
                raise self.error(data_root, f"labels outside 0..{n - 1}: the files look corrupted")
        return raw


def _mnist_like(cls_name: str, name: str):
    """Reader and fetcher for torchvision's MNIST / FashionMNIST (``.data`` is a uint8 tensor)."""

    def read(data_root: Path) -> RawDataset:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        parts = []
        for train in (True, False):
            ds = cls(str(data_root), train=train, download=False)
            parts += [ds.data.unsqueeze(1).contiguous(), ds.targets.to(torch.int64)]
        return RawDataset(name, 10, *parts)

    def fetch(data_root: Path) -> None:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        for train in (True, False):
            cls(str(data_root), train=train, download=True)

    return read, fetch


def _cifar(cls_name: str, name: str, n_classes: int):
    """torchvision's CIFAR10 / CIFAR100: ``.data`` is a uint8 array (N, 32, 32, 3)."""

    def read(data_root: Path) -> RawDataset:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        parts = []
        for train in (True, False):
            ds = cls(str(data_root), train=train, download=False)
            x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
            parts += [x, torch.as_tensor(ds.targets, dtype=torch.int64)]
        return RawDataset(name, n_classes, *parts)

    def fetch(data_root: Path) -> None:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        for train in (True, False):
            cls(str(data_root), train=train, download=True)

    return read, fetch


def _read_svhn(data_root: Path) -> RawDataset:
    import torchvision

    parts = []
    for split in ("train", "test"):
        ds = torchvision.datasets.SVHN(str(data_root / "svhn"), split=split, download=False)
        parts += [torch.from_numpy(np.ascontiguousarray(ds.data)),
                  torch.as_tensor(ds.labels, dtype=torch.int64)]
    return RawDataset("svhn", 10, *parts)


def _fetch_svhn(data_root: Path) -> None:
    import torchvision

    for split in ("train", "test"):
        torchvision.datasets.SVHN(str(data_root / "svhn"), split=split, download=True)


def _read_gtsrb(data_root: Path) -> RawDataset:
    """GTSRB has no in-memory array: each image is opened (by torchvision) and resized here."""
    import torchvision

    parts = []
    for split in ("train", "test"):
        ds = torchvision.datasets.GTSRB(
            str(data_root), split=split, download=False,
            transform=lambda img: np.asarray(_fit_32(img, pad_28=False)),
        )
        images, labels = [], []
        for i in range(len(ds)):
            img, label = ds[i]
            images.append(img)
            labels.append(label)
        parts += [_stack_images(images), torch.as_tensor(labels, dtype=torch.int64)]
    return RawDataset("gtsrb", 43, *parts)


def _fetch_gtsrb(data_root: Path) -> None:
    import torchvision

    for split in ("train", "test"):
        torchvision.datasets.GTSRB(str(data_root), split=split, download=True)


def read_image_folder(
    folder: Path, mode: str, pad_28: bool
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read ``folder/<class>/<image>`` into uint8 ``(N, C, 32, 32)`` and int64 labels.

    Classes are the sorted sub-folder names (label = position). ``mode`` is a PIL mode ("L" or
    "RGB"). Unreadable images are skipped with a warning.
    """
    from PIL import Image

    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    images: list[np.ndarray] = []
    labels: list[int] = []
    skipped: list[Path] = []
    for label, cls in enumerate(classes):
        for path in sorted((folder / cls).iterdir()):
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            try:
                with Image.open(path) as img:
                    images.append(np.asarray(_fit_32(img.convert(mode), pad_28)))
            except (OSError, ValueError, SyntaxError):  # truncated / not an image
                skipped.append(path)
                continue
            labels.append(label)
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} unreadable image(s) under {folder}, e.g. {skipped[0]}",
            stacklevel=2,
        )
    if not images:
        raise ValueError(f"no readable images under {folder}")
    return _stack_images(images), torch.as_tensor(labels, dtype=torch.int64), classes


def _folder_reader(name: str, mode: str, pad_28: bool):
    def read(data_root: Path) -> RawDataset:
        base = Path(data_root) / name
        train_x, train_y, classes = read_image_folder(base / "train", mode, pad_28)
        test_x, test_y, test_classes = read_image_folder(base / "test", mode, pad_28)
        if classes != test_classes:
            only = sorted(set(classes) ^ set(test_classes))
            raise SOURCES[name].error(
                data_root,
                f"train/ and test/ must hold the same class folders (differing: {', '.join(only)})",
                offer_download=False,
            )
        return RawDataset(name, len(classes), train_x, train_y, test_x, test_y,
                          classes=tuple(classes))

    return read


TINY_FOLDER = "tiny-imagenet-200"
TINY_REQUIRED = ("wnids.txt", "train", "val/images", "val/val_annotations.txt")
TINY_SIZE = 64


def _read_rgb64(paths: list[Path]) -> torch.Tensor:
    """uint8 ``(N, 3, 64, 64)`` from image files (converted to RGB, resized when not 64x64);
    an unreadable file is an error naming it."""
    from PIL import Image

    out = np.empty((len(paths), TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if img.size != (TINY_SIZE, TINY_SIZE):
                    img = img.resize((TINY_SIZE, TINY_SIZE), Image.BILINEAR)
                out[i] = np.asarray(img)
        except (OSError, ValueError, SyntaxError) as exc:
            raise ValueError(f"cannot read image {path}: {one_line(exc, 120)}") from exc
    return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2)))


def read_tiny_annotations(path: Path, wnids: list[str]) -> list[tuple[str, int]]:
    """``val_annotations.txt``: (file name, class index) per line, in the file's order.

    Each non-empty line is tab-separated: file name, wnid, then the bounding box (ignored).
    A malformed line, an unknown wnid or a repeated file name raises ValueError naming the
    file and the line number."""
    index = {w: c for c, w in enumerate(wnids)}
    rows: list[tuple[str, int]] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        where = f"{path} line {number}"
        if len(parts) < 2 or not parts[0].strip() or not parts[1].strip():
            raise ValueError(f"{where}: expected 'file<TAB>wnid<TAB>bbox...', got {line[:80]!r}")
        name, wnid = parts[0].strip(), parts[1].strip()
        if wnid not in index:
            raise ValueError(f"{where}: wnid {wnid!r} is not in wnids.txt")
        if name in seen:
            raise ValueError(f"{where}: {name} is listed twice")
        seen.add(name)
        rows.append((name, index[wnid]))
    if not rows:
        raise ValueError(f"{path} lists no images")
    return rows


def _read_tinyimagenet(data_root: Path) -> RawDataset:
    """TinyImageNet's train split and its labelled validation set as the test split (see the
    module docstring); classes are the sorted wnids."""
    base = Path(data_root) / TINY_FOLDER
    source = SOURCES["tinyimagenet"]
    wnids = sorted({w.strip() for w in (base / "wnids.txt").read_text().splitlines()
                    if w.strip()})
    if not wnids:
        raise source.error(data_root, "wnids.txt lists no class ids", offer_download=False)
    train_paths: list[Path] = []
    train_labels: list[int] = []
    for c, wnid in enumerate(wnids):
        folder = base / "train" / wnid / "images"
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise source.error(data_root, f"missing train/{wnid}/images/*.JPEG (class {wnid} "
                               "of wnids.txt has no training images)", offer_download=False)
        train_paths += files
        train_labels += [c] * len(files)
    annotations = base / "val" / "val_annotations.txt"
    try:
        rows = read_tiny_annotations(annotations, wnids)
    except ValueError as exc:
        raise source.error(data_root, str(exc), offer_download=False) from None
    test_paths = [base / "val" / "images" / name for name, _ in rows]
    absent = [p for p in test_paths if not p.is_file()]
    if absent:
        raise source.error(data_root, f"{len(absent)} image(s) listed in val/val_annotations.txt "
                           f"are missing, e.g. {absent[0]}", offer_download=False)
    return RawDataset(
        "tinyimagenet", len(wnids), _read_rgb64(train_paths),
        torch.as_tensor(train_labels, dtype=torch.int64), _read_rgb64(test_paths),
        torch.as_tensor([c for _, c in rows], dtype=torch.int64), classes=tuple(wnids),
    )


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def check_idx(folder: Path, names: Sequence[str] = _MNIST_FILES) -> str | None:
    """The first of ``names`` under ``folder`` that is not a well-formed uint8 IDX file (a
    header of zeros, type 0x08, the number of dimensions and each size; then exactly as many
    bytes as the sizes give), said in a phrase; None when all are. Reads only the headers."""
    for name in names:
        path = Path(folder) / name
        try:
            with open(path, "rb") as f:
                head = f.read(4)
                ndim = head[3] if len(head) == 4 else 0
                dims = f.read(4 * ndim)
            size = path.stat().st_size
        except OSError as err:
            return f"{name} cannot be read ({err.strerror or err})"
        if len(head) < 4 or head[:3] != b"\x00\x00\x08" or ndim not in (1, 3):
            return f"{name} is not an uncompressed uint8 IDX file (its header is {head.hex()})"
        if len(dims) < 4 * ndim:
            return f"{name} is truncated ({size} bytes: less than its header)"
        want = 4 + 4 * ndim + math.prod(int.from_bytes(dims[i:i + 4], "big")
                                        for i in range(0, 4 * ndim, 4))
        if size != want:
            return f"{name} has {size} bytes where its header gives {want} (truncated or damaged)"
    return None


def _make_sources() -> dict[str, Source]:
    mnist_read, mnist_fetch = _mnist_like("MNIST", "mnist")
    fmnist_read, fmnist_fetch = _mnist_like("FashionMNIST", "fmnist")
    c10_read, c10_fetch = _cifar("CIFAR10", "cifar10", 10)
    c100_read, c100_fetch = _cifar("CIFAR100", "cifar100", 100)
    idx = ", ".join(_MNIST_FILES)
    sources = [
        Source(
            "mnist", "MNIST", "MNIST/raw", _MNIST_FILES,
            f"place the uncompressed IDX files ({idx}) in that folder", mnist_read, mnist_fetch, 10,
            check_idx,
        ),
        Source(
            "fmnist", "Fashion-MNIST", "FashionMNIST/raw", _MNIST_FILES,
            f"place the uncompressed Fashion-MNIST IDX files ({idx}) in that folder",
            fmnist_read, fmnist_fetch, 10, check_idx,
        ),
        Source(
            "cifar10", "CIFAR-10", "cifar-10-batches-py",
            tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
            "extract cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) into "
            "the data root so that this folder holds data_batch_1..5, test_batch, batches.meta",
            c10_read, c10_fetch, 10,
        ),
        Source(
            "cifar100", "CIFAR-100", "cifar-100-python", ("train", "test", "meta"),
            "extract cifar-100-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) into "
            "the data root so that this folder holds train, test, meta",
            c100_read, c100_fetch, 100,
        ),
        Source(
            "svhn", "SVHN", "svhn", ("train_32x32.mat", "test_32x32.mat"),
            "place train_32x32.mat and test_32x32.mat (http://ufldl.stanford.edu/housenumbers/) "
            "in that folder",
            _read_svhn, _fetch_svhn, 10,
        ),
        Source(
            "gtsrb", "GTSRB", "gtsrb",
            ("GTSRB/Training", "GTSRB/Final_Test/Images", "GT-final_test.csv"),
            "extract GTSRB-Training_fixed.zip, GTSRB_Final_Test_Images.zip and "
            "GTSRB_Final_Test_GT.zip (https://benchmark.ini.rub.de/) into that folder",
            _read_gtsrb, _fetch_gtsrb, 43,
        ),
        Source(
            "notmnist", "notMNIST", "notmnist", ("train", "test"),
            "notMNIST has no maintained download: put its images (letters A-J) in that folder "
            "as train/<letter>/*.png and test/<letter>/*.png",
            _folder_reader("notmnist", "L", pad_28=True),
        ),
        Source(
            "facescrub", "FaceScrub", "facescrub", ("train", "test"),
            "FaceScrub has no maintained download: put face crops in that folder as "
            "train/<person>/*.png|jpg and test/<person>/* (the paper used 100 people)",
            _folder_reader("facescrub", "RGB", pad_28=False),
        ),
        Source(
            "tinyimagenet", "TinyImageNet", TINY_FOLDER, TINY_REQUIRED,
            "no automatic download (not even with --download): get tiny-imagenet-200.zip "
            "(http://cs231n.stanford.edu/tiny-imagenet-200.zip) and unzip it into the data root "
            "so that this folder holds wnids.txt, train/<wnid>/images/ and val/images/ with "
            "val/val_annotations.txt",
            _read_tinyimagenet, None, 200,
        ),
    ]
    return {s.name: s for s in sources}


SOURCES: dict[str, Source] = _make_sources()


def load_source(name: str, data_root: Path) -> RawDataset:
    """Load one source dataset (both splits, uint8) from ``data_root``."""
    return SOURCES[name].load(Path(data_root))


#: the digits' train/test split is the same for every run seed (like MNIST's or CIFAR's fixed
#: test sets): no run's training or validation data, e.g. a tuning seed's, holds another seed's
#: test images
DIGITS_SPLIT_SEED = 0


def load_digits_split(test_fraction: float = 0.3,
                      split_seed: int = DIGITS_SPLIT_SEED) -> RawDataset:
    """scikit-learn's bundled digits (1797 real 8x8 images, values 0..16), fixed per-class split.

    For each class, a ``test_fraction`` share (rounded) of its images, drawn with
    ``rng_for(split_seed, "split")``, goes to the test split; both splits keep the original
    order. The split does not depend on the run's seed.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.uint8)).unsqueeze(1).contiguous()
    y = torch.from_numpy(digits.target.astype(np.int64))
    rng = rng_for(split_seed, "split")
    is_test = np.zeros(len(y), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(digits.target == c)
        is_test[rng.permutation(idx)[: round(test_fraction * len(idx))]] = True
    test = torch.from_numpy(is_test)
    return RawDataset("digits", 10, x[~test], y[~test], x[test], y[test], max_value=16)
