"""Checkpoints: a model's weights plus what is needed to rebuild it, loaded without unpickling code.

File layout (``torch.save`` of a plain dict, schema 1)::

    {"schema": 1, "model_name": str, "dataset": str, "num_classes": int, "input_shape": [C, H, W],
     "mean": [..], "std": [..], "metrics": {str: number | str | bool | None}, "torch_version": str,
     "state_dict": {qualified name: tensor}}

Loading uses ``torch.load(weights_only=True)``, which refuses any pickle that would import or call code.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwsearch.errors import CheckpointError, ModelError
from hwsearch.io import atomic_write_with
from hwsearch.models import build_model

__all__ = ["SCHEMA", "save_checkpoint", "load_checkpoint", "model_from_checkpoint"]

SCHEMA = 1

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "model_name": str,
    "dataset": str,
    "num_classes": int,
    "input_shape": (list, tuple),
    "mean": (list, tuple),
    "std": (list, tuple),
    "metrics": dict,
    "state_dict": dict,
}


def _plain_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics as plain Python scalars, so the file needs nothing but primitives to load."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
            value = value.item()
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise CheckpointError(f"metric {key!r} must be a number, string, bool or None, got {type(value).__name__}")
        out[str(key)] = value
    return out


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    model_name: str,
    dataset: str,
    num_classes: int,
    input_shape: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    metrics: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights and build arguments to ``path`` atomically (old file or complete new one).

    ``extra`` (JSON-serialisable: e.g. the policy and calibration a defended model was fine-tuned with) is
    stored as a JSON string, so loading stays weights-only.
    """
    payload = {
        "schema": SCHEMA,
        "model_name": str(model_name),
        "dataset": str(dataset),
        "num_classes": int(num_classes),
        "input_shape": [int(d) for d in input_shape],
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "metrics": _plain_metrics(metrics),
        "torch_version": str(torch.__version__),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "extra_json": json.dumps(dict(extra or {})),
    }
    try:
        return atomic_write_with(path, lambda tmp: torch.save(payload, tmp))
    except OSError as exc:  # a folder in the way, a file where a folder should be, no permission, disk full
        why = exc.strerror or type(exc).__name__
        raise CheckpointError(f"cannot write checkpoint {str(path)!r} ({why}); choose another --out") from None


def load_checkpoint(path: str | os.PathLike[str]) -> dict:
    """The checkpoint dict, validated; CheckpointError (one line) if missing, corrupt, unsafe or foreign."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols; the error says enough
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"Unsupported global: (?:GLOBAL )?([\w.]+)", text)
        if found:
            raise CheckpointError(
                f"checkpoint {path} refused: it references {found.group(1)} (pickled code or objects, not weights)"
            ) from exc
        detail = re.search(r"WeightsUnpickler error: *\n?\s*(.+)", text)
        why = detail.group(1).strip()[:160] if detail else _first_line(exc)
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a weights-only torch file ({why}); {_REMEDY}"
        ) from exc
    except Exception as exc:  # torch raises many types for truncated/foreign files; all mean "cannot use"
        why = "empty or truncated" if isinstance(exc, EOFError) else _first_line(exc)
        raise CheckpointError(f"checkpoint {path} is not a readable torch file ({why}); {_REMEDY}") from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, not an hwsearch checkpoint dict")
    if ckpt.get("schema") != SCHEMA:
        raise CheckpointError(
            f"checkpoint {path} has schema {ckpt.get('schema')!r}; this hwsearch reads schema {SCHEMA}"
        )
    for key, kind in _REQUIRED.items():
        if not isinstance(ckpt.get(key), kind):
            raise CheckpointError(f"checkpoint {path}: field {key!r} is missing or not a {_kind_name(kind)}")
    if len(ckpt["input_shape"]) != 3:
        raise CheckpointError(f"checkpoint {path}: input_shape {ckpt['input_shape']!r} is not (C, H, W)")
    for key, value in ckpt["state_dict"].items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint {path}: state_dict entry {key!r} is not a tensor")
    return ckpt


_REMEDY = "re-create it with `hwsearch train` or pass another --checkpoint"


def _first_line(exc: BaseException) -> str:
    """``Type: first sentence`` of an exception, at most ~120 characters (torch's messages run long)."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    first = text.splitlines()[0].split(". ")[0].rstrip(".")
    return f"{type(exc).__name__}: {first[:120]}"


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def model_from_checkpoint(path: str | os.PathLike[str], model_name: str | None = None) -> tuple[nn.Module, dict]:
    """Build the checkpoint's model (or ``model_name``), load its weights and return (model in eval mode, meta).

    ``meta`` is the checkpoint without ``state_dict``. A checkpoint naming a custom ``module:factory`` is only
    rebuilt when the caller passes that name explicitly: a file must not choose which code gets imported.
    """
    ckpt = load_checkpoint(path)
    stored = ckpt["model_name"]
    name = stored if model_name is None else model_name
    if model_name is None and ":" in stored:
        raise CheckpointError(
            f"checkpoint {path} was made with custom model {stored!r}; to import that code, pass "
            f"model_name={stored!r} (CLI: --model-factory {stored})"
        )
    try:
        model = build_model(name, ckpt["num_classes"], tuple(ckpt["input_shape"]), ckpt["mean"], ckpt["std"])
    except ModelError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot rebuild model {name!r}: {exc}") from exc
    _load_state(model, ckpt["state_dict"], path, name, stored)
    model.eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("state_dict", "extra_json")}
    try:
        meta["extra"] = json.loads(ckpt.get("extra_json", "{}"))
    except (TypeError, ValueError):
        raise CheckpointError(f"checkpoint {path}: its extra metadata is corrupt") from None
    return model, meta


def _load_state(model: nn.Module, state: dict, path: Any, name: str, stored: str) -> None:
    """Strict load with one line naming what differs (missing/unexpected keys, first shape mismatch)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        (k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) e.g. {missing[0]!r}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s) e.g. {unexpected[0]!r}")
        if shapes:
            k, have, want = shapes[0]
            parts.append(f"{len(shapes)} shape mismatch(es) e.g. {k!r} is {have} in the file, {want} in the model")
        label = name if name == stored else f"{name} (file says {stored})"
        raise CheckpointError(f"checkpoint {path} does not fit model {label}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)
