"""The one policy reader and writer, for every file format hwsearch speaks.

- ``json``: schema v1 (:meth:`Policy.to_dict`), layers and meta: what a search writes.
- ``yaml``: the same structure as ``json`` (needs PyYAML).
- ``csv``: header ``layer,w_bits,a_bits``, one row per layer in forward order. Meta is *not* kept.
- ``haq``: HAQ's strategy, a list of ``[w, a]`` pairs in forward order. It carries no names (nor meta), so
  reading one needs the model's layer names.

Every command that takes a policy file reads it with :func:`load_policy` (the format from the extension), so a
file one command accepts, every command accepts.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hwsearch.errors import ConfigError, PolicyError
from hwsearch.io import atomic_write_text
from hwsearch.policy import LayerBits, Policy

__all__ = [
    "POLICY_FORMATS",
    "format_from_path",
    "policy_to_text",
    "policy_from_text",
    "plain_policy_dict",
    "load_policy",
    "save_policy",
]

POLICY_FORMATS = ("json", "yaml", "csv", "haq")
_EXTENSIONS = {".json": "json", ".yaml": "yaml", ".yml": "yaml", ".csv": "csv", ".haq": "haq", ".txt": "haq"}
_CSV_HEADER = ["layer", "w_bits", "a_bits"]


def format_from_path(path: str | os.PathLike[str]) -> str:
    """The policy format a file name implies (``.json``, ``.yaml``/``.yml``, ``.csv``, ``.haq``/``.txt``)."""
    ext = Path(path).suffix.lower()
    if ext not in _EXTENSIONS:
        raise PolicyError(
            f"cannot tell the policy format of {str(path)!r} from its extension; name one of {', '.join(POLICY_FORMATS)}"
        )
    return _EXTENSIONS[ext]


def _check_format(fmt: str) -> str:
    if fmt not in POLICY_FORMATS:
        raise PolicyError(f"policy format {fmt!r} is unknown; use one of {', '.join(POLICY_FORMATS)}")
    return fmt


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a declared dependency
        raise ConfigError("the yaml format needs PyYAML; pip install pyyaml") from None
    return yaml


def plain_policy_dict(policy: Policy) -> dict[str, Any]:
    """The schema-v1 dict with meta reduced to JSON types, so JSON and YAML carry exactly the same thing."""
    try:
        return json.loads(json.dumps(policy.to_dict()))
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"policy meta cannot be written as JSON/YAML: {exc}") from None


def policy_to_text(policy: Policy, fmt: str) -> str:
    """The file contents of ``policy`` in ``fmt`` (csv and haq drop meta; haq drops names too)."""
    fmt = _check_format(fmt)
    if fmt == "json":
        return json.dumps(plain_policy_dict(policy), indent=2) + "\n"
    if fmt == "yaml":
        return _yaml().safe_dump(plain_policy_dict(policy), sort_keys=False, default_flow_style=False)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(_CSV_HEADER)
        for name, bits in policy.layers.items():
            writer.writerow([name, bits.w, bits.a])
        return buf.getvalue()
    return json.dumps([bits.to_list() for bits in policy.layers.values()]) + "\n"


def _int_cell(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise PolicyError(f"{what} = {text!r} is not an integer") from None


def _from_csv(text: str, source: str) -> Policy:
    rows = [r for r in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in r)]
    if not rows:
        raise PolicyError(f"{source}: empty CSV; expected a header {','.join(_CSV_HEADER)} and one row per layer")
    header = [c.strip() for c in rows[0]]
    if header != _CSV_HEADER:
        raise PolicyError(f"{source}: CSV header is {','.join(header)!r}; expected {','.join(_CSV_HEADER)!r}")
    layers: dict[str, LayerBits] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != 3:
            raise PolicyError(f"{source}: CSV row {lineno} has {len(row)} cells; expected layer,w_bits,a_bits")
        name = row[0].strip()
        if name in layers:
            raise PolicyError(f"{source}: CSV row {lineno} repeats layer {name!r}")
        layers[name] = LayerBits(_int_cell(row[1], f"row {lineno} w_bits"), _int_cell(row[2], f"row {lineno} a_bits"))
    return Policy(layers, {})


def _from_haq(text: str, source: str, layer_names: Sequence[str] | None) -> Policy:
    if layer_names is None:
        raise PolicyError(f"{source}: a HAQ strategy has no layer names; pass the model's layer names (--checkpoint)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:  # HAQ prints Python lists; literal_eval evaluates literals only, never code
            data = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise PolicyError(
                f"{source}: not a HAQ strategy; expected a list of [w, a] pairs like [[8, 8], [4, 6]]"
            ) from None
    if not isinstance(data, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in data):
        raise PolicyError(f"{source}: a HAQ strategy must be a list of [w, a] pairs, got {str(data)[:60]!r}")
    names = list(layer_names)
    if len(data) != len(names):
        raise PolicyError(f"{source}: HAQ strategy has {len(data)} pairs but the model has {len(names)} layers")
    return Policy({n: LayerBits(p[0], p[1]) for n, p in zip(names, data, strict=True)}, {})


def policy_from_text(
    text: str, fmt: str, *, layer_names: Sequence[str] | None = None, source: str = "policy"
) -> Policy:
    """Parse policy file contents; every malformation is a one-line :class:`PolicyError` naming ``source``."""
    fmt = _check_format(fmt)
    try:
        if fmt == "json":
            return Policy.from_json(text)
        if fmt == "yaml":
            yaml = _yaml()
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" at line {mark.line + 1}" if mark is not None else ""
                problem = getattr(exc, "problem", None) or type(exc).__name__
                raise PolicyError(f"policy is not valid YAML ({problem}{where}); fix the file") from None
            return Policy.from_dict(data)
        if fmt == "csv":
            return _from_csv(text, source)
        return _from_haq(text, source, layer_names)
    except PolicyError as exc:
        msg = str(exc)
        raise PolicyError(msg if msg.startswith(source) else f"{source}: {msg}") from None


def save_policy(policy: Policy, path: str | os.PathLike[str], fmt: str | None = None) -> Path:
    """Write ``policy`` atomically as ``fmt`` (default: from the extension)."""
    fmt = format_from_path(path) if fmt is None else _check_format(fmt)
    try:
        return atomic_write_text(path, policy_to_text(policy, fmt))
    except OSError as exc:
        raise ConfigError(
            f"cannot write {str(path)!r} ({exc.strerror or type(exc).__name__}); choose another --out"
        ) from None


def load_policy(
    path: str | os.PathLike[str], fmt: str | None = None, *, layer_names: Sequence[str] | None = None
) -> Policy:
    """Read a policy file in ``fmt`` (default: from the extension); ``haq`` needs ``layer_names``."""
    fmt = format_from_path(path) if fmt is None else _check_format(fmt)
    p = Path(path)
    if not p.is_file():
        raise PolicyError(f"policy file {str(p)!r} does not exist; pass the policy.json a search wrote")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read policy file {str(p)!r}: {exc}") from None
    return policy_from_text(text, fmt, layer_names=layer_names, source=f"policy file {str(p)!r}")
