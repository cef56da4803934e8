"""Where torch runs and how runs repeat: the one torch-device resolver and the one seeding function.

The *compute device* (``--compute-device``: cpu, cuda, cuda:N, mps, auto) is where models run; it is unrelated
to the *target* (``--target``), the hardware whose cost model prices a policy (:mod:`hwsearch.hardware`).
"""

from __future__ import annotations

import platform
import random
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from hwsearch.errors import ConfigError

__all__ = ["COMPUTE_DEVICE_HELP", "check_compute_device", "resolve_compute_device", "set_seed", "to_device"]

COMPUTE_DEVICE_HELP = "cpu, cuda, cuda:N, mps or auto (cuda when present): where models run"
_KINDS = ("cpu", "cuda", "mps")
_ModuleT = TypeVar("_ModuleT", bound=nn.Module)
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def check_compute_device(name: object) -> torch.device | None:
    """The torch device ``name`` spells (None for ``auto``), without asking whether this machine has it.

    Configs check their setting with this at construction; :func:`resolve_compute_device` checks at use.
    """
    if name == "auto":
        return None
    try:
        dev = torch.device(name)  # type: ignore[call-overload]  # any object: torch's own check is the test
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in _KINDS:
        raise ConfigError(f"compute device {name!r} is unknown; use cpu, cuda, cuda:N, mps or auto")
    return dev


def resolve_compute_device(name: str | torch.device) -> torch.device:
    """The torch device to run on; ``auto`` picks CUDA when present. A device this machine lacks is a one-line
    :class:`ConfigError` naming the flag that fixes it."""
    if isinstance(name, torch.device):
        name = str(name)
    dev = check_compute_device(name)
    if dev is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"compute device {name!r} was asked for but CUDA is not available here; use --compute-device cpu"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"compute device {name!r} was asked for but MPS is not available here; use --compute-device cpu"
        )
    return dev


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and all GPUs) so model init, training and a search repeat exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(model: _ModuleT, device: torch.device | str) -> _ModuleT:
    """``model`` moved to ``device`` (in place; returned), its conv weights in the layout that runs fastest there.

    Every place that puts a model where it will run goes through here, so the layout follows the device.
    Channels-last (NHWC) on x86 CPUs: oneDNN's NCHW convolutions and max-pooling are its slow path there; the
    forward and backward passes an evaluation repeats are timed in both layouts, per zoo model, by
    ``python -m benchmarks.layout`` (``benchmarks/results/layout.md``). Inputs may stay NCHW: a conv's output
    follows its weight. Values agree up to float summation order. Elsewhere (GPUs, other CPUs: not measured)
    the default contiguous layout.
    """
    dev = torch.device(device)
    model.to(dev)
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last if dev.type == "cpu" and _X86 else torch.contiguous_format)
    return model
