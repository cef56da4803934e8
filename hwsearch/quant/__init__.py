"""Fake quantization: quantizers with straight-through gradients, calibration, ``apply_policy``."""

from hwsearch.quant.apply import (
    GRADIENT_MODES,
    QuantWrapper,
    apply_policy,
    gradient_mode,
    quant_wrappers,
    quantizable_names,
    remove_quantizers,
)
from hwsearch.quant.calibration import ActRange, Calibration, calibrate
from hwsearch.quant.fold import fold_batch_norms
from hwsearch.quant.quantizers import activation_levels, quantize_activation, quantize_weight, weight_levels

__all__ = [
    "GRADIENT_MODES",
    "ActRange",
    "Calibration",
    "QuantWrapper",
    "activation_levels",
    "apply_policy",
    "calibrate",
    "fold_batch_norms",
    "gradient_mode",
    "quant_wrappers",
    "quantizable_names",
    "quantize_activation",
    "quantize_weight",
    "remove_quantizers",
    "weight_levels",
]
