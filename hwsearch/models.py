"""Model zoo. Every model takes images in [0, 1] and normalises them itself, so attacks work in input units.

Every model ``build_model`` returns is a :class:`NormalizedModel`: ``.normalize`` (a :class:`Normalize`)
followed by ``.net`` (the architecture), so every quantizable layer's qualified name starts with ``net.``:

- ``smallcnn``: ``net.features.conv1``, ``net.features.conv2``, ``net.features.conv3``, ``net.classifier.fc1``,
  ``net.classifier.fc2``. Every quantizable layer but the first follows a ReLU (unsigned activations).
- ``resnet20`` (He et al. 2016, CIFAR variant; parameter-free zero-padding shortcuts, option A, so every
  quantizable layer is a 3x3 conv or the classifier): ``net.conv1``, ``net.layer{1,2,3}.{0,1,2}.conv{1,2}``,
  ``net.fc``.
- ``resnet18``, ``resnet50``, ``mobilenet_v2``: torchvision's architectures (``weights=None``, nothing is
  downloaded), names as torchvision's under ``net.`` (``net.conv1``, ``net.layer1.0.conv1``, ``net.fc``;
  ``net.features.0.0``, ``net.classifier.1``). The first conv takes the dataset's channels. For inputs smaller
  than 64 px the stem is the usual small-image one: ResNets get a 3x3 stride-1 first conv and no max-pool,
  MobileNetV2 a stride-1 first conv; otherwise the stem is unchanged.
- ``module:factory``: ``importlib.import_module(module).factory(num_classes=...)`` (or ``factory()`` when it
  takes no ``num_classes``), wrapped the same way; its names are its own under ``net.``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hwsearch.errors import ModelError
from hwsearch.layers import LayerInfo, discover_layers
from hwsearch.runtime import to_device

__all__ = ["Normalize", "NormalizedModel", "SmallCNN", "ResNet20", "build_model", "model_layers", "list_models"]

_SMALL_INPUT = 64


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with buffers so it follows ``.to(device)`` and lands in checkpoints."""

    mean: Tensor  # buffers, declared for the type checker
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(tuple(float(m) for m in mean), dtype=torch.float32)
        std_t = torch.as_tensor(tuple(float(s) for s in std), dtype=torch.float32)
        if mean_t.ndim != 1 or mean_t.numel() == 0 or mean_t.shape != std_t.shape:
            raise ModelError(f"mean and std need the same non-zero length, got {tuple(mean)} / {tuple(std)}")
        if bool((std_t <= 0).any()):
            raise ModelError(f"std must be positive, got {tuple(std)}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class NormalizedModel(nn.Module):
    """``net(normalize(x))``: the zoo's one wrapper, so inputs stay in [0, 1] everywhere outside the model."""

    def __init__(self, normalize: Normalize, net: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))


class SmallCNN(nn.Module):
    """Three 3x3 convs and two linears (5 quantizable layers); the default: 95.5-96.7% on mnist5k test
    after 5 epochs with TrainConfig defaults (val ~97%).

    Shaped for bit widths to matter on an accelerator: the first conv (one input channel, which no array can
    parallelise) has stride 2 so it is a small share of the cost, and the wider later layers dominate it.
    The last pool is adaptive (to 3x3), so any input size works and the classifier shape is size-independent.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv1", nn.Conv2d(in_channels, 32, 3, stride=2, padding=1))
        self.features.add_module("relu1", nn.ReLU())
        self.features.add_module("conv2", nn.Conv2d(32, 64, 3, padding=1))
        self.features.add_module("relu2", nn.ReLU())
        self.features.add_module("pool2", nn.MaxPool2d(2, ceil_mode=True))
        self.features.add_module("conv3", nn.Conv2d(64, 128, 3, padding=1))
        self.features.add_module("relu3", nn.ReLU())
        self.features.add_module("pool3", nn.AdaptiveMaxPool2d(3))
        self.classifier = nn.Sequential()
        self.classifier.add_module("flatten", nn.Flatten())
        self.classifier.add_module("fc1", nn.Linear(128 * 3 * 3, 256))
        self.classifier.add_module("relu4", nn.ReLU())
        self.classifier.add_module("fc2", nn.Linear(256, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class _PadShortcut(nn.Module):
    """ResNet option-A shortcut: subsample by ``stride`` and zero-pad the new channels (no parameters)."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = extra_channels

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        lo = self.extra // 2
        return nn.functional.pad(x, (0, 0, 0, 0, lo, self.extra - lo))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = _PadShortcut(stride, planes - in_planes)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20: 3 stages of 3 basic blocks at 16/32/64 channels, global average pool, linear."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, blocks: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        layers = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            stage = []
            for i in range(blocks):
                stage.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def _small(input_shape: tuple[int, int, int]) -> bool:
    return min(input_shape[1], input_shape[2]) < _SMALL_INPUT


