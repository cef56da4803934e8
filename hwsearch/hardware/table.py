"""Cost tables: per-(layer signature, bit pair) latency and energy, with metadata saying where they came from.

A table is the portable form of a device's costs: analytical models are tabulated once, measurements and
other projects' tables (HAQ's ``.npy``, APQ's JSON dicts) are imported into the same format, and the search
reads any of them through :class:`TableCostModel`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from hwsearch.budget import check_table_size
from hwsearch.errors import TableError
from hwsearch.hardware.base import CostModel, LayerCost, bit_key
from hwsearch.io import atomic_write_text
from hwsearch.layers import LayerInfo
from hwsearch.policy import VALID_BITS

__all__ = [
    "TABLE_SCHEMA_VERSION",
    "METHODS",
    "TableEntry",
    "CostTable",
    "TableCostModel",
    "build_command",
    "build_table",
    "load_table",
    "save_table",
    "render_table",
    "import_haq_npy",
    "import_apq_json",
    "apq_key_to_signatures",
]

TABLE_SCHEMA_VERSION = 1
METHODS: tuple[str, ...] = ("analytical", "measured", "imported")
LATENCY_UNITS: tuple[str, ...] = ("ms", "cycles")
ENERGY_UNITS: tuple[str, ...] = ("mJ",)
_BIT_KEY = re.compile(r"^W(\d+)A(\d+)$")


def build_command(
    device: str, model: str | None, input_shape: Sequence[int] | None = None, num_classes: int | None = None
) -> str:
    """The command that (re)builds a table: quoted in error messages and recorded in each table's generator."""
    cmd = f"hwsearch latency build --target {device} --model {model or 'MODEL'}"
    if input_shape is not None:
        cmd += " --input-shape " + " ".join(str(int(d)) for d in input_shape)
    if num_classes is not None:
        cmd += f" --num-classes {int(num_classes)}"
    return cmd


def _positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TableError(f"{what} = {value!r} is not a number")
    try:
        value = float(value)
    except OverflowError:
        raise TableError(f"{what} = {value!r} is too large") from None
    if not math.isfinite(value):
        raise TableError(f"{what} = {value!r} is not finite")
    if value <= 0:
        raise TableError(f"{what} = {value!r} must be positive")
    return float(value)


def _parse_bit_key(key: str, where: str) -> tuple[int, int]:
    m = _BIT_KEY.match(key) if isinstance(key, str) else None
    if m is None or int(m.group(1)) not in VALID_BITS or int(m.group(2)) not in VALID_BITS:
        raise TableError(f"{where}: bit key {key!r} must be W<w>A<a> with w, a in 1..8 or 32")
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class TableEntry:
    """One (signature, bit pair) cell in the table's units; energy None where unknown."""

    latency: float
    energy: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "latency", _positive(self.latency, "latency"))
        if self.energy is not None:
            object.__setattr__(self, "energy", _positive(self.energy, "energy"))


