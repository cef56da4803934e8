"""Shared fixtures: one tiny trained checkpoint per test session (training once keeps the suite fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwsearch.pipelines import BaselineConfig, train_baseline


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "fp32.pt"
    return train_baseline(BaselineConfig(epochs=1), path).path


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """Tiny models gain nothing from a second thread, and lose badly when another process holds the core."""
    import torch

    torch.set_num_threads(1)
