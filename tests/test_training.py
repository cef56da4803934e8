from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from hwsearch.data import LabeledTensorDataset, load_dataset, tensors
from hwsearch.errors import ConfigError
from hwsearch.models import build_model
from hwsearch.runtime import set_seed
from hwsearch.training import TrainConfig, accuracy, train


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core box they lose up to 20x to
    oversubscription (measured: one mnist5k epoch 4 s on one thread vs 84 s on two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _digits_subset(n=400):
    s = load_dataset("digits")
    x, y = tensors(s.train, limit=n)
    return s, LabeledTensorDataset(x, y)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epochs": -1},
        {"epochs": 1.5},
        {"lr": 0},
        {"lr": float("nan")},
        {"batch_size": 0},
        {"batch_size": True},
        {"weight_decay": -1e-4},
        {"seed": -1},
        {"device": "toaster"},
    ],
)
def test_train_config_validation(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        TrainConfig(**kwargs)


def test_train_config_is_frozen():
    with pytest.raises(AttributeError):
        TrainConfig().epochs = 3  # type: ignore[misc]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_config_error():
    config = TrainConfig(device="cuda")  # valid as a setting ...
    with pytest.raises(ConfigError, match="CUDA is not available"):  # ... unusable here
        train(nn.Linear(2, 2), LabeledTensorDataset(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long)), config)


def test_smallcnn_learns_mnist5k_in_a_tiny_run():
    s = load_dataset()
    set_seed(0)
    model = build_model("smallcnn", s.num_classes, s.input_shape, s.mean, s.std)
    history = train(model, s.train, TrainConfig(epochs=1, lr=2e-3, batch_size=32))
    assert len(history) == 1 and set(history[0]) == {"epoch", "loss", "train_acc"}
    assert accuracy(model, s.test) > 0.90


def test_loss_falls_epoch_by_epoch_and_on_epoch_reports():
    s, data = _digits_subset()
    set_seed(0)
    model = build_model("smallcnn", 10, s.input_shape, s.mean, s.std)
    seen = []
    history = train(model, data, TrainConfig(epochs=3, batch_size=50), on_epoch=lambda e, r: seen.append((e, r)))
    assert [r["epoch"] for r in history] == [1, 2, 3] == [e for e, _ in seen]
    assert [r for _, r in seen] == history
    losses = [r["loss"] for r in history]
    assert losses[0] > losses[1] > losses[2]
    assert all(0.0 <= r["train_acc"] <= 1.0 for r in history)


def test_training_is_deterministic_under_seed():
    s, data = _digits_subset()

    def run(seed):
        set_seed(123)  # same init; only the training seed varies
        model = build_model("smallcnn", 10, s.input_shape, s.mean, s.std)
        hist = train(model, data, TrainConfig(epochs=1, batch_size=50, seed=seed))
        return hist, model.state_dict()

    h1, w1 = run(0)
    h2, w2 = run(0)
    h3, w3 = run(1)
    assert h1 == h2
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert not all(torch.equal(w1[k], w3[k]) for k in w1)


def test_regularizer_enters_the_objective():
    s, data = _digits_subset(200)

    def run(regularizer):
        set_seed(0)
        model = build_model("smallcnn", 10, s.input_shape, s.mean, s.std)
        history = train(model, data, TrainConfig(epochs=2, batch_size=50), regularizer=regularizer)
        return history, float(model.net.classifier.fc2.weight.detach().norm())

    plain, plain_norm = run(None)
    reg, reg_norm = run(lambda m: 10.0 * m.net.classifier.fc2.weight.pow(2).sum())
    assert "reg" not in plain[0] and {"epoch", "loss", "train_acc", "reg"} <= set(reg[0])
    assert reg[0]["loss"] > reg[0]["reg"] > 0
    assert reg[0]["loss"] > plain[0]["loss"]
    assert reg_norm < plain_norm  # the penalty shrinks what it penalises


def test_frozen_parameters_stay_put():
    s, data = _digits_subset(200)
    set_seed(0)
    model = build_model("smallcnn", 10, s.input_shape, s.mean, s.std)
    conv1 = model.net.features.conv1
    conv1.weight.requires_grad_(False)
    frozen = conv1.weight.detach().clone()
    train(model, data, TrainConfig(epochs=1, batch_size=50))
    assert torch.equal(conv1.weight, frozen)


def test_model_without_trainable_parameters():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable"):
        train(model, LabeledTensorDataset(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long)), TrainConfig())


def test_zero_epochs_is_a_no_op():
    model = nn.Linear(2, 2)
    before = model.weight.detach().clone()
    assert (
        train(model, LabeledTensorDataset(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long)), TrainConfig(epochs=0))
        == []
    )
    assert torch.equal(model.weight, before)


class _Plain(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


class _FirstFeature(nn.Module):
    """Predicts class 1 when the first feature is positive: accuracy is known exactly."""

    def forward(self, x):
        v = x.flatten(1)[:, :1]
        return torch.cat([-v, v], dim=1)


def test_accuracy_on_every_input_kind():
    x = torch.tensor([[1.0], [-1.0], [2.0], [-3.0], [0.5]])
    y = torch.tensor([1, 0, 0, 0, 1])  # third one is wrong: 4/5
    model = _FirstFeature()
    assert accuracy(model, (x, y)) == pytest.approx(0.8)
    assert accuracy(model, LabeledTensorDataset(x, y), batch_size=2) == pytest.approx(0.8)
    assert accuracy(model, _Plain(x, y), batch_size=2) == pytest.approx(0.8)


def test_accuracy_restores_each_modules_mode():
    model = build_model("resnet20", 10, (3, 8, 8))
    model.train()
    model.net.bn1.eval()  # e.g. frozen batch norm during fine-tuning
    x, y = torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)
    stats = model.net.bn1.running_mean.clone()
    acc = accuracy(model, (x, y))
    assert 0.0 <= acc <= 1.0
    assert model.training and model.net.layer1.training and not model.net.bn1.training
    assert torch.equal(model.net.bn1.running_mean, stats)  # evaluated in eval mode
    model(x).sum().backward()  # parameters are still ordinary trainable tensors


def test_accuracy_rejects_bad_batch_size():
    with pytest.raises(ConfigError):
        accuracy(_FirstFeature(), (torch.zeros(1, 1), torch.zeros(1, dtype=torch.long)), batch_size=0)


def test_set_seed_covers_python_numpy_torch():
    set_seed(7)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_seed(7)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
