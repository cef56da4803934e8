"""Cheap stand-ins injected into the env so its tests need no model, data or device."""

from __future__ import annotations

from dataclasses import dataclass

from hwsearch.envs import EvalResult
from torch import nn

from hwsearch.layers import LayerInfo
from hwsearch.policy import Policy


@dataclass(frozen=True)
class FakeCost:
    latency_ms: float
    energy_mj: float | None


class FakeCostModel:
    """Cost proportional to MACs x w x a, like an ideal bit-serial device."""

    name = "fake"

    def layer_cost(self, layer: LayerInfo, w_bits: int, a_bits: int) -> FakeCost:
        return FakeCost(layer.macs * w_bits * a_bits / 64e6, layer.macs * (w_bits + a_bits) / 16e9)

    def supported_bits(self) -> tuple[int, ...]:
        return tuple(range(1, 9))


class FakeEvaluator:
    """Accuracy rises with bits, with diminishing returns; counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    def evaluate(self, policy: Policy) -> EvalResult:
        self.calls += 1
        bits = [min(b.w, b.a) for b in policy.layers.values()]
        acc = sum(1 - 0.5**b for b in bits) / len(bits)
        return EvalResult(accuracy=acc, robust_accuracy=acc * 0.5, per_attack={"fake": acc * 0.5})


def layer(name: str, index: int, ic: int, oc: int, hw: int, kind: str = "conv") -> LayerInfo:
    k = 3 if kind == "conv" else 1
    return LayerInfo(
        name=name,
        kind=kind,
        index=index,
        in_channels=ic,
        out_channels=oc,
        kernel=(k, k),
        stride=(1, 1),
        padding=(k // 2, k // 2),
        groups=1,
        in_hw=(hw, hw),
        out_hw=(hw, hw),
        params=ic * oc * k * k,
        is_input_layer=index == 0,
    )


def fake_layers() -> list[LayerInfo]:
    return [
        layer("features.conv1", 0, 1, 16, 28),
        layer("features.conv2", 1, 16, 32, 14),
        layer("features.conv3", 2, 32, 64, 7),
        layer("classifier.fc1", 3, 64, 128, 1, "linear"),
        layer("classifier.fc2", 4, 128, 10, 1, "linear"),
    ]


def tiny_cnn(num_classes: int = 10) -> nn.Module:
    """A custom ``module:factory`` model (``tests.fakes:tiny_cnn``) for 1x28x28 inputs."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 13 * 13, num_classes))
