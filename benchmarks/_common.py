"""Shared set-up of the benchmarks: a trained default checkpoint, and results files that say how they were made.

Every figure a benchmark reports goes into ``benchmarks/results/<name>.json`` together with the command, the
commit, the machine and the date (:func:`provenance`); the markdown beside it is rendered from that JSON
(:func:`write_results`), never typed in.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hwsearch.hardware.cpu import cpu_model as _cpu_model
from hwsearch.io import atomic_write_json, atomic_write_text
from hwsearch.pipelines import BaselineConfig, train_baseline

__all__ = [
    "RESULTS",
    "default_checkpoint",
    "provenance",
    "provenance_md",
    "write_results",
    "readme_markers",
    "update_readme",
]

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parents[1]


def default_checkpoint(path: str | None, epochs: int = 8) -> Path:
    """The given checkpoint, or the default smallcnn on mnist5k trained into ``benchmarks/results/fp32.pt``."""
    if path:
        return Path(path)
    ckpt = RESULTS / "fp32.pt"
    if not ckpt.exists():
        train_baseline(BaselineConfig(epochs=epochs), ckpt)
    return ckpt


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """Command, commit (``git rev-parse HEAD``; ``dirty`` when tracked files differ from it), machine and date."""
    import torch

    args = sys.argv[1:] if argv is None else argv
    module = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "?"
    return {
        "command": " ".join(["python", "-m", f"benchmarks.{module}", *args]),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "torch": torch.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def provenance_md(meta: dict[str, Any]) -> str:
    """The provenance block at the foot of every rendered results file."""
    m = meta["machine"]
    dirty = " (with uncommitted changes)" if meta.get("dirty") else ""
    return (
        f"\nProduced by `{meta['command']}` at commit {meta['commit']}{dirty}, {meta['date']}, on {m['cpu']} "
        f"({m['cores']} cores, {m['torch_threads']} torch thread(s), load average at start "
        f"{', '.join(f'{x:.1f}' for x in m['load_average'] or [])}); torch {meta['torch']}.\n"
    )


def write_results(name: str, payload: dict[str, Any], render: Callable[[dict[str, Any]], str]) -> tuple[Path, Path]:
    """Write ``RESULTS/<name>.json`` (payload with ``meta``), then ``<name>.md`` rendered from the file just written."""
    if "meta" not in payload:
        raise ValueError("payload needs a 'meta' entry from provenance()")
    js = atomic_write_json(RESULTS / f"{name}.json", payload)
    import json

    data = json.loads(js.read_text(encoding="utf-8"))
    md = atomic_write_text(RESULTS / f"{name}.md", render(data) + provenance_md(data["meta"]))
    print(md.read_text(encoding="utf-8"), end="")
    return js, md


def search_estimate() -> tuple[int, int]:
    """(PGD steps, images) of the attack pair a search runs unless told otherwise: ``SearchJobConfig``'s defaults."""
    import dataclasses

    from hwsearch.job import SearchJobConfig

    fields = {f.name: f.default for f in dataclasses.fields(SearchJobConfig)}
    return int(fields["steps"]), int(fields["robust_images"])


def faithful_estimate(model: str, fidelity: Path = RESULTS / "robust_fidelity.json") -> tuple[int, int]:
    """(PGD steps, images) of the cheapest search-time robustness estimate that ``benchmarks.robust_fidelity``
    found faithful for ``model`` (Spearman >= 0.9 with the strong set and its best policy in the top 5); the
    search's default when that file has no such estimate for the model."""
    if not fidelity.is_file():
        return search_estimate()
    rec = next((r for r in json.loads(fidelity.read_text())["records"] if r["model"] == model), None)
    faithful = [
        (float(e["seconds_per_policy"]), name)
        for name, e in (rec or {}).get("estimates", {}).items()
        if e["spearman"] >= 0.9 and e["strong_best_in_top5"]
    ]
    if not faithful:
        return search_estimate()
    steps, images = re.fullmatch(r"pgd(\d+)x(\d+)", min(faithful)[1]).groups()  # type: ignore[union-attr]
    return int(steps), int(images)


def readme_markers(name: str) -> tuple[str, str]:
    """The comment lines between which ``python -m benchmarks.<name>`` writes its README block."""
    return (
        f"<!-- benchmarks.{name}: begin (written by python -m benchmarks.{name}; do not edit) -->",
        f"<!-- benchmarks.{name}: end -->",
    )


def update_readme(name: str, block: str, readme: Path = RESULTS.parents[1] / "README.md") -> bool:
    """Replace the README's block between ``name``'s markers with ``block`` (False when it has no markers)."""
    from hwsearch.io import atomic_write_text

    begin, end = readme_markers(name)
    text = readme.read_text(encoding="utf-8")
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(readme, f"{head}{begin}\n{block}\n{end}{tail}")
    return True


def rerender(
    name: str, render: Callable[[dict[str, Any]], str], readme_block: Callable[[dict[str, Any]], str] | None = None
) -> None:
    """Write ``<name>.md`` (and the README block, when the benchmark has one) again from the JSON a run wrote."""
    data = json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))
    atomic_write_text(RESULTS / f"{name}.md", render(data) + provenance_md(data["meta"]))
    if readme_block is not None:
        update_readme(name, readme_block(data))
