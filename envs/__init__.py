"""Gymnasium environments of hwsearch, installed as ``hwsearch.envs``."""

import gymnasium as gym
from hwsearch.envs.mixed_precision import (
    ENFORCE_MODES,
    OBS_FEATURES,
    CostModel,
    EnvConfig,
    EvalResult,
    MixedPrecisionEnv,
    PolicyEvaluator,
    action_to_index,
)

__all__ = [
    "ENFORCE_MODES",
    "OBS_FEATURES",
    "CostModel",
    "EnvConfig",
    "EvalResult",
    "MixedPrecisionEnv",
    "PolicyEvaluator",
    "action_to_index",
    "ENV_ID",
]

ENV_ID = "hwsearch/MixedPrecision-v0"

if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="hwsearch.envs.mixed_precision:MixedPrecisionEnv")
