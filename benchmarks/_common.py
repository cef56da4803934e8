"""Shared set-up of the benchmarks: a trained default checkpoint, made once and reused."""

from __future__ import annotations

from pathlib import Path

from hwsearch.pipelines import BaselineConfig, train_baseline

RESULTS = Path(__file__).resolve().parent / "results"


def default_checkpoint(path: str | None, epochs: int = 8) -> Path:
    """The given checkpoint, or the default smallcnn on mnist5k trained into ``benchmarks/results/fp32.pt``."""
    if path:
        return Path(path)
    ckpt = RESULTS / "fp32.pt"
    if not ckpt.exists():
        train_baseline(BaselineConfig(epochs=epochs), ckpt)
    return ckpt
