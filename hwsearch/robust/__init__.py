"""Robustness of quantized networks: attacks with worst-case accounting, Lipschitz term, amplification probe."""

from hwsearch.robust.amplification import AmplificationResult, amplification_profile, write_amplification
from hwsearch.robust.attacks import (
    ATTACK_GRADS,
    ATTACK_LOSSES,
    ATTACK_METHODS,
    ATTACK_NORMS,
    GRADIENT_FREE_METHODS,
    SQUARE_QUERIES,
    AttackConfig,
    RobustResult,
    attack,
    attack_survivors,
    image_starts,
    is_gradient_free,
    report_attacks,
    robust_accuracy,
    search_attacks,
)
from hwsearch.robust.lipschitz import (
    LipschitzRegularizer,
    layer_lipschitz_bounds,
    lipschitz_regularizer,
    orthogonality_penalty,
)
from hwsearch.robust.masking import MASKING_MARGIN, masking_gap, masking_warning
from hwsearch.robust.square import square_attack

__all__ = [
    "ATTACK_GRADS",
    "ATTACK_LOSSES",
    "ATTACK_METHODS",
    "ATTACK_NORMS",
    "GRADIENT_FREE_METHODS",
    "MASKING_MARGIN",
    "SQUARE_QUERIES",
    "AmplificationResult",
    "AttackConfig",
    "LipschitzRegularizer",
    "RobustResult",
    "amplification_profile",
    "attack",
    "attack_survivors",
    "image_starts",
    "is_gradient_free",
    "layer_lipschitz_bounds",
    "lipschitz_regularizer",
    "masking_gap",
    "masking_warning",
    "orthogonality_penalty",
    "report_attacks",
    "robust_accuracy",
    "search_attacks",
    "square_attack",
    "write_amplification",
]
