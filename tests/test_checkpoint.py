from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from hwsearch.checkpoint import SCHEMA, load_checkpoint, model_from_checkpoint, save_checkpoint
from hwsearch.errors import CheckpointError
from hwsearch.models import build_model
from hwsearch.runtime import set_seed

SHAPE = (1, 28, 28)
MEAN, STD = (0.13,), (0.31,)


def _save(path, model=None, name="smallcnn", classes=10, **overrides):
    if model is None:
        set_seed(0)
        model = build_model(name, classes, SHAPE, MEAN, STD)
    kwargs = dict(
        model_name=name,
        dataset="mnist5k",
        num_classes=classes,
        input_shape=SHAPE,
        mean=MEAN,
        std=STD,
        metrics={"test_acc": np.float32(0.97), "epochs": 3, "note": "x", "rob": None},
    )
    kwargs.update(overrides)
    return save_checkpoint(path, model, **kwargs), model


def _one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_round_trip(tmp_path):
    path, model = _save(tmp_path / "sub" / "m.pt")
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]  # no temp file left behind
    loaded, meta = model_from_checkpoint(path)
    assert not loaded.training
    assert "state_dict" not in meta
    assert meta["schema"] == SCHEMA and meta["model_name"] == "smallcnn" and meta["dataset"] == "mnist5k"
    assert meta["input_shape"] == list(SHAPE) and meta["num_classes"] == 10
    assert meta["metrics"] == {"test_acc": pytest.approx(0.97), "epochs": 3, "note": "x", "rob": None}
    assert type(meta["metrics"]["test_acc"]) is float
    x = torch.rand(3, *SHAPE)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.normalize.mean.flatten().tolist() == pytest.approx(list(MEAN))


def test_round_trip_keeps_batchnorm_buffers(tmp_path):
    set_seed(1)
    model = build_model("resnet20", 10, (3, 32, 32))
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 32, 32))  # moves running stats
    path = save_checkpoint(
        tmp_path / "r.pt", model, model_name="resnet20", dataset="cifar10", num_classes=10,
        input_shape=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3, metrics={},
    )  # fmt: skip
    loaded, _ = model_from_checkpoint(path)
    assert torch.equal(loaded.net.bn1.running_mean, model.net.bn1.running_mean)


def test_save_overwrites_atomically(tmp_path):
    path, _ = _save(tmp_path / "m.pt", metrics={"v": 1})
    _save(path, metrics={"v": 2})
    assert load_checkpoint(path)["metrics"] == {"v": 2}


def test_bad_metric_type(tmp_path):
    with pytest.raises(CheckpointError, match="metric 'x'"):
        _save(tmp_path / "m.pt", metrics={"x": [1, 2]})
    assert not (tmp_path / "m.pt").exists()


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as err:
        load_checkpoint(tmp_path / "nope.pt")
    _one_line(err)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint\n", bytes(range(256)) * 4])
def test_corrupt_files(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.pt") as err:
        load_checkpoint(path)
    _one_line(err)


def test_truncated_file(tmp_path):
    path, _ = _save(tmp_path / "m.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        model_from_checkpoint(path)
    _one_line(err)


class _Payload:
    """Unpickling this would create a file: the test checks the file never appears."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("writer", ["torch", "pickle2", "pickle5"])
def test_unsafe_pickle_is_refused_without_running(tmp_path, writer):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pt"
    obj = {"schema": SCHEMA, "model_name": "smallcnn", "state_dict": {"w": _Payload(marker)}}
    if writer == "torch":
        torch.save(obj, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(obj, fh, protocol=2 if writer == "pickle2" else 5)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    text = _one_line(err)
    if writer != "pickle5":  # protocol 5 is rejected before the global is even read
        assert "refused" in text and "open" in text
    assert not marker.exists()


def test_wrong_schema(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"schema": 99, "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="schema 99") as err:
        load_checkpoint(path)
    _one_line(err)


@pytest.mark.parametrize("obj", [[torch.zeros(1)], {"a": torch.zeros(1)}])
def test_not_an_hwsearch_checkpoint(tmp_path, obj):
    path = tmp_path / "m.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@pytest.mark.parametrize("field", ["model_name", "num_classes", "state_dict", "input_shape"])
def test_missing_field(tmp_path, field):
    path, _ = _save(tmp_path / "m.pt")
    ckpt = torch.load(path, weights_only=True)
    del ckpt[field]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=field) as err:
        load_checkpoint(path)
    _one_line(err)


def test_architecture_mismatch_names_the_keys(tmp_path):
    path, _ = _save(tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="does not fit model resnet20 .*missing .*unexpected") as err:
        model_from_checkpoint(path, model_name="resnet20")
    _one_line(err)


def test_shape_mismatch_names_the_tensor(tmp_path):
    path, _ = _save(tmp_path / "m.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["net.classifier.fc2.weight"] = torch.zeros(7, 128)
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"net.classifier.fc2.weight.*\(7, 128\)") as err:
        model_from_checkpoint(path)
    _one_line(err)


def test_unbuildable_model_name(tmp_path):
    path, _ = _save(tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="cannot rebuild"):
        model_from_checkpoint(path, model_name="vgg99")


def test_custom_factory_name_in_file_is_not_imported_implicitly(tmp_path):
    path, _ = _save(tmp_path / "m.pt", model_name="os:getcwd")
    with pytest.raises(CheckpointError, match="pass model_name"):
        model_from_checkpoint(path)
    loaded, meta = model_from_checkpoint(path, model_name="smallcnn")  # the caller decides what to build
    assert meta["model_name"] == "os:getcwd"
