"""Train and fine-tune loops (also quantization-aware fine-tuning: quantizers are ordinary modules here)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from hwsearch.checks import check_int, check_number
from hwsearch.data import _tensor_source, make_loader, tensors
from hwsearch.errors import ConfigError
from hwsearch.evaluate import count_correct
from hwsearch.runtime import check_compute_device, resolve_compute_device, set_seed, to_device

__all__ = ["TrainConfig", "train", "accuracy"]


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one (fine-)training run; Adam with cross-entropy."""

    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_int(self.epochs, "epochs", 0)
        check_number(self.lr, "lr", positive=True)
        check_int(self.batch_size, "batch_size", 1)
        check_number(self.weight_decay, "weight_decay", 0)
        check_int(self.seed, "seed", 0)
        check_compute_device(self.device)


def train(
    model: nn.Module,
    train_set: Dataset,
    config: TrainConfig,
    *,
    regularizer: Callable[[nn.Module], Tensor] | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> list[dict]:
    """Train ``model`` in place (moved to ``config.device``); one record per epoch.

    Records are ``{"epoch": 1.., "loss": mean objective, "train_acc": running top-1}`` (plus ``"reg"``, the
    mean regulariser value, when a regulariser is given). The objective is cross-entropy plus
    ``regularizer(model)``. Only parameters with ``requires_grad`` are optimised, so frozen parts stay put.
    Shuffling and any randomness in the model are seeded by ``config.seed`` (the global RNGs are reseeded
    with it): same seed and same initial weights, same trained weights on CPU.
    ``on_epoch(epoch, record)`` is where callers report progress (the library never prints).
    """
    device = resolve_compute_device(config.device)
    set_seed(config.seed)
    to_device(model, device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    loader = make_loader(train_set, config.batch_size, shuffle=True, seed=config.seed)
    history: list[dict] = []
    model.train()
    for epoch in range(1, config.epochs + 1):
        total_loss = total_reg = 0.0
        correct = seen = 0
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            y = torch.as_tensor(y).to(device, non_blocking=True)
            logits = model(x)
            loss = loss_fn(logits, y)
            if regularizer is not None:
                reg = regularizer(model)
                loss = loss + reg
                total_reg += float(reg.detach()) * len(y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
        if seen == 0:
            raise ConfigError("the training set is empty")
        record = {"epoch": epoch, "loss": total_loss / seen, "train_acc": correct / seen}
        if regularizer is not None:
            record["reg"] = total_reg / seen
        if not math.isfinite(record["loss"]):
            raise ConfigError(f"training diverged at epoch {epoch} (loss {record['loss']}); lower lr")
        history.append(record)
        if on_epoch is not None:
            on_epoch(epoch, record)
    return history


def accuracy(
    model: nn.Module,
    dataset_or_tensors: Dataset | tuple[Tensor, Tensor],
    *,
    device: str = "cpu",
    batch_size: int = 500,
) -> float:
    """Top-1 accuracy in [0, 1], in eval mode; every module's train/eval flag is restored afterwards.

    The model is moved to ``device`` (outside inference mode, so its parameters stay trainable).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
    dev = resolve_compute_device(device)
    to_device(model, dev)
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return _accuracy(model, dataset_or_tensors, dev, batch_size)
    finally:
        for m, flag in flags:
            m.training = flag


def _accuracy(model: nn.Module, data: Dataset | tuple[Tensor, Tensor], device: torch.device, batch_size: int) -> float:
    if isinstance(data, tuple) or _tensor_source(data) is not None:
        x_all, y_all = tensors(data)
        batches = iter([(x_all, y_all)])  # count_correct batches it
    else:
        batches = iter(make_loader(data, batch_size, shuffle=False, seed=0))
    correct = seen = 0
    for x, y in batches:
        y = torch.as_tensor(y)
        correct += count_correct(model, x, y, batch_size, device=device)
        seen += len(y)
    if seen == 0:
        raise ConfigError("cannot measure accuracy on an empty dataset")
    return correct / seen
