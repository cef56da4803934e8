"""Gradient-masking check: a gradient-free attack (Square) read against the gradient attacks of one result row.

Masking makes every gradient attack look weak (a high robust accuracy) while a search that needs no gradient
still finds the errors; so a gradient-free robust accuracy well below the lowest gradient one is the warning
the report prints.
"""

from __future__ import annotations

from collections.abc import Mapping

from hwsearch.robust.attacks import is_gradient_free

__all__ = ["MASKING_MARGIN", "masking_gap", "masking_warning"]

MASKING_MARGIN = 0.02  # 2 points: a gradient-free attack this much stronger than every gradient one is a warning


def masking_gap(per_attack: Mapping[str, float]) -> float | None:
    """The lowest gradient attack's robust accuracy minus the lowest gradient-free one (a fraction).

    Positive means the gradient-free search breaks images every gradient attack missed. ``None`` when the row
    lacks either kind; ``worst`` (the per-sample worst case) is not an attack column and is ignored.
    """
    grad = [v for k, v in per_attack.items() if k != "worst" and not is_gradient_free(k)]
    free = [v for k, v in per_attack.items() if k != "worst" and is_gradient_free(k)]
    if not grad or not free:
        return None
    return min(grad) - min(free)


def masking_warning(per_attack: Mapping[str, float], margin: float = MASKING_MARGIN) -> bool:
    """Possible gradient masking: gradient-free robust accuracy more than ``margin`` below every gradient attack's.

    Masking makes gradient attacks look weak (high robust accuracy) while a gradient-free one finds the errors.
    """
    gap = masking_gap(per_attack)
    return gap is not None and gap > margin + 1e-12
