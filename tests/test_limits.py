"""Resource limits: evaluation adapts its batch to out-of-memory, and oversized cost tables are refused up front."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import hwsearch.budget
from hwsearch.budget import check_table_size
from hwsearch.errors import ConfigError, HwsearchError
from hwsearch.evaluate import clean_accuracy
from tests.fakes import FakeCostModel, FakeEvaluator, fake_layers, layer


class _OomAbove(nn.Module):
    """A linear classifier whose forward raises an out-of-memory error for batches above ``limit``."""

    def __init__(
        self, limit: int, error: type[BaseException] | None = None, message: str = "CUDA out of memory"
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)
        self.limit = limit
        self.error = error or torch.cuda.OutOfMemoryError
        self.message = message
        self.batches: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.batches.append(len(x))
        if len(x) > self.limit:
            raise self.error(f"{self.message}. Tried to allocate 2.00 GiB")
        return self.fc(x)


def _data(n: int = 100) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (None, "CUDA out of memory"),
        (RuntimeError, "CUDA out of memory"),
        (RuntimeError, "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
    ],
    ids=["cuda-oom-error", "runtime-error-oom", "cpu-allocator"],
)
def test_clean_accuracy_halves_the_batch_on_oom(error: type[BaseException] | None, message: str) -> None:
    x, y = _data()
    model = _OomAbove(limit=16, error=error, message=message)
    want = clean_accuracy(_OomAbove(limit=10**9), x, y, batch_size=1000)
    assert clean_accuracy(model, x, y, batch_size=100) == want
    fitting = [b for b in model.batches if b <= 16]
    assert max(fitting) == 12 and sum(fitting) == len(x)  # 100 -> 50 -> 25 -> 12, then every image exactly once


def test_clean_accuracy_fails_in_one_line_when_one_image_does_not_fit() -> None:
    x, y = _data(8)
    model = _OomAbove(limit=0)
    with pytest.raises(HwsearchError, match="out of memory evaluating one image") as info:
        clean_accuracy(model, x, y, batch_size=8)
    assert "\n" not in str(info.value)
    assert model.batches == [8, 4, 2, 1]


def test_clean_accuracy_keeps_other_runtime_errors() -> None:
    x, y = _data(8)
    with pytest.raises(RuntimeError, match="shape"):
        clean_accuracy(_OomAbove(limit=0, error=RuntimeError, message="bad shape"), x, y)


def test_clean_accuracy_restores_training_mode_after_oom() -> None:
    x, y = _data(8)
    model = _OomAbove(limit=0)
    model.train()
    with pytest.raises(HwsearchError):
        clean_accuracy(model, x, y)
    assert model.training


# ------------------------------------------------------------------------------------- table size
def test_table_size_within_limit_returns_the_count() -> None:
    assert check_table_size(54, 8, 8) == 54 * 64


def test_table_size_above_limit_is_one_line_with_the_estimate() -> None:
    with pytest.raises(ConfigError) as info:
        check_table_size(40_000, 8, 8)
    text = str(info.value)
    assert "\n" not in text
    assert "40000 layers x 8 weight x 8 activation widths = 2,560,000 entries" in text
    assert "MiB" in text and "--min-bits" in text


def test_table_size_limit_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hwsearch.budget, "MAX_TABLE_ENTRIES", 100)
    with pytest.raises(ConfigError, match="above the limit of 100"):
        check_table_size(5, 8, 8)
    assert check_table_size(5, 4, 4) == 80


class _CountingCostModel(FakeCostModel):
    def __init__(self) -> None:
        self.calls = 0

    def layer_cost(self, layer, w_bits, a_bits):  # type: ignore[no-untyped-def]
        self.calls += 1
        return super().layer_cost(layer, w_bits, a_bits)


def test_env_refuses_an_oversized_model_before_pricing(monkeypatch: pytest.MonkeyPatch) -> None:
    from hwsearch.envs import MixedPrecisionEnv

    monkeypatch.setattr(hwsearch.budget, "MAX_TABLE_ENTRIES", 100)
    cost = _CountingCostModel()
    with pytest.raises(ConfigError, match="5 layers x 7 weight x 7 activation widths = 245 entries"):
        MixedPrecisionEnv(fake_layers(), FakeEvaluator(), cost)
    assert cost.calls == 0


def test_table_build_refuses_an_oversized_model_before_pricing(monkeypatch: pytest.MonkeyPatch) -> None:
    from hwsearch.hardware import build_table

    monkeypatch.setattr(hwsearch.budget, "MAX_TABLE_ENTRIES", 100)
    cost = _CountingCostModel()
    layers = [layer(f"conv{i}", i, 8, 8 + i, 8) for i in range(3)]
    with pytest.raises(ConfigError, match="3 layers x 8 weight x 8 activation widths = 192 entries"):
        build_table(cost, layers, batch=1)
    assert cost.calls == 0
