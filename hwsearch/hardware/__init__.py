"""Device cost models (BitFusion, BISMO, tables) that price a bit-width policy in latency, energy and size.

Submodules not imported here: ``hwsearch.hardware.measure`` (per-layer timing with PyTorch / ONNX Runtime) and
``hwsearch.hardware.regenerate`` (the shipped tables; ``python -m hwsearch.hardware.regenerate``).
"""

from __future__ import annotations

from hwsearch.hardware.base import FLOAT_BITS, CostModel, LayerCost, UnknownDeviceError, bit_key, check_bits
from hwsearch.hardware.bismo import BismoConfig, BismoCostModel, BismoResult, bismo_matmul
from hwsearch.hardware.bitfusion import (
    ALL_ORDERS,
    DEFAULT_ORDERS,
    BitFusionConfig,
    BitFusionCostModel,
    BitFusionEnergy,
    ConvShape,
    SimResult,
    compute_cycles,
    fastest_mode,
    layer_shape,
    perf_factor,
    simulate,
)
from hwsearch.hardware.cost import (
    DEFAULT_DEVICE,
    PolicyCost,
    bit_grid,
    device_from_spec,
    device_spec,
    float_size_bits,
    get_cost_model,
    is_table_path,
    list_devices,
    policy_cost,
    supported_pairs,
)
from hwsearch.hardware.table import (
    TABLE_SCHEMA_VERSION,
    CostTable,
    TableCostModel,
    TableEntry,
    apq_key_to_signatures,
    build_command,
    build_table,
    import_apq_json,
    import_haq_npy,
    load_table,
    render_table,
    save_table,
)

__all__ = [
    "ALL_ORDERS",
    "DEFAULT_DEVICE",
    "DEFAULT_ORDERS",
    "FLOAT_BITS",
    "TABLE_SCHEMA_VERSION",
    "BismoConfig",
    "BismoCostModel",
    "BismoResult",
    "BitFusionConfig",
    "BitFusionCostModel",
    "BitFusionEnergy",
    "ConvShape",
    "CostModel",
    "CostTable",
    "LayerCost",
    "PolicyCost",
    "SimResult",
    "TableCostModel",
    "TableEntry",
    "UnknownDeviceError",
    "apq_key_to_signatures",
    "bismo_matmul",
    "bit_grid",
    "bit_key",
    "build_command",
    "build_table",
    "check_bits",
    "compute_cycles",
    "device_from_spec",
    "device_spec",
    "fastest_mode",
    "float_size_bits",
    "get_cost_model",
    "import_apq_json",
    "import_haq_npy",
    "is_table_path",
    "layer_shape",
    "list_devices",
    "load_table",
    "perf_factor",
    "policy_cost",
    "render_table",
    "save_table",
    "simulate",
    "supported_pairs",
]
