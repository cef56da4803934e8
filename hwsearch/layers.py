"""Discover a model's quantizable layers and their static shapes, traced once with forward hooks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LayerInfo", "QUANTIZABLE", "discover_layers"]

QUANTIZABLE: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerInfo:
    """Static description of one quantizable layer, enough for cost models and env observations.

    Linear layers are described as 1x1 convolutions on a 1x1 input, which is how accelerators run them.
    """

    name: str
    kind: str  # "conv" or "linear"
    index: int
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    params: int
    is_input_layer: bool

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels

    @property
    def macs(self) -> int:
        """Multiply-accumulates for one image."""
        kh, kw = self.kernel
        oh, ow = self.out_hw
        return oh * ow * self.out_channels * (self.in_channels // self.groups) * kh * kw

    def signature(self, batch: int = 1) -> str:
        """Key of this layer's shape in cost tables; two layers with the same signature cost the same."""
        kh, kw = self.kernel
        sh, sw = self.stride
        ph, pw = self.padding
        h, w = self.in_hw
        first = "-first" if self.is_input_layer else ""
        return (
            f"{self.kind}-ic{self.in_channels}-oc{self.out_channels}-in{h}x{w}-k{kh}x{kw}"
            f"-s{sh}x{sw}-p{ph}x{pw}-g{self.groups}-b{batch}{first}"
        )


def _pair(v: int | tuple[int, ...] | str) -> tuple[int, int]:
    if isinstance(v, str):  # padding="same"/"valid" is resolved from traced shapes by the caller
        return (0, 0)
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def discover_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerInfo]:
    """Trace one forward pass of a zero batch of ``input_shape`` (C, H, W) and list quantizable layers.

    The order is the order the layers first run in the forward pass (what HAQ's tables and the env use),
    not registration order.
    """
    seen: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, QUANTIZABLE):

            def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor, name: str = name) -> None:
                if name not in seen:
                    seen[name] = (tuple(inp[0].shape), tuple(out.shape))
                    order.append(name)

            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    modules = dict(model.named_modules())
    infos: list[LayerInfo] = []
    for i, name in enumerate(order):
        mod = modules[name]
        in_shape, out_shape = seen[name]
        if isinstance(mod, nn.Conv2d):
            infos.append(
                LayerInfo(
                    name=name,
                    kind="conv",
                    index=i,
                    in_channels=mod.in_channels,
                    out_channels=mod.out_channels,
                    kernel=_pair(mod.kernel_size),
                    stride=_pair(mod.stride),
                    padding=_pair(mod.padding),
                    groups=mod.groups,
                    in_hw=(int(in_shape[-2]), int(in_shape[-1])),
                    out_hw=(int(out_shape[-2]), int(out_shape[-1])),
                    params=mod.weight.numel(),
                    is_input_layer=i == 0,
                )
            )
        else:
            assert isinstance(mod, nn.Linear)
            infos.append(
                LayerInfo(
                    name=name,
                    kind="linear",
                    index=i,
                    in_channels=mod.in_features,
                    out_channels=mod.out_features,
                    kernel=(1, 1),
                    stride=(1, 1),
                    padding=(0, 0),
                    groups=1,
                    in_hw=(1, 1),
                    out_hw=(1, 1),
                    params=mod.weight.numel(),
                    is_input_layer=i == 0,
                )
            )
    return infos
