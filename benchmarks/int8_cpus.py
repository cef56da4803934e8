"""Int8 on CPUs other than this one: the exported file and the measured int8 kernels, checked on emulated CPUs.

QEMU's user-mode emulator runs a Python on an emulated CPU whose ``cpuid`` (x86) or ``HWCAP`` (aarch64) reports
only that model's features, so ONNX Runtime's and PyTorch's kernels take the code paths they take on such a CPU:

- ``EPYC`` (AMD Zen 1) and ``Haswell`` (``qemu-x86_64 -cpu MODEL``, Debian's ``qemu-user``) have AVX2 and no
  VNNI: their u8 x s8 kernels add pairs of products into saturating int16s (:mod:`hwsearch.hardware.cpu`), the
  cause of the wrong answers an AMD EPYC gave. QEMU 7.2 emulates AVX2, not AVX-512, so a VNNI CPU is checked as
  ``host`` where this machine has VNNI.
- ``aarch64:cortex-a72`` (no dot product) and ``aarch64:max`` (``sdot`` / ``udot``), under ``qemu-aarch64`` with
  an arm64 Debian root (``--aarch64-root``: ``debootstrap --foreign --arch=arm64 --variant=minbase
  --include=python3.11 bookworm ROOT`` and ``dpkg-deb -x`` of the debs it downloads into ``ROOT``) and the
  aarch64 wheels of numpy and onnxruntime unpacked in ``--aarch64-site`` (``pip download --no-deps
  --only-binary=:all: --platform manylinux_2_28_aarch64 --python-version 311``). Only the files are checked
  there (no torch). QEMU shows the guest this machine's ``/proc/cpuinfo``, on which ONNX Runtime's CPU probe
  crashes, so the root gets an aarch64 one (and ``/sys/devices/system/cpu``) that names the model's features.

For smallcnn's all-W8A8 policy (the policy with the most 8-bit weights), on ``--images`` test images:

1. the policy exported in both int8 forms (``portable``, ``s8``) and both styles (``qdq``, the default export;
   ``kernels``, what ``ort-cpu`` prices), run by ONNX Runtime with its graph optimizations (the fused integer
   kernels that saturate) and without them (the file's own arithmetic): top-1 agreement with the fake-quant model
   in the file's form, and the largest logit difference from the same file run unfused on this machine;
2. on x86, ``measure_layers`` (what ``hwsearch latency measure`` times): how many of the model's layers keep a
   ``W8A8`` cell, PyTorch's fbgemm and ONNX Runtime in the form ``auto`` picks for the CPU, and ONNX Runtime in
   ``s8`` forced, with the reasons a cell was left out.

The form hwsearch picks for each CPU is :func:`hwsearch.hardware.cpu.int8_form` of the machine and the features
the emulated process reported (:mod:`benchmarks._int8_child`).

    python -m benchmarks.int8_cpus [--cpus host EPYC Haswell aarch64:cortex-a72 aarch64:max] [--images 200]
        [--aarch64-root DIR --aarch64-site DIR] [--merge]

Writes benchmarks/results/int8_cpus.json, int8_cpus.md and the README's table (``--merge`` keeps the other CPUs'
records of the last run, each with its own command and commit). An emulated run takes minutes (QEMU translates
every vector instruction).
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

from benchmarks._common import RESULTS, provenance, rerender, update_readme, write_results

ROOT = Path(__file__).resolve().parents[1]
STYLES = ("qdq", "kernels")
# the features a table shows: x86 AVX2 / AVX-512 / VNNI, aarch64 dot product
FLAGS = ("avx2", "avx512f", "avx512vnni", "avx512_vnni", "avxvnni", "asimddp")
# /proc/cpuinfo "Features" for the aarch64 models QEMU emulates here (its HWCAP is the model's; this file is what
# ONNX Runtime's CPU probe parses)
AARCH64_FEATURES = {
    "cortex-a72": "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid",
    "max": "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
}
CHILD = Path(__file__).resolve().parent / "_int8_child.py"


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


def _aarch64_root(root: Path, model: str) -> None:
    """Give the arm64 root the /proc/cpuinfo and /sys CPU list QEMU's path prefix serves to the guest."""
    if model not in AARCH64_FEATURES:
        raise SystemExit(f"aarch64 CPU {model!r}: one of {', '.join(AARCH64_FEATURES)}")
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc" / "cpuinfo").write_text(
        f"processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: {AARCH64_FEATURES[model]}\nCPU implementer\t: 0x41\n"
        "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 0\n\n"
    )
    cpus = root / "sys" / "devices" / "system" / "cpu"
    cpus.mkdir(parents=True, exist_ok=True)
    for name in ("possible", "present", "online"):
        (cpus / name).write_text("0\n")


