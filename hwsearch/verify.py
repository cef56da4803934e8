"""Check an exported ONNX model against what the search promised: latency predicted vs measured, and agreement.

``hwsearch latency verify`` runs :func:`verify_onnx`: the file's policy (from its metadata) is priced on an
``ort-cpu`` target, the file itself is timed by ONNX Runtime at batch 1 on the same threads, the float model is
exported and timed alike, and the file's top-1 answers on a split are compared with the fake-quant model's.
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

    @property
    def error(self) -> float:
        """(predicted - measured) / measured."""
        return self.predicted_ms / self.measured_ms - 1.0

    @property
    def speedup(self) -> float:
        """Measured float latency over the exported model's."""
        return self.fp32_ms / self.measured_ms

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "error": self.error, "speedup_vs_fp32": self.speedup}


def onnx_policy(path: str | Path) -> Policy:
    """The policy ``hwsearch export --format onnx`` stored in the file's metadata."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        msg = f"{path} is not an ONNX model ({type(exc).__name__}); give a file `hwsearch export` wrote"
        raise ConfigError(msg) from None
    props = {p.key: p.value for p in proto.metadata_props}
    if "hwsearch.policy" not in props:
        raise PolicyError(f"{path} has no hwsearch.policy metadata; export it with hwsearch export --format onnx")
    return Policy.from_dict(json.loads(props["hwsearch.policy"]))


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
    from hwsearch.onnx_export import export_onnx
    from hwsearch.quant import apply_policy
    from hwsearch.workflow import prepare_cost_model

    path = Path(path)
    cost_model = get_cost_model(target)
    if not isinstance(cost_model, OrtCpuCostModel):
        raise ConfigError(
            f"--target {target!r}: verify times the file on this CPU; use ort-cpu, ort-cpu:N or ort-cpu:all"
        )
    policy = onnx_policy(path)
    policy.check_against(ws.layer_names)
    prepare_cost_model(cost_model, ws)
    shape = tuple(int(d) for d in ws.splits.input_shape)
    predicted = cost_model.predict_ms(ws.layers, policy)
    measured = cost_model.time_model(path, shape)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(ws, uniform_policy(ws.layer_names, FLOAT_BITS), None, Path(tmp) / "fp32.onnx", shape)
        fp32_ms = cost_model.time_model(fp32, shape)
    x, y = ws.split(split, images)
    qmodel = apply_policy(ws.model, policy, ws.calibration).cpu().eval()
    with torch.no_grad():
        ref = torch.cat([qmodel(x[i : i + 256]) for i in range(0, len(x), 256)]).argmax(1).numpy()
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
    )