def _torchvision_resnet(depth: int, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    from torchvision import models

    factory = models.resnet18 if depth == 18 else models.resnet50
    net = factory(weights=None, num_classes=num_classes)
    if _small(input_shape):
        net.conv1 = nn.Conv2d(input_shape[0], 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif input_shape[0] != 3:
        net.conv1 = nn.Conv2d(input_shape[0], 64, 7, stride=2, padding=3, bias=False)
    return net


def _mobilenet_v2(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    from torchvision import models

    net = models.mobilenet_v2(weights=None, num_classes=num_classes)
    first: nn.Conv2d = net.features[0][0]
    stride = 1 if _small(input_shape) else 2
    if input_shape[0] != 3 or stride != 2:
        net.features[0][0] = nn.Conv2d(input_shape[0], first.out_channels, 3, stride=stride, padding=1, bias=False)
        nn.init.kaiming_normal_(net.features[0][0].weight, mode="fan_out")
    return net


_ZOO: dict[str, Callable[[int, tuple[int, int, int]], nn.Module]] = {
    "smallcnn": lambda n, s: SmallCNN(s[0], n),
    "resnet20": lambda n, s: ResNet20(s[0], n),
    "resnet18": lambda n, s: _torchvision_resnet(18, n, s),
    "resnet50": lambda n, s: _torchvision_resnet(50, n, s),
    "mobilenet_v2": _mobilenet_v2,
}


def list_models() -> list[str]:
    """Zoo names ``build_model`` accepts (besides ``module:factory`` strings)."""
    return sorted(_ZOO)


def _from_factory(spec: str, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelError(f"model {spec!r}: a custom model is written module:factory")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure of the user's module is a user error
        raise ModelError(f"model {spec!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    factory: Any = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ModelError(f"model {spec!r}: {module_name!r} has no attribute {attr!r}")
    if not callable(factory):
        raise ModelError(f"model {spec!r}: {attr!r} is not callable")
    try:
        params = inspect.signature(factory).parameters
        takes = "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        takes = False
    try:
        net = factory(num_classes=num_classes) if takes else factory()
    except Exception as exc:
        raise ModelError(f"model {spec!r}: the factory failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(net, nn.Module):
        raise ModelError(f"model {spec!r}: the factory returned {type(net).__name__}, not an nn.Module")
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(2, *input_shape))
    except Exception as exc:
        raise ModelError(
            f"model {spec!r} does not run on inputs of shape {tuple(input_shape)}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        net.train(was_training)
    if not isinstance(out, Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ModelError(f"model {spec!r} returns {shape} for a batch of 2, expected logits (2, {num_classes})")
    return net


def build_model(
    name: str,
    num_classes: int,
    input_shape: tuple[int, int, int],
    mean: Sequence[float] = (0.5,),
    std: Sequence[float] = (0.5,),
) -> NormalizedModel:
    """A freshly initialised ``name`` for ``num_classes`` and ``input_shape`` (C, H, W), inputs in [0, 1].

    ``mean``/``std`` are per channel (one value is broadcast to every channel). Initialisation uses torch's
    global RNG, so call ``runtime.set_seed`` first for a reproducible model. Built on the CPU, in the layout
    that runs fastest there (:func:`hwsearch.runtime.to_device`).
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive int, got {num_classes!r}")
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or any(d <= 0 for d in shape):
        raise ModelError(f"input_shape must be positive (C, H, W), got {tuple(input_shape)!r}")
    channels = shape[0]
    mean, std = tuple(mean), tuple(std)
    if len(mean) == 1:
        mean = mean * channels
    if len(std) == 1:
        std = std * channels
    if len(mean) != channels or len(std) != channels:
        raise ModelError(f"mean/std need 1 or {channels} values, got {mean!r} / {std!r}")
    normalize = Normalize(mean, std)
    if ":" in name:
        net = _from_factory(name, num_classes, shape)
    else:
        key = name.lower()
        if key not in _ZOO:
            raise ModelError(f"unknown model {name!r}; known: {', '.join(list_models())}, or module:factory")
        net = _ZOO[key](num_classes, shape)
    return to_device(NormalizedModel(normalize, net), "cpu")


def model_layers(
    name: str, num_classes: int, input_shape: tuple[int, int, int]
) -> tuple[NormalizedModel, list[LayerInfo]]:
    """Build a zoo model (or ``module:factory``) with random weights and list its quantizable layers."""
    net = build_model(name, num_classes=num_classes, input_shape=input_shape)
    return net, discover_layers(net, input_shape)
