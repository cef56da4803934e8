"""The shipped analytical tables: which exist, how each is built, and ``python -m hwsearch.hardware.regenerate``.

Every shipped table is ``latency_tables/<device>__<model>.json``: one analytical device, one zoo model at the
input shape and class count it is searched at by default (:data:`SHIPPED_MODELS`), every bit pair the device
runs. Each is exactly what ``hwsearch latency build`` writes with the command in its ``generator.command``;
this module rebuilds them all (or checks them, ``--check``) with the same code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hwsearch.errors import HwsearchError, TableError
from hwsearch.hardware.cost import device_spec, get_cost_model, is_table_path, list_devices
from hwsearch.hardware.table import CostTable, build_command, build_table, render_table, save_table

__all__ = [
    "SHIPPED_MODELS",
    "ShippedModel",
    "build_model_table",
    "build_table_command",
    "shipped_dir",
    "shipped_table_name",
    "shipped_table_path",
    "shipped_tables",
    "regenerate",
    "main",
]


@dataclass(frozen=True)
class ShippedModel:
    """A zoo model at the input shape (C, H, W) and class count its shipped tables are built for."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int

    def __post_init__(self) -> None:
        if len(self.input_shape) != 3 or any(int(d) <= 0 for d in self.input_shape) or self.num_classes < 1:
            raise TableError(f"shipped model {self.name!r}: input_shape {self.input_shape} / classes invalid")


SHIPPED_MODELS: tuple[ShippedModel, ...] = (
    ShippedModel("smallcnn", (1, 28, 28), 10),  # embedded default (mnist)
    ShippedModel("resnet20", (3, 32, 32), 10),  # CIFAR-10
    ShippedModel("mobilenet_v2", (3, 224, 224), 1000),  # ImageNet
    ShippedModel("resnet18", (3, 224, 224), 1000),
    ShippedModel("resnet50", (3, 224, 224), 1000),
)


def shipped_dir() -> Path:
    """The ``latency_tables`` package folder (the source tree's folder in an editable install)."""
    return Path(str(resources.files("hwsearch.latency_tables")))


def shipped_table_name(device: str, model: str) -> str:
    """File name of a shipped table: ``<device>__<model>.json`` (double underscore: names contain ``-``/``_``)."""
    return f"{device}__{model}.json"


def shipped_table_path(device: str, model: str) -> Path:
    """Path of the shipped table of ``device`` and ``model``; an error naming the command when it is absent."""
    path = shipped_dir() / shipped_table_name(device, model)
    if not path.is_file():
        raise TableError(
            f"no shipped table {path.name!r}; build it with: {build_table_command(device, model)} --out {path.name}"
        )
    return path


def shipped_tables() -> list[tuple[str, ShippedModel]]:
    """Every (device, model) pair that ships a table, in file-name order."""
    return [(d, m) for d in list_devices() for m in SHIPPED_MODELS]


def _shipped_model(model: str) -> ShippedModel | None:
    return next((m for m in SHIPPED_MODELS if m.name == model), None)


def build_table_command(
    device: str, model: str, input_shape: Sequence[int] | None = None, num_classes: int | None = None
) -> str:
    """The ``hwsearch latency build`` command for a table (shape and classes default to the shipped ones)."""
    known = _shipped_model(model)
    shape = tuple(input_shape) if input_shape is not None else known.input_shape if known else None
    classes = num_classes if num_classes is not None else known.num_classes if known else None
    return build_command(device, model, shape, classes)


def build_model_table(device: str, model: str, input_shape: Sequence[int], num_classes: int) -> CostTable:
    """Tabulate analytical ``device`` over every layer signature of zoo ``model`` and every bit pair it runs.

    The model is built on the CPU (random weights, the caller's RNG state left as it was) and traced once.
    """
    import torch

    from hwsearch.layers import discover_layers
    from hwsearch.models import build_model

    if is_table_path(device):
        raise TableError(
            f"device {device!r} is a table file; tabulate an analytical device ({', '.join(list_devices())})"
        )
    cost_model = get_cost_model(device)
    spec = device_spec(device)
    shape = tuple(int(d) for d in input_shape)
    with torch.random.fork_rng(devices=[]):
        net = build_model(model, num_classes=int(num_classes), input_shape=shape)  # type: ignore[arg-type]  # (C, H, W), from a shipped model or the CLI
    layers = discover_layers(net, shape)
    config = getattr(cost_model, "config", None)
    return build_table(
        cost_model,
        layers,
        batch=int(getattr(config, "batch", 1)),
        model=model,
        generator={
            "command": build_table_command(device, model, shape, num_classes),
            "input_shape": list(shape),
            "num_classes": int(num_classes),
            "layers": len(layers),
            "family": spec.get("family"),
            "parameters": spec.get("parameters"),
        },
        source=str(spec.get("source", "")),
    )


def regenerate(
    out_dir: str | os.PathLike[str] | None = None, *, only: Sequence[str] = (), check: bool = False
) -> list[tuple[Path, str]]:
    """Rebuild the shipped tables into ``out_dir`` (default the package folder), or with ``check`` only compare.

    ``only`` restricts to file names or ``device__model`` stems. Returns ``(path, status)`` per table, status one
    of ``written``, ``unchanged``, ``differs``, ``missing`` (the last two only with ``check``).
    """
    folder = Path(out_dir) if out_dir is not None else shipped_dir()
    wanted = {s.removesuffix(".json") for s in only}
    todo = [(d, m) for d, m in shipped_tables() if not wanted or shipped_table_name(d, m.name)[:-5] in wanted]
    if wanted and len(todo) != len(wanted):
        names = {shipped_table_name(d, m.name)[:-5] for d, m in shipped_tables()}
        raise TableError(f"unknown shipped table(s) {sorted(wanted - names)}; known: {', '.join(sorted(names))}")
    report: list[tuple[Path, str]] = []
    for device, model in todo:
        path = folder / shipped_table_name(device, model.name)
        table = build_model_table(device, model.name, model.input_shape, model.num_classes)
        text = render_table(table)
        old = path.read_text(encoding="utf-8") if path.is_file() else None
        if old == text:
            report.append((path, "unchanged"))
        elif check:
            report.append((path, "missing" if old is None else "differs"))
        else:
            save_table(table, path)
            report.append((path, "written"))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hwsearch.hardware.regenerate [--check] [--out-dir DIR] [TABLE ...]``."""
    parser = argparse.ArgumentParser(prog="python -m hwsearch.hardware.regenerate", description=__doc__)
    parser.add_argument("tables", nargs="*", help="device__model stems to rebuild (default: all)")
    parser.add_argument("--out-dir", default=None, help="folder to write (default: the latency_tables package)")
    parser.add_argument("--check", action="store_true", help="compare with the files; exit 1 if any differs")
    args = parser.parse_args(argv)
    try:
        report = regenerate(args.out_dir, only=args.tables, check=args.check)
    except HwsearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    total = 0
    for path, status in report:
        size = path.stat().st_size if path.is_file() else 0
        total += size
        print(f"{status:<9} {path} ({size / 1024:.1f} KiB)")
    print(f"{len(report)} table(s), {total / 1024:.0f} KiB")
    return 1 if any(s in ("differs", "missing") for _, s in report) else 0


if __name__ == "__main__":
    sys.exit(main())