def child_command(cpu: str, work: Path, aarch64_root: Path | None, aarch64_site: Path | None) -> tuple[list[str], dict]:
    """The command (and extra environment) that runs :mod:`benchmarks._int8_child` on ``cpu``: ``host``, a QEMU
    x86 model, or ``aarch64:MODEL``."""
    import os

    if cpu.startswith("aarch64:"):
        qemu = shutil.which("qemu-aarch64")
        if qemu is None or aarch64_root is None or aarch64_site is None:
            raise SystemExit(f"{cpu} needs qemu-aarch64 (apt-get install qemu-user), --aarch64-root and --aarch64-site")
        model = cpu.split(":", 1)[1]
        _aarch64_root(aarch64_root, model)
        python = aarch64_root / "usr" / "bin" / "python3.11"
        cmd = [qemu, "-L", str(aarch64_root), "-cpu", model, str(python), str(CHILD), str(work)]
        return cmd, {"PYTHONPATH": str(aarch64_site), "PATH": os.environ.get("PATH", "")}
    prefix: list[str] = []
    if cpu != "host":
        qemu = shutil.which("qemu-x86_64")
        if qemu is None:
            raise SystemExit("qemu-x86_64 is missing: apt-get install qemu-user, or pass --cpus host")
        prefix = [qemu, "-cpu", cpu]
    return [*prefix, sys.executable, str(CHILD), str(work), "--measure"], {**os.environ, "PYTHONPATH": str(ROOT)}


def run_cpu(cpu: str, work: Path, aarch64_root: Path | None = None, aarch64_site: Path | None = None) -> dict[str, Any]:
    """Run the child on ``cpu``; the form hwsearch picks there follows from the machine and features it reports."""
    from hwsearch.hardware.cpu import has_vnni, int8_form

    cmd, env = child_command(cpu, work, aarch64_root, aarch64_site)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = [ln for ln in done.stderr.splitlines() if "TCG doesn't support" not in ln][-20:]
        raise SystemExit(f"{cpu}: the child failed ({done.returncode}):\n" + "\n".join(tail))
    row = json.loads(done.stdout.strip().splitlines()[-1])
    features = row.pop("features")
    return {
        "cpu": cpu,
        "emulated": cpu != "host",
        "wall_s": round(time.perf_counter() - t0, 1),
        "flags": [f for f in FLAGS if f in features],
        "has_vnni": has_vnni(features),
        "int8_form": int8_form(machine=row["machine"], flags=features),
        **row,
    }


