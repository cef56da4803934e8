"""Robustness of quantized networks: attacks with worst-case accounting, Lipschitz term, amplification probe."""

from hwsearch.robust.amplification import AmplificationResult, amplification_profile, write_amplification
from hwsearch.robust.attacks import (
    ATTACK_GRADS,
    ATTACK_LOSSES,
    ATTACK_METHODS,
    ATTACK_NORMS,
    AttackConfig,
    RobustResult,
    attack,
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

__all__ = [
    "ATTACK_GRADS",
    "ATTACK_LOSSES",
    "ATTACK_METHODS",
    "ATTACK_NORMS",
    "AmplificationResult",
    "AttackConfig",
    "LipschitzRegularizer",
    "RobustResult",
    "amplification_profile",
    "attack",
    "layer_lipschitz_bounds",
    "lipschitz_regularizer",
    "orthogonality_penalty",
    "report_attacks",
    "robust_accuracy",
    "search_attacks",
    "write_amplification",
]
