"""Per-layer bit-width policies, keyed by qualified module name, with a versioned JSON form.

Files (JSON, YAML, CSV, HAQ) are read and written by :mod:`hwsearch.policy_formats`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from hwsearch.errors import PolicyError

__all__ = [
    "SCHEMA_VERSION",
    "FLOAT_BITS",
    "VALID_BITS",
    "LayerBits",
    "Policy",
    "uniform_policy",
]

SCHEMA_VERSION = 1
FLOAT_BITS = 32
VALID_BITS: tuple[int, ...] = (*range(1, 9), FLOAT_BITS)


def _check_bits(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        else:
            raise PolicyError(f"{what} = {value!r} is not an integer; use one of 1..8 or 32 (float)")
    if value not in VALID_BITS:
        raise PolicyError(f"{what} = {value} is out of range; use one of 1..8 or 32 (float)")
    return value


@dataclass(frozen=True)
class LayerBits:
    """Weight and input-activation bit widths of one layer (32 = keep float)."""

    w: int
    a: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "w", _check_bits(self.w, "weight bits"))
        object.__setattr__(self, "a", _check_bits(self.a, "activation bits"))

    def to_list(self) -> list[int]:
        return [self.w, self.a]


@dataclass(frozen=True)
class Policy:
    """A bit-width assignment for every quantizable layer of a model.

    ``layers`` preserves the model's forward order; lookups are by qualified module name, never position.
    """

    layers: Mapping[str, LayerBits]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.layers, Mapping) or len(self.layers) == 0:
            raise PolicyError("a policy needs at least one layer; got an empty 'layers' mapping")
        clean: dict[str, LayerBits] = {}
        for name, bits in self.layers.items():
            if not isinstance(name, str) or not name:
                raise PolicyError(f"layer name {name!r} is not a non-empty string")
            if isinstance(bits, LayerBits):
                clean[name] = bits
            elif isinstance(bits, Mapping) and set(bits) == {"w", "a"}:
                clean[name] = LayerBits(w=bits["w"], a=bits["a"])
            elif isinstance(bits, (list, tuple)) and len(bits) == 2:
                clean[name] = LayerBits(w=bits[0], a=bits[1])
            else:
                raise PolicyError(f"layer {name!r}: bits {bits!r} must be {{'w': W, 'a': A}} or [W, A]")
        object.__setattr__(self, "layers", clean)
        object.__setattr__(self, "meta", dict(self.meta))

    def __getitem__(self, name: str) -> LayerBits:
        return self.layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and dict(self.layers) == dict(other.layers)

    def __hash__(self) -> int:
        return hash(self.key())

    def key(self) -> tuple[tuple[str, int, int], ...]:
        """Hashable identity of the bit assignment (meta excluded): the evaluation cache key."""
        return tuple((n, b.w, b.a) for n, b in self.layers.items())

    def names(self) -> list[str]:
        return list(self.layers)

    def with_meta(self, **meta: Any) -> Policy:
        return Policy(self.layers, {**self.meta, **meta})

    def check_against(self, layer_names: Iterable[str]) -> None:
        """Refuse a policy that names layers the model lacks, or misses layers it has."""
        expected = list(layer_names)
        unknown = [n for n in self.layers if n not in expected]
        missing = [n for n in expected if n not in self.layers]
        if unknown:
            raise PolicyError(
                f"policy names layer(s) {unknown} that the model does not have; the model's layers are {expected}"
            )
        if missing:
            raise PolicyError(f"policy misses layer(s) {missing}; give bits for every quantizable layer")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "layers": {n: {"w": b.w, "a": b.a} for n, b in self.layers.items()},
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Policy:
        if not isinstance(data, Mapping):
            raise PolicyError(f"a policy must be a JSON object, got {type(data).__name__}")
        schema = data.get("schema")
        if schema != SCHEMA_VERSION:
            raise PolicyError(f"policy schema {schema!r} is not supported; this hwsearch reads schema {SCHEMA_VERSION}")
        layers = data.get("layers")
        if not isinstance(layers, Mapping):
            raise PolicyError("policy has no 'layers' object mapping module names to {'w': W, 'a': A}")
        meta = data.get("meta", {})
        if not isinstance(meta, Mapping):
            raise PolicyError("policy 'meta' must be a JSON object")
        return cls(layers=dict(layers), meta=dict(meta))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Policy:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PolicyError(f"policy is not valid JSON ({exc.msg} at line {exc.lineno}); fix the file") from None
        return cls.from_dict(data)


def uniform_policy(layer_names: Iterable[str], w: int, a: int | None = None) -> Policy:
    """Fixed-precision baseline: every layer at ``w`` weight and ``a`` (default ``w``) activation bits."""
    a = w if a is None else a
    names = list(layer_names)
    return Policy({n: LayerBits(w, a) for n in names}, {"kind": f"fixed W{w}A{a}"})