def render(data: dict[str, Any]) -> str:
    lines = [
        "# Int8 on other CPUs (QEMU user-mode emulation)",
        "",
        "smallcnn, all W8A8, on each record's number of test images. `agreement`: top-1 agreement with the",
        "fake-quant model in the file's form; `max logit diff`: against the same file run unfused (the file's own",
        "arithmetic) on the host. `picked` marks the int8 form hwsearch chooses for that CPU (`int8_form` of the",
        "machine and features the emulated process reported), the one `export --int8-form auto`, `ort-cpu` and",
        "`latency measure` use.",
        "",
        "| CPU | emulated | flags | images | style | form | ORT optimized | agreement | max logit diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cpu in data["cpus"]:
        for f in cpu["files"]:
            mark = " (picked)" if f["form"] == cpu["int8_form"] else ""
            lines.append(
                f"| {cpu['cpu']} | {'yes' if cpu['emulated'] else 'no'} | {' '.join(cpu['flags']) or '-'} | "
                f"{cpu['images']} | {f['style']} | {f['form']}{mark} | {'yes' if f['optimized'] else 'no'} | "
                f"{100 * f['agreement']:.2f}% | {f['max_logit_diff']:.3g} |"
            )
    lines += ["", "Measured int8 cells (`measure_layers`, as `hwsearch latency measure`; x86 only):", ""]
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
        run = cpu["run"]
        lines.append(
            f"- {cpu['cpu']} ({cpu['machine']}): hwsearch picks `{cpu['int8_form']}`; its files agree on >= "
            f"{100 * worst:.2f}% of images (optimized and not); {cpu['wall_s']} s; `{run['command']}` at "
            f"{run['commit'][:8]}, {run['date'][:10]}"
        )
    return "\n".join(lines) + "\n"


def _worst(files: list[dict[str, Any]]) -> str:
    """Lowest agreement and largest logit difference of the fused runs among ``files``."""
    diff = max(f["max_logit_diff"] for f in files if f["optimized"])
    return f"{100 * min(f['agreement'] for f in files):.2f}%, {diff:.3g}"


def readme_block(data: dict[str, Any]) -> str:
    """The README's table: per CPU, the form picked, its worst agreement, and what s8 gives there."""
    lines = [
        "| CPU | emulated | picked form | picked: worst agreement, largest fused logit diff "
        "| s8, fused kernels: worst agreement, largest logit diff | W8A8 cells kept: torch / ORT picked / ORT s8 |",
        "|---|---|---|---|---|---|",
    ]
    for cpu in data["cpus"]:
        picked = [f for f in cpu["files"] if f["form"] == cpu["int8_form"]]
        s8 = [f for f in cpu["files"] if f["form"] == "s8" and f["optimized"]]
        kept = " / ".join(f"{m['w8a8_kept']}/{m['layers']}" for m in cpu["measured"]) or "not run"
        lines.append(
            f"| {cpu['cpu']} | {'yes' if cpu['emulated'] else 'no'} | {cpu['int8_form']} | {_worst(picked)} "
            f"| {_worst(s8)} | {kept} |"
        )
    runs = sorted({(c["run"]["commit"][:8], c["run"]["date"][:10], c["run"]["command"]) for c in data["cpus"]})
    lines.append("")
    lines += [f"`{cmd}` at {commit}, {date}" for commit, date, cmd in runs]
    lines.append(
        f"on {data['meta']['machine']['cpu']}; smallcnn all-W8A8; every file and reason in "
        "`benchmarks/results/int8_cpus.md`."
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--cpus",
        nargs="+",
        default=["host", "EPYC", "Haswell", "aarch64:cortex-a72", "aarch64:max"],
        help="host, QEMU x86 CPU models, aarch64:MODEL",
    )
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--aarch64-root", type=Path, help="an arm64 Debian root with python3.11 (see the docstring)")
    ap.add_argument("--aarch64-site", type=Path, help="the aarch64 numpy and onnxruntime wheels, unpacked")
    ap.add_argument("--merge", action="store_true", help="keep the other CPUs' records of the last run")
    ap.add_argument("--render-only", action="store_true", help="re-render int8_cpus.md and the README table")
    args = ap.parse_args()
    if args.render_only:
        rerender("int8_cpus", render, readme_block)
        return
    meta = provenance()
    run = {k: meta[k] for k in ("command", "commit", "date")}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare_files(work, args.images)
        cpus = []
        for cpu in args.cpus:
            cpus.append({**run_cpu(cpu, work, args.aarch64_root, args.aarch64_site), "run": run, "images": args.images})
            print(f"{cpu}: picked {cpus[-1]['int8_form']}, {cpus[-1]['wall_s']} s", flush=True)
    if args.merge and (RESULTS / "int8_cpus.json").exists():
        old = json.loads((RESULTS / "int8_cpus.json").read_text(encoding="utf-8"))
        done = {c["cpu"] for c in cpus}
        cpus = [c for c in old["cpus"] if c["cpu"] not in done] + cpus
    payload = {"meta": meta, "cpus": cpus}
    js, _ = write_results("int8_cpus", payload, render)
    update_readme("int8_cpus", readme_block(json.loads(js.read_text(encoding="utf-8"))))


if __name__ == "__main__":
    main()
