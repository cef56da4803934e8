"""The part of ``benchmarks.int8_cpus`` that runs on the CPU under test, emulated or not, as a script of its own.

It needs only numpy and onnxruntime (an aarch64 Python under ``qemu-aarch64`` has nothing else); ``--measure``
also runs ``measure_layers``, which needs torch and hwsearch. It prints one JSON line: the machine, the CPU
features numpy reads from ``cpuid`` / ``HWCAP``, and what each exported file gave.

    python benchmarks/_int8_child.py WORK_DIR [--measure]
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

# (runtime, int8 form) of the measured int8 cells: PyTorch's fbgemm, ONNX Runtime as picked, ONNX Runtime in s8
MEASURED = (("torch", "auto"), ("onnxruntime", "auto"), ("onnxruntime", "s8"))


def cpu_features() -> list[str]:
    """The CPU features numpy found (lower case), the same source ``hwsearch.hardware.cpu`` reads."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as found
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_features__ as found
    return sorted(name.lower() for name, present in found.items() if present)


def run_files(work: Path) -> list[dict[str, Any]]:
    """Each exported file, with ONNX Runtime's graph optimizations (fused integer kernels) and without."""
    import numpy as np
    import onnxruntime as ort

    data = np.load(work / "data.npz")
    x = data["x"]
    rows = []
    for path in sorted(work.glob("*.onnx")):
        style, form = path.stem.split("-")
        ref = data[f"ref_{style}"].argmax(1)
        for optimize in (True, False):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            if not optimize:
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            out = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
            rows.append(
                {
                    "style": style,
                    "form": form,
                    "optimized": optimize,
                    "agreement": float((out.argmax(1) == ref).mean()),
                    "max_logit_diff": float(np.abs(out - data[f"unfused_{path.stem}"]).max()),
                }
            )
    return rows


def run_measured(work: Path) -> list[dict[str, Any]]:
    """How many layers keep a W8A8 cell in ``measure_layers`` (``hwsearch latency measure``), and why not."""
    import torch

    from hwsearch.hardware.cpu import int8_form
    from hwsearch.hardware.measure import MeasureConfig, measure_layers

    blob = torch.load(work / "net.pt", weights_only=False)
    rows = []
    for runtime, form in MEASURED:
        rejected: dict[str, dict[str, str]] = {}
        config = MeasureConfig(repeats=2, warmup=0, int8_form=form)
        cells = measure_layers(blob["net"], blob["layers"], runtime=runtime, config=config, rejected=rejected)
        shown = "reduce_range" if runtime == "torch" else form if form != "auto" else f"auto ({int8_form()})"
        rows.append(
            {
                "runtime": runtime,
                "int8_form": shown,
                "layers": len(blob["layers"]),
                "w8a8_kept": sum("W8A8" in cells[ly.name] for ly in blob["layers"]),
                "reasons": sorted({why["W8A8"] for why in rejected.values() if "W8A8" in why}),
            }
        )
    return rows


def main(argv: list[str]) -> dict[str, Any]:
    import onnxruntime as ort

    work = Path(argv[0])
    return {
        "machine": platform.machine(),
        "features": cpu_features(),
        "onnxruntime": ort.__version__,
        "files": run_files(work),
        "measured": run_measured(work) if "--measure" in argv[1:] else [],
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
