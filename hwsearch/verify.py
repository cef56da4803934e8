"""Check an exported ONNX model against what the search promised: latency predicted vs measured, and agreement.

``hwsearch latency verify`` runs :func:`verify_onnx`: the file's policy (from its metadata) is priced on an
``ort-cpu`` target, the file itself is timed by ONNX Runtime at batch 1 on the same threads, the float model is
exported and timed alike (the two in turn, round by round, so both meet the same host), and the file's top-1
answers on a split are compared with the fake-quant model's. Besides the prediction as the table has it, the
prediction *anchored* on the float model's time now (:attr:`Verified.anchored_ms`) is reported: on a shared host
whose speed drifts between the table's first use and the check, it tests what the search relies on, the
policies' latencies relative to each other.

The reference is the fake-quant model in the file's own form (:func:`hwsearch.onnx_export.deployed_model`): for
the ``kernels`` style that is the model with the deployment's roundings (biases on the accumulator grid, an 8-bit
output where no quantized layer alone reads a layer's output), so agreement checks that the file computes what
hwsearch says it does. The plain fake-quant model (no such roundings) is compared too: on a deep network whose
answers sit close to a tie (mobilenet_v2 after 3 epochs) the extra roundings alone move some of them
(``benchmarks/results/real_cpu.md`` has both agreements per row).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hwsearch.errors import ConfigError, PolicyError
from hwsearch.policy import FLOAT_BITS, Policy, uniform_policy

__all__ = ["Verified", "onnx_policy", "verify_onnx"]


@dataclass(frozen=True)
class Verified:
    """Predicted and measured latency (ms, batch 1) of an exported model, its float model's, and agreement."""

    target: str
    threads: int
    predicted_ms: float
    measured_ms: float
    fp32_ms: float
    agreement: float
    accuracy_onnx: float
    accuracy_fake_quant: float
    images: int
    agreement_plain: float  # with the fake-quant model without the deployment's roundings
    accuracy_plain: float
    predicted_fp32_ms: float  # the target's prediction for the all-float policy

    @property
    def error(self) -> float:
        """(predicted - measured) / measured."""
        return self.predicted_ms / self.measured_ms - 1.0

    @property
    def anchored_ms(self) -> float:
        """The prediction scaled by how fast the float model runs now against its prediction: the table's
        prices at today's speed of the machine. The search's budgets are relative (``latency=0.5x`` of fixed
        8-bit), so what it relies on is this ratio structure, not the absolute scale; on a shared host whose
        speed drifts between the table's first use and now, this is the prediction the drift does not move."""
        return self.predicted_ms * self.fp32_ms / self.predicted_fp32_ms

    @property
    def error_anchored(self) -> float:
        """(anchored - measured) / measured: the predicted speed-up over float against the measured one."""
        return self.anchored_ms / self.measured_ms - 1.0

    @property
    def speedup(self) -> float:
        """Measured float latency over the exported model's."""
        return self.fp32_ms / self.measured_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "error": self.error,
            "anchored_ms": self.anchored_ms,
            "error_anchored": self.error_anchored,
            "speedup_vs_fp32": self.speedup,
        }


def onnx_policy(path: str | Path) -> Policy:
    """The policy ``hwsearch export --format onnx`` stored in the file's metadata."""
    return Policy.from_dict(json.loads(_onnx_props(path)["hwsearch.policy"]))


def _onnx_props(path: str | Path) -> dict[str, str]:
    """The file's ``hwsearch.*`` metadata (its policy always there)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        msg = f"{path} is not an ONNX model ({type(exc).__name__}); give a file `hwsearch export` wrote"
        raise ConfigError(msg) from None
    props = {p.key: p.value for p in proto.metadata_props}
    if "hwsearch.policy" not in props:
        raise PolicyError(f"{path} has no hwsearch.policy metadata; export it with hwsearch export --format onnx")
    return props


def _onnx_logits(path: Path, x: torch.Tensor, threads: int) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 256].numpy()})[0] for i in range(0, len(x), 256)])


def verify_onnx(
    ws: Any, path: str | Path, target: str = "ort-cpu", *, split: str = "test", images: int | None = None
) -> Verified:
    """Time ``path`` against its ``target`` prediction and compare its answers with the fake-quant model's."""
    from hwsearch.hardware.cost import get_cost_model
    from hwsearch.hardware.ort_cpu import OrtCpuCostModel
    from hwsearch.int_kernels import OUTPUT_RANGE_IMAGES, calibrate_output_ranges
    from hwsearch.onnx_export import deployed_model, export_onnx
    from hwsearch.quant import apply_policy
    from hwsearch.workflow import prepare_cost_model

    path = Path(path)
    cost_model = get_cost_model(target)
    if not isinstance(cost_model, OrtCpuCostModel):
        raise ConfigError(
            f"--target {target!r}: verify times the file on this CPU; use ort-cpu, ort-cpu:N or ort-cpu:all"
        )
    props = _onnx_props(path)
    policy = Policy.from_dict(json.loads(props["hwsearch.policy"]))
    policy.check_against(ws.layer_names)
    prepare_cost_model(cost_model, ws)
    shape = tuple(int(d) for d in ws.splits.input_shape)
    predicted = cost_model.predict_ms(ws.layers, policy)
    float_policy = uniform_policy(ws.layer_names, FLOAT_BITS)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(ws, float_policy, None, Path(tmp) / "fp32.onnx", shape)
        measured, fp32_ms = cost_model.time_models([path, fp32], shape)  # in turn: the same host for both
    x, y = ws.split(split, images)
    plain = apply_policy(ws.model, policy, ws.calibration).cpu().eval()
    style = props.get("hwsearch.style", "qdq")
    if "hwsearch.output_ranges" in props:
        ranges = {n: (lo, hi) for n, (lo, hi) in json.loads(props["hwsearch.output_ranges"]).items()}
    elif style == "kernels":  # a file written before the ranges were stored: they came from these images
        ranges = calibrate_output_ranges(plain, ws.split("train", OUTPUT_RANGE_IMAGES)[0])
    else:
        ranges = {}
    form = deployed_model(plain, shape, style=style, output_ranges=ranges)
    ref, ref_plain = (_top1(m, x) for m in (form, plain))
    got = _onnx_logits(path, x, cost_model.threads).argmax(1)
    labels = y.numpy()
    return Verified(
        target=cost_model.name,
        threads=cost_model.threads,
        predicted_ms=predicted,
        measured_ms=measured,
        fp32_ms=fp32_ms,
        agreement=float(np.mean(got == ref)),
        accuracy_onnx=float(np.mean(got == labels)),
        accuracy_fake_quant=float(np.mean(ref == labels)),
        images=len(labels),
        agreement_plain=float(np.mean(got == ref_plain)),
        accuracy_plain=float(np.mean(ref_plain == labels)),
        predicted_fp32_ms=cost_model.predict_ms(ws.layers, float_policy),
    )


def _top1(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(x[i : i + 256]) for i in range(0, len(x), 256)]).argmax(1).numpy()