@dataclass(frozen=True)
class CostTable:
    """A device's cost table with its metadata.

    ``units['latency']`` is ``ms`` (per image) or ``cycles`` (per batch; needs ``clock_hz``);
    ``units['energy']`` is ``mJ`` per image. Entries are keyed by ``LayerInfo.signature(batch)`` then ``W{w}A{a}``.
    """

    device: str
    batch: int
    method: str
    source: str
    entries: Mapping[str, Mapping[str, TableEntry]]
    units: Mapping[str, str] = field(default_factory=lambda: {"latency": "ms", "energy": "mJ"})
    generator: Mapping[str, Any] = field(default_factory=dict)
    model: str | None = None
    clock_hz: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not self.device:
            raise TableError(f"table 'device' = {self.device!r} must be a non-empty string")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch <= 0:
            raise TableError(f"table 'batch' = {self.batch!r} must be a positive integer")
        if self.method not in METHODS:
            raise TableError(f"table 'method' = {self.method!r} must be one of {', '.join(METHODS)}")
        if not isinstance(self.source, str):
            raise TableError(f"table 'source' = {self.source!r} must be a string")
        if not isinstance(self.units, Mapping):
            raise TableError(f"table 'units' = {self.units!r} must be an object")
        lat_unit, en_unit = self.units.get("latency"), self.units.get("energy", "mJ")
        if lat_unit not in LATENCY_UNITS:
            raise TableError(f"table latency unit {lat_unit!r} is not supported; use one of {LATENCY_UNITS}")
        if en_unit not in ENERGY_UNITS:
            raise TableError(f"table energy unit {en_unit!r} is not supported; use one of {ENERGY_UNITS}")
        if lat_unit == "cycles":
            if self.clock_hz is None:
                raise TableError("a table in cycles needs 'clock_hz' to convert them to ms")
            object.__setattr__(self, "clock_hz", _positive(self.clock_hz, "clock_hz"))
        elif self.clock_hz is not None:
            object.__setattr__(self, "clock_hz", _positive(self.clock_hz, "clock_hz"))
        if not isinstance(self.generator, Mapping):
            raise TableError(f"table 'generator' = {self.generator!r} must be an object")
        if not isinstance(self.entries, Mapping) or not self.entries:
            raise TableError("table has no entries")
        clean: dict[str, Mapping[str, TableEntry]] = {}
        for sig, cells in self.entries.items():
            if not isinstance(sig, str) or not sig:
                raise TableError(f"table signature {sig!r} must be a non-empty string")
            if not isinstance(cells, Mapping) or not cells:
                raise TableError(f"table entry {sig!r} must map bit pairs like 'W8A8' to costs")
            row: dict[str, TableEntry] = {}
            for key, cell in cells.items():
                _parse_bit_key(key, f"entry {sig!r}")
                if isinstance(cell, TableEntry):
                    row[key] = cell
                elif isinstance(cell, Mapping) and "latency" in cell and set(cell) <= {"latency", "energy"}:
                    try:
                        row[key] = TableEntry(cell["latency"], cell.get("energy"))
                    except TableError as exc:
                        raise TableError(f"entry {sig!r} {key}: {exc}") from None
                else:
                    raise TableError(f"entry {sig!r} {key}: {cell!r} must be {{'latency': x, 'energy': y}}")
            clean[sig] = MappingProxyType(row)
        object.__setattr__(self, "entries", MappingProxyType(clean))
        object.__setattr__(self, "units", MappingProxyType({"latency": lat_unit, "energy": en_unit}))
        object.__setattr__(self, "generator", MappingProxyType(dict(self.generator)))

    def entry(self, signature: str, w_bits: int, a_bits: int, layer_name: str | None = None) -> TableEntry:
        """The cell for a signature and bit pair; a missing one is an error saying how to build it."""
        who = f"layer {layer_name!r} ({signature})" if layer_name else f"signature {signature}"
        row = self.entries.get(signature)
        if row is None:
            raise TableError(
                f"table for device {self.device!r} has no entry for {who}; build one with: {self.build_hint()}"
            )
        key = bit_key(w_bits, a_bits)
        cell = row.get(key)
        if cell is None:
            raise TableError(f"table for device {self.device!r} has no {key} cost for {who}; it has {', '.join(row)}")
        return cell

    def build_hint(self) -> str:
        """The command that rebuilds this table: its ``generator.command`` when recorded, else a generic one."""
        command = self.generator.get("command")
        if isinstance(command, str) and command:
            return command
        if self.method == "measured":
            return f"hwsearch latency measure --model {self.model or 'MODEL'} --out TABLE.json"
        return build_command(self.device, self.model)

    def to_cost(self, cell: TableEntry) -> LayerCost:
        """A cell in ms and mJ per image."""
        if self.units["latency"] == "cycles":
            assert self.clock_hz is not None
            latency_ms = cell.latency / self.clock_hz * 1e3 / self.batch
        else:
            latency_ms = cell.latency
        return LayerCost(latency_ms=latency_ms, energy_mj=cell.energy)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": TABLE_SCHEMA_VERSION,
            "device": self.device,
            "model": self.model,
            "batch": self.batch,
            "method": self.method,
            "source": self.source,
            "units": dict(self.units),
            "generator": dict(self.generator),
        }
        if self.clock_hz is not None:
            out["clock_hz"] = self.clock_hz
        out["entries"] = {
            sig: {k: {"latency": c.latency, "energy": c.energy} for k, c in row.items()}
            for sig, row in self.entries.items()
        }
        return out

    @classmethod
    def from_dict(cls, data: Any) -> CostTable:
        if not isinstance(data, Mapping):
            raise TableError(f"a cost table must be a JSON object, got {type(data).__name__}")
        schema = data.get("schema")
        if schema != TABLE_SCHEMA_VERSION:
            raise TableError(f"table schema {schema!r} is not supported; this hwsearch reads schema 1")
        missing = [k for k in ("device", "batch", "method", "units", "entries") if k not in data]
        if missing:
            raise TableError(f"table lacks required field(s) {missing}")
        known = {"schema", "device", "model", "batch", "method", "source", "units", "generator", "clock_hz", "entries"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TableError(f"table has unknown field(s) {unknown}")
        return cls(
            device=data["device"],
            batch=data["batch"],
            method=data["method"],
            source=data.get("source", ""),
            entries=data["entries"],
            units=data["units"],
            generator=data.get("generator", {}),
            model=data.get("model"),
            clock_hz=data.get("clock_hz"),
        )


def load_table(path: str | os.PathLike[str]) -> CostTable:
    """Read and validate a table file."""
    p = Path(path)
    if not p.is_file():
        raise TableError(f"cost table {str(p)!r} does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TableError(f"cannot read cost table {str(p)!r}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise TableError(f"cost table {str(p)!r} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    try:
        return CostTable.from_dict(data)
    except TableError as exc:
        raise TableError(f"cost table {str(p)!r}: {exc}") from None


def render_table(table: CostTable) -> str:
    """The table as compact, deterministic JSON: metadata first, then one line per layer signature.

    Compact (no spaces) keeps shipped tables small; a line per signature keeps their diffs readable.
    Floats are written with ``repr`` precision, so a loaded table prices exactly as the one written.
    """
    data = table.to_dict()
    entries = data.pop("entries")
    head = json.dumps(data, separators=(",", ":"), allow_nan=False)
    rows = ",\n".join(
        f"{json.dumps(sig)}:{json.dumps(row, separators=(',', ':'), allow_nan=False)}" for sig, row in entries.items()
    )
    return f'{head[:-1]},\n"entries":{{\n{rows}\n}}}}\n'


def save_table(table: CostTable, path: str | os.PathLike[str]) -> Path:
    """Write a table atomically (the old file or the complete new one, never half), as :func:`render_table`."""
    return atomic_write_text(path, render_table(table))


class TableCostModel:
    """CostModel reading a loaded table.

    ``supported_bits()`` lists every width that occurs in the table (as weight or activation width); a table
    need not hold every pair of them (a measured table may hold W32A32, W8A8 and W4A32 only), so the search
    should restrict itself to :meth:`supported_pairs` of the layers it prices.
    """

    def __init__(self, table: CostTable, path: str | None = None) -> None:
        self.table = table
        self.name = table.device
        self.path = path

    def supported_bits(self) -> tuple[int, ...]:
        bits: set[int] = set()
        for row in self.table.entries.values():
            for key in row:
                bits.update(_parse_bit_key(key, "table"))
        return tuple(sorted(bits))

    def layer_pairs(self, layer: LayerInfo) -> frozenset[tuple[int, int]]:
        """The (w, a) pairs the table prices ``layer`` at (empty when its signature is absent)."""
        row = self.table.entries.get(layer.signature(self.table.batch), {})
        return frozenset(_parse_bit_key(key, "table") for key in row)

    def supported_pairs(self, layers: Iterable[LayerInfo] | None = None) -> frozenset[tuple[int, int]]:
        """(w, a) pairs priced for every one of ``layers`` (or, without layers, for every signature in the table).

        A layer whose signature the table lacks is an error naming it and the command that builds it.
        """
        rows: list[Iterable[str]]
        if layers is None:
            rows = [row.keys() for row in self.table.entries.values()]
        else:
            rows = []
            for layer in layers:
                sig = layer.signature(self.table.batch)
                if sig not in self.table.entries:
                    self.table.entry(sig, 8, 8, layer.name)  # raises, naming the layer and the build command
                rows.append(self.table.entries[sig].keys())
        common: set[tuple[int, int]] | None = None
        for keys in rows:
            pairs = {_parse_bit_key(key, "table") for key in keys}
            common = pairs if common is None else common & pairs
        return frozenset(common or ())

    def layer_cost(self, layer: LayerInfo, w_bits: int, a_bits: int) -> LayerCost:
        sig = layer.signature(self.table.batch)
        return self.table.to_cost(self.table.entry(sig, w_bits, a_bits, layer.name))

    def __repr__(self) -> str:
        where = f", from {self.path!r}" if self.path else ""
        return f"TableCostModel({self.table.device!r}, {len(self.table.entries)} signatures{where})"


def build_table(
    cost_model: CostModel,
    layers: Sequence[LayerInfo],
    *,
    batch: int,
    model: str | None = None,
    bits: Iterable[int] | None = None,
    generator: Mapping[str, Any] | None = None,
    source: str = "",
) -> CostTable:
    """Tabulate an analytical cost model over every distinct layer signature and bit pair."""
    widths = tuple(bits) if bits is not None else cost_model.supported_bits()
    check_table_size(len({layer.signature(batch) for layer in layers}), len(widths), len(widths), what="the cost table")
    entries: dict[str, dict[str, Any]] = {}  # raw cells: CostTable validates them into TableEntry
    for layer in layers:
        sig = layer.signature(batch)
        if sig in entries:
            continue
        row: dict[str, Any] = {}
        for w in widths:
            for a in widths:
                c = cost_model.layer_cost(layer, w, a)
                row[bit_key(w, a)] = {"latency": c.latency_ms, "energy": c.energy_mj}
        entries[sig] = row
    return CostTable(
        device=cost_model.name,
        batch=batch,
        method="analytical",
        source=source,
        entries=entries,
        units={"latency": "ms", "energy": "mJ"},
        generator=dict(generator or {}),
        model=model,
    )


def import_haq_npy(
    path: str | os.PathLike[str],
    layers: Sequence[LayerInfo],
    *,
    device: str = "haq-bitfusion",
    batch: int = 16,
    clock_hz: float = 500e6,
    model: str | None = None,
) -> CostTable:
    """Map HAQ's ``(L, 8, 8)`` table (``[layer, w-1, a-1]``, cycles per batch) onto ``layers`` by forward order."""
    p = Path(path)
    if not p.is_file():
        raise TableError(f"HAQ table {str(p)!r} does not exist")
    try:
        arr = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise TableError(f"cannot read HAQ table {str(p)!r} as a numpy array: {exc}") from None
    if arr.ndim != 3 or arr.shape[1:] != (8, 8):
        raise TableError(f"HAQ table {str(p)!r} has shape {arr.shape}; expected (L, 8, 8)")
    if arr.shape[0] != len(layers):
        raise TableError(
            f"HAQ table {str(p)!r} has {arr.shape[0]} layers but the model has {len(layers)} quantizable layers"
        )
    entries: dict[str, dict[str, Any]] = {}  # raw cells: CostTable validates them into TableEntry
    for layer, grid in zip(layers, arr, strict=True):
        sig = layer.signature(batch)
        row = {
            bit_key(w, a): {"latency": float(grid[w - 1, a - 1]), "energy": None}
            for w in range(1, 9)
            for a in range(1, 9)
        }
        if sig in entries and entries[sig] != row:
            raise TableError(
                f"HAQ table {str(p)!r} gives layer {layer.name!r} other costs than an earlier layer with the "
                f"same signature {sig}; the layer order does not match this model"
            )
        entries[sig] = row
    return CostTable(
        device=device,
        batch=batch,
        method="imported",
        source=f"HAQ lookup table {p.name} (mit-han-lab/haq), mapped by forward layer order",
        entries=entries,
        units={"latency": "cycles", "energy": "mJ"},
        generator={"format": "haq-npy", "layers": len(layers)},
        model=model,
        clock_hz=clock_hz,
    )


_APQ_KEY = re.compile(r"^\((\d+), (\d+), (\d+), (\d+), (\d+), (\d+), (\d+)\)-(W\d+A\d+)$")


def apq_key_to_signatures(key: str, batch: int = 1) -> tuple[list[str], str]:
    """Our signatures for an APQ key ``(Cin, Cout, H_in, kernel, stride, pad, groups)-W{w}A{a}``.

    A 1x1 kernel on a 1x1 input is also listed as a linear layer, which has the same cost.
    """
    m = _APQ_KEY.match(key)
    if m is None:
        raise TableError(f"APQ key {key!r} is not '(Cin, Cout, H_in, kernel, stride, pad, groups)-W<w>A<a>'")
    cin, cout, h, k, s, p, g = (int(x) for x in m.groups()[:7])
    sigs = [f"conv-ic{cin}-oc{cout}-in{h}x{h}-k{k}x{k}-s{s}x{s}-p{p}x{p}-g{g}-b{batch}"]
    if h == 1 and k == 1 and s == 1 and p == 0 and g == 1:
        sigs.append(f"linear-ic{cin}-oc{cout}-in1x1-k1x1-s1x1-p0x0-g1-b{batch}")
    return sigs, m.group(8)


def import_apq_json(
    path: str | os.PathLike[str], *, device: str = "apq-bitfusion", batch: int = 1, model: str | None = None
) -> CostTable:
    """Import an APQ-style JSON dict (values ``{"latency": ms, "energy": mJ}``); ``head``/``tail`` are skipped."""
    p = Path(path)
    if not p.is_file():
        raise TableError(f"APQ table {str(p)!r} does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TableError(f"cannot read APQ table {str(p)!r} as JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise TableError(f"APQ table {str(p)!r} must be a JSON object")
    entries: dict[str, dict[str, Any]] = {}
    skipped = []
    for key, value in data.items():
        if key in ("head", "tail"):
            skipped.append(key)
            continue
        sigs, bits = apq_key_to_signatures(key, batch)
        if not isinstance(value, Mapping) or "latency" not in value:
            raise TableError(f"APQ table {str(p)!r} entry {key!r} must be {{'latency': x, 'energy': y}}")
        cell = {"latency": value["latency"], "energy": value.get("energy")}
        for sig in sigs:
            entries.setdefault(sig, {})[bits] = cell
    return CostTable(
        device=device,
        batch=batch,
        method="imported",
        source=f"APQ lookup table {p.name} (mit-han-lab/apq)",
        entries=entries,
        units={"latency": "ms", "energy": "mJ"},
        generator={"format": "apq-json", "skipped": skipped},
        model=model,
    )
