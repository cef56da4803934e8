"""``hwsearch export | evaluate | show``: hand a policy to other tools, score one policy, print one policy.

Each is one call of :mod:`hwsearch.tools` or :mod:`hwsearch.pipelines`; this module only parses and prints.
"""

from __future__ import annotations

import argparse
from typing import Any

from hwsearch.cli_common import FACTORY_HELP, add_compute_device, add_target
from hwsearch.hardware import DEFAULT_DEVICE
from hwsearch.tools import EXPORT_FORMATS

__all__ = ["add_export_parser", "cmd_export", "cmd_evaluate", "cmd_show", "EXPORT_FORMATS"]


def add_export_parser(subparsers: Any) -> None:
    """Add ``export``, ``evaluate`` and ``show`` to the main CLI."""
    p = subparsers.add_parser("export", help="write a policy as json/yaml/csv/haq, a quantized checkpoint or ONNX")
    p.add_argument("--policy", required=True, help="policy file (json, yaml, csv; haq needs --checkpoint)")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS, dest="fmt")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--checkpoint", default=None, help="FP32 checkpoint (needed for checkpoint and onnx)")
    p.add_argument("--data-root", default=None, help="folder of a local dataset (for calibration)")
    p.add_argument("--model-factory", default=None, metavar="MODULE:FACTORY", help=FACTORY_HELP)
    p.add_argument(
        "--int8-form",
        default="portable",
        choices=("portable", "s8", "auto"),
        help="onnx: 8-bit integer storage: portable (default, exact on every CPU), s8 (int8: x86 with VNNI, "
        "aarch64), auto (the exact and fastest form for this CPU)",
    )
    p.add_argument(
        "--onnx-style",
        default="qdq",
        choices=("qdq", "kernels"),
        help="onnx: qdq (default, the fake-quant model exactly) or kernels (integer layers requantize their "
        "output so ONNX Runtime runs each as an integer kernel: what --target ort-cpu prices)",
    )
    add_compute_device(p)
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("evaluate", help="test accuracy and device cost of one policy")
    p.add_argument("--policy", default=None, help="policy file (with --checkpoint)")
    p.add_argument("--checkpoint", default=None, help="FP32 checkpoint from `hwsearch train`")
    p.add_argument("--quantized", default=None, help="quantized checkpoint from `hwsearch export --format checkpoint`")
    add_target(p)
    p.add_argument("--data-root", default=None)
    p.add_argument("--model-factory", default=None, metavar="MODULE:FACTORY", help=FACTORY_HELP)
    add_compute_device(p)
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser("show", help="print a policy as a table (with latency shares given a checkpoint)")
    p.add_argument("--policy", required=True)
    p.add_argument("--checkpoint", default=None, help="FP32 checkpoint: adds per-layer latency on --target")
    add_target(p, None, f"target hardware (default {DEFAULT_DEVICE}; needs --checkpoint)")
    p.add_argument("--model-factory", default=None, metavar="MODULE:FACTORY", help=FACTORY_HELP)
    p.set_defaults(func=cmd_show)


def cmd_export(args: argparse.Namespace) -> int:
    from hwsearch.tools import export_policy_file

    done = export_policy_file(
        args.policy,
        args.fmt,
        args.out,
        checkpoint=args.checkpoint,
        data_root=args.data_root,
        model_factory=args.model_factory,
        compute_device=args.compute_device,
        int8_form=args.int8_form,
        onnx_style=args.onnx_style,
    )
    if done.fmt == "checkpoint":
        print(f"wrote quantized checkpoint to {done.path}")
    elif done.fmt == "onnx":
        print(f"wrote ONNX model ({args.onnx_style} style, int8 form {args.int8_form}) to {done.path}")
    else:
        note = " (meta not kept)" if done.fmt == "csv" else " (names and meta not kept)" if done.fmt == "haq" else ""
        print(f"wrote {done.fmt} policy to {done.path}{note}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from hwsearch.pipelines import EvaluateConfig, evaluate_policy

    config = EvaluateConfig(
        policy=args.policy,
        checkpoint=args.checkpoint,
        quantized=args.quantized,
        target=args.target,
        data_root=args.data_root,
        model_factory=args.model_factory,
        compute_device=args.compute_device,
    )
    r = evaluate_policy(config)
    cost, ref = r.cost, r.reference
    print(f"policy {r.source} on {r.dataset} test split ({r.images} images), device {r.target}")
    print(f"  test accuracy   {100 * r.row.accuracy:.2f}%")
    print(f"  latency         {cost.latency_ms:.5g} ms/image (fixed 8-bit {ref.latency_ms:.5g})")
    if cost.energy_mj is not None:
        ref_e = f" (fixed 8-bit {ref.energy_mj:.5g})" if ref.energy_mj is not None else ""
        print(f"  energy          {cost.energy_mj:.5g} mJ/image{ref_e}")
    else:
        print("  energy          unknown on this device")
    smaller = r.float_bits / max(cost.size_bits, 1)
    print(f"  weights size    {cost.size_bits / 8 / 1024:.1f} KiB ({smaller:.2f}x smaller than FP32)")
    speedup = ref.latency_ms / cost.latency_ms if cost.latency_ms > 0 else float("inf")
    print(f"  speed-up vs fixed 8-bit  {speedup:.2f}x")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from hwsearch.tools import show_policy

    shown = show_policy(args.policy, checkpoint=args.checkpoint, target=args.target, model_factory=args.model_factory)
    policy, cost = shown.policy, shown.cost
    width = max(5, *(len(n) for n in policy.names()))

    def bits(b: int) -> str:
        return "fp" if b == 32 else str(b)

    head = f"{'layer':<{width}}   W   A"
    print(head + ("   latency ms   share" if cost else ""))
    shares = cost.latency_shares() if cost is not None else {}
    for name, lb in policy.layers.items():
        line = f"{name:<{width}}  {bits(lb.w):>2}  {bits(lb.a):>2}"
        if cost is not None:
            line += f"  {cost.per_layer[name].latency_ms:11.5g}  {100 * shares[name]:5.1f}%"
        print(line)
    if cost is not None and shown.cost_model is not None:
        print(
            f"total on {shown.cost_model.name}: {cost.latency_ms:.5g} ms/image, "
            f"{cost.size_bits / 8 / 1024:.1f} KiB of weights"
        )
    kind = policy.meta.get("kind")
    if kind:
        print(f"({kind})")
    return 0
