"""Activation ranges of every quantizable layer's input, measured once on the float model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hwsearch.checks import check_choice, check_number
from hwsearch.errors import ConfigError
from hwsearch.layers import QUANTIZABLE

__all__ = ["ActRange", "Calibration", "calibrate"]

_METHODS = ("minmax", "percentile")


@dataclass(frozen=True)
class ActRange:
    lo: float
    hi: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "lo", check_number(self.lo, "activation range lo"))
        object.__setattr__(self, "hi", check_number(self.hi, "activation range hi"))
        if self.lo > self.hi:
            raise ConfigError(f"activation range lo = {self.lo} > hi = {self.hi}; recalibrate the float model")

    @property
    def signed(self) -> bool:
        """Inputs that are never negative (after ReLU) get the unsigned grid: one more bit of resolution."""
        return self.lo < 0


@dataclass(frozen=True)
class Calibration:
    ranges: Mapping[str, ActRange]
    method: str

    def __post_init__(self) -> None:
        check_choice(self.method, "calibration method", _METHODS)
        object.__setattr__(self, "ranges", dict(self.ranges))

    def __getitem__(self, name: str) -> ActRange:
        return self.ranges[name]

    def to_dict(self) -> dict:
        return {"method": self.method, "ranges": {n: [r.lo, r.hi] for n, r in self.ranges.items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> Calibration:
        """Read :meth:`to_dict` output (stored in checkpoints); a malformed one is a one-line ConfigError."""
        try:
            ranges = {str(n): ActRange(v[0], v[1]) for n, v in d["ranges"].items()}
            method = d["method"]
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ConfigError(
                f"stored calibration is malformed ({type(exc).__name__}: {exc}); expected "
                "{'method': M, 'ranges': {layer: [lo, hi]}}, recalibrate or retrain"
            ) from None
        return cls(ranges, method)


def calibrate(
    model: nn.Module,
    batches: Iterable[Tensor] | Tensor,
    *,
    method: str = "percentile",
    percentile: float = 99.99,
) -> Calibration:
    """Record the input range of every Conv2d/Linear over ``batches`` (done once per search, not per episode).

    ``percentile`` clips rare outliers that would waste low-bit levels; ``minmax`` keeps every value.
    """
    check_choice(method, "calibration method", _METHODS)
    if isinstance(batches, Tensor):
        batches = [batches]
    lows: dict[str, list[float]] = {}
    highs: dict[str, list[float]] = {}
    handles = []

    def make_hook(name: str) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(_mod: nn.Module, inp: tuple[Tensor, ...]) -> None:
            x = inp[0].detach().float().flatten()
            if method == "minmax" or x.numel() < 2:
                lo, hi = x.min().item(), x.max().item()
            else:
                if x.numel() > 1_000_000:  # quantile has a size limit; a strided sample is plenty
                    x = x[:: x.numel() // 1_000_000 + 1]
                q = torch.tensor([1 - percentile / 100, percentile / 100], device=x.device)
                lo, hi = torch.quantile(x, q).tolist()
                lo = min(lo, 0.0) if x.min().item() < 0 else 0.0
            lows.setdefault(name, []).append(lo)
            highs.setdefault(name, []).append(hi)

        return hook

    for name, module in model.named_modules():
        if isinstance(module, QUANTIZABLE):
            handles.append(module.register_forward_pre_hook(make_hook(name)))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for xb in batches:
                model(xb.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    ranges = {n: ActRange(float(min(lows[n])), float(max(max(highs[n]), min(lows[n]) + 1e-8))) for n in lows}
    return Calibration(ranges, method)
