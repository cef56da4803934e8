from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, Subset

from hwsearch.data import (
    DataSplits,
    LabeledTensorDataset,
    list_datasets,
    load_dataset,
    make_loader,
    stratified_split,
    tensors,
)
from hwsearch.errors import DatasetError, HwsearchError


def _rows(dataset) -> set[bytes]:
    x, _ = tensors(dataset)
    return {r.numpy().tobytes() for r in x}


def test_list_datasets_names_every_loader():
    assert {"mnist5k", "digits", "cifar10", "cifar100", "svhn", "imagefolder"} <= set(list_datasets())


def test_mnist5k_split_sizes_and_stratification():
    s = load_dataset()
    assert s.name == "mnist5k"
    assert (len(s.train), len(s.val), len(s.test)) == (3000, 1000, 1000)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10
    for part, per_class in ((s.train, 300), (s.val, 100), (s.test, 100)):
        _, y = tensors(part)
        assert torch.bincount(y, minlength=10).tolist() == [per_class] * 10


def test_mnist5k_splits_are_disjoint_and_cover_all_images():
    s = load_dataset("mnist5k")
    train, val, test = _rows(s.train), _rows(s.val), _rows(s.test)
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train | val | test) == 5000  # the 5,000 digits are distinct images


def test_mnist5k_items_are_images_in_unit_range_with_int_labels():
    s = load_dataset()
    x, y = s.train[0]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28)
    assert isinstance(y, int) and 0 <= y < 10
    xs, ys = tensors(s.test)
    assert float(xs.min()) == 0.0 and float(xs.max()) == 1.0
    assert ys.dtype == torch.int64


def test_split_does_not_depend_on_global_seed():
    torch.manual_seed(1)
    np.random.seed(1)
    a = load_dataset()
    torch.manual_seed(2)
    np.random.seed(2)
    b = load_dataset()
    for pa, pb in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        xa, ya = tensors(pa)
        xb, yb = tensors(pb)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_loading_is_fast_and_returns_fresh_tensors():
    load_dataset()
    start = time.perf_counter()
    s = load_dataset()
    assert time.perf_counter() - start < 1.0
    s.train.tensors[0].zero_()  # a caller mutating its copy must not poison the cache
    assert float(tensors(load_dataset().train)[0].max()) == 1.0


def test_mean_std_are_the_training_split_statistics():
    s = load_dataset()
    x, _ = tensors(s.train)
    assert s.mean[0] == pytest.approx(float(x.mean()), abs=1e-5)
    assert s.std[0] == pytest.approx(float(x.std()), abs=1e-5)


def test_digits():
    s = load_dataset("digits")
    assert s.input_shape == (1, 8, 8) and s.num_classes == 10
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    assert len(s.val) == pytest.approx(0.2 * 1797, abs=10)
    x, _ = tensors(s.train)
    assert float(x.min()) >= 0.0 and float(x.max()) == 1.0


@pytest.mark.parametrize("name, size", [("mnist5k", 32), ("digits", 16)])
def test_image_size_resizes_embedded_sets(name, size):
    s = load_dataset(name, image_size=size)
    assert s.input_shape == (1, size, size)
    x, _ = tensors(s.val, limit=4)
    assert x.shape == (4, 1, size, size) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(DatasetError, match="known: .*mnist5k"):
        load_dataset("imagenet22k")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "imagefolder"])
def test_folder_datasets_need_a_root(name, tmp_path):
    with pytest.raises(DatasetError, match="root") as err:
        load_dataset(name)
    assert "\n" not in str(err.value)
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="nowhere") as err:
        load_dataset(name, root=missing)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name, hint", [("cifar10", "cifar-10-batches-py"), ("svhn", "train_32x32.mat")])
