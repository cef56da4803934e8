"""Int8 on x86 CPUs other than this one: the exported file and the measured int8 kernels, checked on emulated CPUs.

QEMU's user-mode emulator (``qemu-x86_64 -cpu MODEL``, Debian's ``qemu-user``) runs this Python on an emulated CPU
whose ``cpuid`` reports only that model's features, so ONNX Runtime's and PyTorch's kernels take the code paths
they take on such a CPU. ``EPYC`` (AMD Zen 1) and ``Haswell`` have AVX2 and no VNNI: their u8 x s8 kernels add
pairs of products into saturating int16s (:mod:`hwsearch.hardware.cpu`), the cause of the wrong answers an AMD
EPYC gave. QEMU 7.2 emulates AVX2, not AVX-512, so a VNNI CPU is checked as ``host`` where this machine has VNNI.

For smallcnn's all-W8A8 policy (the policy with the most 8-bit weights), on ``--images`` test images:

1. the policy exported in both int8 forms (``portable``, ``s8``) and both styles (``qdq``, the default export;
   ``kernels``, what ``ort-cpu`` prices), run by ONNX Runtime with its graph optimizations (the fused integer
   kernels that saturate) and without them (the file's own arithmetic): top-1 agreement with the fake-quant model
   in the file's form, and the largest logit difference from the same file run unfused on this machine;
2. ``measure_layers`` (what ``hwsearch latency measure`` times): how many of the model's layers keep a ``W8A8`` cell,
   PyTorch's fbgemm and ONNX Runtime in the form ``auto`` picks for the CPU, and ONNX Runtime in ``s8`` forced,
   with the reasons a cell was left out.

    python -m benchmarks.int8_cpus [--cpus host EPYC Haswell] [--images 500]

Writes benchmarks/results/int8_cpus.json, int8_cpus.md and the README's table. Needs ``qemu-x86_64`` (``apt-get install qemu-user``)
for any CPU but ``host``; an emulated run takes minutes (QEMU translates every vector instruction).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS, provenance, provenance_md, update_readme, write_results

ROOT = Path(__file__).resolve().parents[1]
STYLES = ("qdq", "kernels")
MEASURED = (("torch", "auto"), ("onnxruntime", "auto"), ("onnxruntime", "s8"))
FLAGS = ("avx2", "avx512f", "avx512vnni", "avx512_vnni", "avxvnni")


def prepare_files(work: Path, images: int, checkpoint: Path | None = None) -> None:
    """The exported files, the inputs, the fake-quant references and this machine's unfused outputs (smallcnn's
    benchmark checkpoint unless ``checkpoint`` names another)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from benchmarks.real_cpu import _checkpoint
    from hwsearch.hardware.cpu import INT8_FORMS
    from hwsearch.onnx_export import export_onnx
    from hwsearch.workflow import prepare, quantize_as_exported

    ws = prepare(checkpoint or _checkpoint("smallcnn"))
    policy = ws.uniform(8)
    x = ws.split("test")[0][:images]
    arrays: dict[str, Any] = {"x": x.numpy()}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for style in STYLES:
        with torch.no_grad():
            arrays[f"ref_{style}"] = quantize_as_exported(ws, policy, style).eval()(x).numpy()
        for form in INT8_FORMS:
            path = work / f"{style}-{form}.onnx"
            calibration = ws.calibration if style == "qdq" else None
            export_onnx(ws, policy, calibration, path, ws.splits.input_shape, int8_form=form, style=style)
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            arrays[f"unfused_{path.stem}"] = sess.run(None, {"input": arrays["x"]})[0]
    np.savez(work / "data.npz", **arrays)
    torch.save({"net": ws.model.float().eval(), "layers": list(ws.layers)}, work / "net.pt")


