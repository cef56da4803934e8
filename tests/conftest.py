"""Shared fixtures: one tiny trained checkpoint per test session (training once keeps the suite fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwsearch.pipelines import BaselineConfig, train_baseline
from tests.ci import check_requirements


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hwsearch_requires(ok, reason): skip when not ok; fail under HWSEARCH_CI=1")


def pytest_runtest_setup(item: pytest.Item) -> None:
    check_requirements(item)  # before fixtures: one that reads missing data must not run


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The suite's checkpoint: trained here, or copied from ``$HWSEARCH_TEST_CHECKPOINT`` (one this fixture
    trained before), so a run under an emulated CPU, where training is slowest, can skip it."""
    import os
    import shutil

    path = tmp_path_factory.mktemp("ckpt") / "fp32.pt"
    given = os.environ.get("HWSEARCH_TEST_CHECKPOINT")
    if given:
        return Path(shutil.copyfile(given, path))
    return train_baseline(BaselineConfig(epochs=1), path).path


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """Tiny models gain nothing from a second thread, and lose badly when another process holds the core."""
    import torch

    torch.set_num_threads(1)
