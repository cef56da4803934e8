"""Why models run channels-last on a CPU: one forward (and forward + backward) pass per layout, per zoo model.

``hwsearch.runtime.to_device`` stores conv weights NHWC on CPUs. This times what an evaluation repeats: a
clean forward pass over a batch, and the forward + backward pass an attack step makes, for the fake-quantized
W8A8 model of each zoo model (randomly initialised: speed does not depend on the weights' values), with NCHW
weights and with channels-last weights, one torch thread, NCHW inputs (as the data loaders give them), in process
CPU seconds (one thread: the wall time of an idle machine, and steadier than wall time on a loaded one). The two
layouts alternate repeat by repeat so that load on the machine hits both alike; the median of each is kept, and
the largest relative difference between their logits is recorded (float summation order only).

    python -m benchmarks.layout [--models smallcnn resnet20 mobilenet_v2] [--batch 256] [--repeats 7]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import torch
from torch import nn

from benchmarks._common import provenance, write_results
from hwsearch.models import build_model
from hwsearch.policy import uniform_policy
from hwsearch.quant import apply_policy, calibrate, quantizable_names

__all__ = ["main"]

SHAPE = (1, 28, 28)  # mnist5k, the embedded dataset every benchmark uses


def _pass(model: nn.Module, x: torch.Tensor, backward: bool) -> float:
    start = time.process_time()
    if backward:
        xg = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xg).sum(), xg)
    else:
        with torch.inference_mode():
            model(x)
    return time.process_time() - start


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    float_model = build_model(name, 10, SHAPE).eval()
    x_cal = torch.rand(64, *SHAPE, generator=torch.Generator().manual_seed(1))
    calibration = calibrate(float_model, x_cal)
    return apply_policy(float_model, uniform_policy(quantizable_names(float_model), 8, 8), calibration).eval()


def measure(name: str, batch: int, repeats: int) -> dict[str, Any]:
    # build_model already picks this CPU's layout: set each one explicitly
    nchw = _model(name).to(memory_format=torch.contiguous_format)
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    for model, fmt in ((nchw, torch.contiguous_format), (nhwc, torch.channels_last)):
        convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert all(w.is_contiguous(memory_format=fmt) for w in convs), f"{name}: weights not in {fmt}"
    x = torch.rand(batch, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        diff = float(((nchw(x) - nhwc(x)).abs().max() / nchw(x).abs().max().clamp_min(1e-12)).item())
    row: dict[str, Any] = {"model": name, "batch": batch, "repeats": repeats, "max_rel_logit_diff": diff}
    for kind, backward in (("forward", False), ("forward_backward", True)):
        times: dict[str, list[float]] = {"nchw": [], "channels_last": []}
        for model in (nchw, nhwc):  # warm-up: oneDNN builds its kernels on first use
            _pass(model, x, backward)
        for _ in range(repeats):
            times["nchw"].append(_pass(nchw, x, backward))
            times["channels_last"].append(_pass(nhwc, x, backward))
        a, b = statistics.median(times["nchw"]), statistics.median(times["channels_last"])
        row[kind] = {"nchw_s": a, "channels_last_s": b, "speedup": a / b}
    return row


def render(doc: dict[str, Any]) -> str:
    lines = [
        "# Conv weight layout on this CPU: NCHW vs channels-last (one thread)",
        "",
        f"Fake-quantized W8A8 zoo models, batch {doc['rows'][0]['batch']} of 28x28 images (NCHW inputs), median of "
        f"{doc['rows'][0]['repeats']} alternating repeats. `hwsearch.runtime.to_device` picks channels-last on x86 CPUs.",
        "",
        "| model | forward NCHW CPU s | forward channels-last CPU s | speed-up | fwd+bwd NCHW CPU s | fwd+bwd channels-last CPU s "
        "| speed-up | max relative logit difference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        f, g = r["forward"], r["forward_backward"]
        lines.append(
            f"| {r['model']} | {f['nchw_s']:.4f} | {f['channels_last_s']:.4f} | {f['speedup']:.2f}x "
            f"| {g['nchw_s']:.4f} | {g['channels_last_s']:.4f} | {g['speedup']:.2f}x | {r['max_rel_logit_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smallcnn", "resnet20", "mobilenet_v2"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = [measure(m, args.batch, args.repeats) for m in args.models]
    for r in rows:
        print(f"{r['model']}: forward {r['forward']['speedup']:.2f}x, fwd+bwd {r['forward_backward']['speedup']:.2f}x")
    meta = provenance(argv)
    json_path, md_path = write_results("layout", {"meta": meta, "rows": rows}, render)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