def child(work: Path) -> dict[str, Any]:
    """What the CPU this process runs on (emulated or not) computes: run in a process of its own."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from hwsearch.hardware.cpu import cpu_flags, has_vnni, int8_form
    from hwsearch.hardware.measure import MeasureConfig, measure_layers

    data = np.load(work / "data.npz")
    x = data["x"]
    files = []
    for path in sorted(work.glob("*.onnx")):
        style, form = path.stem.split("-")
        ref = data[f"ref_{style}"].argmax(1)
        for optimize in (True, False):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            if not optimize:
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            out = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
            files.append(
                {
                    "style": style,
                    "form": form,
                    "optimized": optimize,
                    "agreement": float((out.argmax(1) == ref).mean()),
                    "max_logit_diff": float(np.abs(out - data[f"unfused_{path.stem}"]).max()),
                }
            )
    blob = torch.load(work / "net.pt", weights_only=False)
    measured = []
    for runtime, form in MEASURED:
        rejected: dict[str, dict[str, str]] = {}
        config = MeasureConfig(repeats=2, warmup=0, int8_form=form)
        cells = measure_layers(blob["net"], blob["layers"], runtime=runtime, config=config, rejected=rejected)
        reasons = sorted({why["W8A8"] for why in rejected.values() if "W8A8" in why})
        shown = "reduce_range" if runtime == "torch" else form if form != "auto" else f"auto ({int8_form()})"
        measured.append(
            {
                "runtime": runtime,
                "int8_form": shown,
                "layers": len(blob["layers"]),
                "w8a8_kept": sum("W8A8" in cells[ly.name] for ly in blob["layers"]),
                "reasons": reasons,
            }
        )
    flags = cpu_flags()
    return {
        "flags": [f for f in FLAGS if f in flags],
        "has_vnni": has_vnni(),
        "int8_form": int8_form(),
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "onnxruntime": ort.__version__,
        "files": files,
        "measured": measured,
    }


def run_cpu(cpu: str, work: Path) -> dict[str, Any]:
    """Run :func:`child` on ``cpu`` (``host``: this machine; else a QEMU CPU model)."""
    prefix: list[str] = []
    if cpu != "host":
        qemu = shutil.which("qemu-x86_64")
        if qemu is None:
            raise SystemExit("qemu-x86_64 is missing: apt-get install qemu-user, or pass --cpus host")
        prefix = [qemu, "-cpu", cpu]
    t0 = time.perf_counter()
    cmd = [*prefix, sys.executable, "-m", "benchmarks.int8_cpus", "--child", str(work)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = [ln for ln in done.stderr.splitlines() if "TCG doesn't support" not in ln][-20:]
        raise SystemExit(f"{cpu}: the child failed ({done.returncode}):\n" + "\n".join(tail))
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return {"cpu": cpu, "emulated": cpu != "host", "wall_s": round(time.perf_counter() - t0, 1), **row}


def render(data: dict[str, Any]) -> str:
    lines = [
        "# Int8 on other x86 CPUs (QEMU user-mode emulation)",
        "",
        f"smallcnn, all W8A8, {data['images']} test images. `agreement`: top-1 agreement with the fake-quant model",
        "in the file's form; `max logit diff`: against the same file run unfused (the file's own arithmetic) on the",
        "host. `picked` marks the int8 form hwsearch chooses for that CPU (`int8_form`), the one `export` writes",
        "with `--int8-form auto` and `ort-cpu` and `latency measure` use.",
        "",
        "| CPU | emulated | flags | picked form | style | form | ORT optimized | agreement | max logit diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cpu in data["cpus"]:
        for f in cpu["files"]:
            picked = " (picked)" if f["form"] == cpu["int8_form"] else ""
            lines.append(
                f"| {cpu['cpu']} | {'yes' if cpu['emulated'] else 'no'} | {' '.join(cpu['flags']) or '-'} | "
                f"{cpu['int8_form']} | {f['style']} | {f['form']}{picked} | {'yes' if f['optimized'] else 'no'} | "
                f"{100 * f['agreement']:.2f}% | {f['max_logit_diff']:.3g} |"
            )
    lines += ["", "Measured int8 cells (`measure_layers`, as `hwsearch latency measure`):", ""]
    lines += ["| CPU | runtime | int8 form | layers with W8A8 | why left out |", "|---|---|---|---|---|"]
    for cpu in data["cpus"]:
        for m in cpu["measured"]:
            why = "; ".join(m["reasons"]) or "-"
            lines.append(
                f"| {cpu['cpu']} | {m['runtime']} | {m['int8_form']} | {m['w8a8_kept']} / {m['layers']} | {why} |"
            )
    lines += ["", "Summary:", ""]
    for cpu in data["cpus"]:
        picked = [f for f in cpu["files"] if f["form"] == cpu["int8_form"]]
        worst = min(f["agreement"] for f in picked)
        lines.append(
            f"- {cpu['cpu']}: hwsearch picks `{cpu['int8_form']}`; its files agree on >= {100 * worst:.2f}% of images "
            f"(optimized and not); run in {cpu['wall_s']} s"
        )
    return "\n".join(lines) + "\n"


def readme_block(data: dict[str, Any]) -> str:
    """The README's table: per CPU, the form picked, its worst agreement, and what s8 gives there."""
    lines = [
        "| CPU | emulated | picked form | picked: worst agreement | s8, fused kernels: worst agreement "
        "| W8A8 cells kept: torch / ORT picked / ORT s8 |",
        "|---|---|---|---|---|---|",
    ]
    for cpu in data["cpus"]:
        picked = min(f["agreement"] for f in cpu["files"] if f["form"] == cpu["int8_form"])
        s8 = min(f["agreement"] for f in cpu["files"] if f["form"] == "s8" and f["optimized"])
        kept = " / ".join(f"{m['w8a8_kept']}/{m['layers']}" for m in cpu["measured"])
        lines.append(
            f"| {cpu['cpu']} | {'yes' if cpu['emulated'] else 'no'} | {cpu['int8_form']} | {100 * picked:.2f}% "
            f"| {100 * s8:.2f}% | {kept} |"
        )
    meta = data["meta"]
    lines.append(
        f"\n`{meta['command']}` at {meta['commit'][:8]}, {meta['date'][:10]}, on {meta['machine']['cpu']}; smallcnn "
        f"all-W8A8 on {data['images']} test images; every file and reason in `benchmarks/results/int8_cpus.md`."
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", nargs="+", default=["host", "EPYC", "Haswell"], help="host, or QEMU x86 CPU models")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--render-only", action="store_true", help="re-render int8_cpus.md and the README table")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child)))
        return
    if args.render_only:
        from hwsearch.io import atomic_write_text

        data = json.loads((RESULTS / "int8_cpus.json").read_text(encoding="utf-8"))
        atomic_write_text(RESULTS / "int8_cpus.md", render(data) + provenance_md(data["meta"]))
        update_readme("int8_cpus", readme_block(data))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare_files(work, args.images)
        cpus = []
        for cpu in args.cpus:
            cpus.append(run_cpu(cpu, work))
            print(f"{cpu}: form {cpus[-1]['int8_form']}, {cpus[-1]['wall_s']} s", flush=True)
    payload = {"meta": provenance(), "images": args.images, "cpus": cpus}
    js, _ = write_results("int8_cpus", payload, render)
    update_readme("int8_cpus", readme_block(json.loads(js.read_text(encoding="utf-8"))))


if __name__ == "__main__":
    main()