def test_torchvision_sets_with_empty_folder_say_what_to_put_there(name, hint, tmp_path):
    with pytest.raises(HwsearchError, match=hint) as err:
        load_dataset(name, root=tmp_path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def _write_images(folder, classes=("cat", "dog"), per_class=5, size=(6, 6)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(folder / c / f"{i}.png")


def test_imagefolder_single_tree_is_split_deterministically(tmp_path):
    _write_images(tmp_path, per_class=10)
    s = load_dataset("imagefolder", root=tmp_path)
    assert s.input_shape == (3, 6, 6) and s.num_classes == 2 and s.classes == ("cat", "dog")
    assert (len(s.train), len(s.val), len(s.test)) == (12, 4, 4)
    assert isinstance(s.train, Subset)
    parts = [set(p.indices) for p in (s.train, s.val, s.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    again = load_dataset("imagefolder", root=tmp_path)
    assert list(again.val.indices) == list(s.val.indices)
    x, y = s.train[0]
    assert x.shape == (3, 6, 6) and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0 and y in (0, 1)
    assert len(s.mean) == 3 and all(v > 0 for v in s.std)


def test_imagefolder_train_val_layout(tmp_path):
    _write_images(tmp_path / "train", per_class=10)
    _write_images(tmp_path / "val", per_class=3)
    s = load_dataset("imagefolder", root=tmp_path)
    assert len(s.test) == 6  # val/ is the held-out test set
    assert len(s.train) + len(s.val) == 20 and len(s.val) == 2  # search-val carved from train/


def test_imagefolder_inconsistent_sizes_need_image_size(tmp_path):
    _write_images(tmp_path, classes=("a",), size=(6, 6))
    _write_images(tmp_path, classes=("b",), size=(7, 5))
    with pytest.raises(DatasetError, match="image_size"):
        load_dataset("imagefolder", root=tmp_path)
    s = load_dataset("imagefolder", root=tmp_path, image_size=4)
    assert s.input_shape == (3, 4, 4) and s.train[0][0].shape == (3, 4, 4)


def test_imagefolder_empty_folder_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path)):
        load_dataset("imagefolder", root=tmp_path)
    (tmp_path / "onlyclass").mkdir()
    with pytest.raises(DatasetError):
        load_dataset("imagefolder", root=tmp_path)


def test_imagefolder_class_mismatch_between_train_and_val(tmp_path):
    _write_images(tmp_path / "train", classes=("a", "b"))
    _write_images(tmp_path / "val", classes=("a", "c"))
    with pytest.raises(DatasetError, match="class folders differ"):
        load_dataset("imagefolder", root=tmp_path)


@pytest.mark.parametrize("fractions", [(0.6, 0.2, 0.2), (0.9, 0.1), (0.5, 0.5)])
def test_stratified_split_partitions_every_index(fractions):
    labels = np.repeat(np.arange(7), [3, 10, 11, 50, 1, 2, 23])
    parts = stratified_split(labels, fractions)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(labels)))
    for p, f in zip(parts[1:], fractions[1:], strict=True):
        for cls in np.unique(labels):
            assert (labels[p] == cls).sum() == round((labels == cls).sum() * f)
    assert all(np.array_equal(a, b) for a, b in zip(parts, stratified_split(labels, fractions), strict=True))


def test_stratified_split_rejects_bad_fractions():
    with pytest.raises(DatasetError):
        stratified_split([0, 1], (0.5, 0.6))


class _Plain(Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return torch.full((1, 2, 2), float(i) / 10), i % 2


def test_tensors_variants():
    base = LabeledTensorDataset(torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10))
    x, y = tensors(base, limit=3)
    assert x.flatten().tolist() == [0, 1, 2] and y.tolist() == [0, 1, 2]
    x, y = tensors(Subset(base, [7, 2, 5]), limit=2)
    assert y.tolist() == [7, 2]
    x, y = tensors(Subset(Subset(base, [9, 8, 7, 6]), [1, 3]))
    assert y.tolist() == [8, 6]
    x, y = tensors(_Plain())
    assert x.shape == (5, 1, 2, 2) and y.tolist() == [0, 1, 0, 1, 0]
    x, y = tensors((torch.zeros(4, 1, 2, 2), torch.ones(4)), limit=2)
    assert x.shape[0] == 2 and y.dtype == torch.int64


def test_make_loader_is_seeded():
    ds = LabeledTensorDataset(torch.zeros(50, 1, 1, 1), torch.arange(50))

    def order(seed):
        return torch.cat([y for _, y in make_loader(ds, 8, shuffle=True, seed=seed)]).tolist()

    torch.manual_seed(0)
    first = order(3)
    torch.manual_seed(99)  # global state must not matter
    assert order(3) == first
    assert order(4) != first
    assert sorted(first) == list(range(50))
    assert torch.cat([y for _, y in make_loader(ds, 8, shuffle=False, seed=0)]).tolist() == list(range(50))
    with pytest.raises(DatasetError):
        make_loader(ds, 0, shuffle=False, seed=0)


def test_datasplits_validates():
    ds = LabeledTensorDataset(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(DatasetError, match="mean/std"):
        DataSplits("x", ds, ds, ds, (1, 2, 2), 2, (0.5, 0.5), (0.5,))
    with pytest.raises(DatasetError, match="num_classes"):
        DataSplits("x", ds, ds, ds, (1, 2, 2), 1, (0.5,), (0.5,))


@pytest.mark.parametrize("part", ["train", "val", "test"])
def test_a_splits_first_items_hold_every_class(part: str) -> None:
    """Calibration reads a split's first 512 images and `--images N` its first N: a class-sorted split (the
    embedded digits arrive sorted) would calibrate on zeros and ones only."""
    _, y = tensors(getattr(load_dataset(), part), limit=200)
    assert set(y.tolist()) == set(range(10))
