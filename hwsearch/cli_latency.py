"""``hwsearch latency``: list devices, build and show cost tables, measure layers on this machine, and verify an
exported model's latency against its prediction."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hwsearch.cli_common import add_target
from hwsearch.errors import ConfigError
from hwsearch.hardware import DEFAULT_DEVICE, device_spec, list_devices, save_table
from hwsearch.hardware.measure import RUNTIMES, MeasureConfig, measure_layers, measured_table, runtime_version
from hwsearch.hardware.regenerate import build_model_table, shipped_table_name
from hwsearch.models import model_layers

__all__ = [
    "add_latency_parser",
    "cmd_latency_devices",
    "cmd_latency_build",
    "cmd_latency_show",
    "cmd_latency_measure",
    "cmd_latency_verify",
]

_DEFAULT_SHAPES = {"smallcnn": "1,28,28"}


def _parse_shape(values: str | list[str] | None, model: str) -> tuple[int, int, int]:
    """``C,H,W`` or ``C H W`` (default 1,28,28 for smallcnn, else 3,32,32)."""
    if values is None:
        values = _DEFAULT_SHAPES.get(model.lower(), "3,32,32")
    text = ",".join([values] if isinstance(values, str) else values)
    try:
        dims = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        dims = ()
    if len(dims) != 3 or any(d <= 0 for d in dims):
        raise ConfigError(f"--input-shape {text!r} must be C H W (or C,H,W) with positive integers, e.g. 3 32 32")
    return (dims[0], dims[1], dims[2])


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, help="zoo name (smallcnn, resnet20, mobilenet_v2, resnet18) or module:factory"
    )
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument(
        "--input-shape", nargs="+", default=None, help="C H W or C,H,W (default 1 28 28 for smallcnn, else 3 32 32)"
    )


def add_latency_parser(subparsers: Any) -> None:
    """Add ``latency devices|build|show|measure`` to the main CLI."""
    lat = subparsers.add_parser("latency", help="device cost tables: devices, build, show, measure")
    sub = lat.add_subparsers(dest="latency_command", required=True)

    p = sub.add_parser("devices", help="list the analytical devices and their parameters")
    p.set_defaults(func=cmd_latency_devices)

    p = sub.add_parser("build", help="tabulate a device's cost for every layer of a model and bit pair")
    add_target(p, help=f"the analytical device to tabulate: one of {', '.join(list_devices())}")
    _add_model_args(p)
    p.add_argument("--out", default=None, help="table file (default <device>__<model>.json, the shipped name)")
    p.set_defaults(func=cmd_latency_build)

    p = sub.add_parser("show", help="per-layer latency/energy of a policy on a device or table")
    add_target(p, help="analytical device name or a cost table file (.json)")
    p.add_argument("--table", default=None, help="cost table file to read instead of --target")
    _add_model_args(p)
    p.add_argument("--policy", default=None, help="policy.json (default: every layer W8A8)")
    p.set_defaults(func=cmd_latency_show)

    p = sub.add_parser(
        "measure", help="time each layer on this machine (fp32; int8 and N-bit weights where the runtime runs them)"
    )
    _add_model_args(p)
    p.add_argument("--runtime", choices=RUNTIMES, default="torch", help="torch (x86/fbgemm int8) or onnxruntime")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    p.add_argument(
        "--int8-form",
        default="auto",
        choices=("auto", "portable", "s8"),
        help="onnxruntime int8 weights: auto (default: exact on this CPU), portable (uint8, zero point 128), s8",
    )
    p.add_argument("--name", default=None, help="device name in the table (default cpu-<machine>-<runtime>)")
    p.add_argument("--out", default=None, help="write a measured table here")
    p.set_defaults(func=cmd_latency_measure)

    p = sub.add_parser(
        "verify", help="time an exported ONNX model on this CPU: predicted vs measured latency, agreement"
    )
    p.add_argument("--onnx", required=True, help="model written by hwsearch export --format onnx")
    p.add_argument("--checkpoint", required=True, help="the FP32 checkpoint it was exported from")
    add_target(p, "ort-cpu", "ort-cpu (1 thread, default), ort-cpu:N or ort-cpu:all")
    p.add_argument("--split", default="test", choices=("val", "test"), help="images for the agreement (test)")
    p.add_argument("--images", type=int, default=None, help="at most this many images (default: the split)")
    p.add_argument("--data-root", default=None, help="folder of a local dataset")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.set_defaults(func=cmd_latency_verify)


def cmd_latency_devices(args: argparse.Namespace) -> int:
    for name in list_devices():
        spec = device_spec(name)
        mark = " (default)" if name == DEFAULT_DEVICE else ""
        print(f"{name}{mark}: {spec.get('description', '')}")
    return 0


def cmd_latency_build(args: argparse.Namespace) -> int:
    shape = _parse_shape(args.input_shape, args.model)
    table = build_model_table(args.target, args.model, shape, args.num_classes)
    out = Path(args.out or shipped_table_name(args.target, args.model.replace(":", "_")))
    save_table(table, out)
    pairs = len(next(iter(table.entries.values())))
    print(f"wrote {len(table.entries)} layer signatures x {pairs} bit pairs to {out}")
    return 0


def cmd_latency_show(args: argparse.Namespace) -> int:
    from hwsearch.tools import latency_breakdown

    shape = _parse_shape(args.input_shape, args.model)
    shown = latency_breakdown(
        args.model, args.num_classes, shape, target=args.target, table=args.table, policy_path=args.policy
    )
    cost, layers, cost_model = shown.cost, shown.layers, shown.cost_model
    assert cost is not None and layers is not None and cost_model is not None
    shares = cost.latency_shares()
    width = max(len(ly.name) for ly in layers)
    print(f"{'layer':<{width}}  W/A    latency ms   share   energy mJ")
    for layer in layers:
        c = cost.per_layer[layer.name]
        bits = shown.policy[layer.name]
        energy = f"{c.energy_mj:.5g}" if c.energy_mj is not None else "-"
        share = 100 * shares[layer.name]
        print(f"{layer.name:<{width}}  {bits.w}/{bits.a:<4} {c.latency_ms:11.5g}  {share:5.1f}%  {energy:>10}")
    if cost.boundary_ms:
        print(f"{'between layers':<{width}}         {cost.boundary_ms:11.5g}")
    total_e = f"{cost.energy_mj:.5g} mJ" if cost.energy_mj is not None else "unknown energy"
    print(
        f"total on {cost_model.name}: {cost.latency_ms:.5g} ms/image, {total_e}, "
        f"{cost.size_bits / 8 / 1024:.1f} KiB of weights"
    )
    return 0


def cmd_latency_measure(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        raise ConfigError(
            f"--repeats {args.repeats} must be >= 1, --warmup {args.warmup} >= 0 and --threads {args.threads} >= 1"
        )
    shape = _parse_shape(args.input_shape, args.model)
    net, layers = model_layers(args.model, args.num_classes, shape)
    config = MeasureConfig(repeats=args.repeats, warmup=args.warmup, threads=args.threads, int8_form=args.int8_form)
    rejected: dict[str, dict[str, str]] = {}
    results = measure_layers(net, layers, runtime=args.runtime, config=config, rejected=rejected)
    keys = sorted({k for cells in results.values() for k in cells}, key=lambda k: (k != "W32A32", k), reverse=False)
    width = max(len(x.name) for x in layers)
    print(f"{runtime_version(args.runtime)}, {args.threads} thread(s), median ms of {args.repeats} runs")
    print(f"{'layer':<{width}}  " + "  ".join(f"{k:>9}" for k in keys))
    for layer in layers:
        cells = results[layer.name]
        print(f"{layer.name:<{width}}  " + "  ".join(f"{cells[k]:9.4f}" if k in cells else f"{'-':>9}" for k in keys))
    totals = {k: sum(c[k] for c in results.values()) for k in keys if all(k in c for c in results.values())}
    print(f"{'total':<{width}}  " + "  ".join(f"{totals[k]:9.4f}" if k in totals else f"{'-':>9}" for k in keys))
    for name, why in rejected.items():
        for key, reason in why.items():
            print(f"not tabulated: {name} {key}: {reason}")
    if args.out:
        table = measured_table(
            results,
            layers,
            runtime=args.runtime,
            config=config,
            rejected=rejected,
            device=args.name,
            model=args.model,
            generator={
                "command": f"hwsearch latency measure --model {args.model} --input-shape {' '.join(map(str, shape))} "
                f"--num-classes {args.num_classes} --runtime {args.runtime} --threads {args.threads} "
                f"--repeats {args.repeats} --warmup {args.warmup} --int8-form {args.int8_form}",
                "input_shape": list(shape),
                "num_classes": args.num_classes,
            },
        )
        save_table(table, args.out)
        print(f"wrote measured table ({table.device}) to {args.out}")
    return 0


def cmd_latency_verify(args: argparse.Namespace) -> int:
    import json

    from hwsearch.io import atomic_write_text
    from hwsearch.verify import verify_onnx
    from hwsearch.workflow import prepare

    if args.images is not None and args.images < 1:
        raise ConfigError(f"--images {args.images} must be at least 1")
    if not Path(args.onnx).is_file():
        raise ConfigError(f"--onnx {args.onnx}: no such file; write one with hwsearch export --format onnx")
    ws = prepare(args.checkpoint, data_root=args.data_root)
    v = verify_onnx(ws, args.onnx, args.target, split=args.split, images=args.images)
    print(f"{args.onnx} on {v.target} ({v.threads} thread(s), batch 1):")
    print(f"  predicted {v.predicted_ms:.4f} ms, measured {v.measured_ms:.4f} ms ({100 * v.error:+.1f}%)")
    print(
        f"  anchored on the float model's time now ({v.fp32_ms:.4f} ms measured, {v.predicted_fp32_ms:.4f} ms "
        f"predicted): {v.anchored_ms:.4f} ms ({100 * v.error_anchored:+.1f}%)"
    )
    print(f"  float model {v.fp32_ms:.4f} ms: {v.speedup:.2f}x faster than float")
    print(
        f"  top-1 agreement with the fake-quant model in the file's form {100 * v.agreement:.2f}% on {v.images} "
        f"{args.split} images (accuracy {100 * v.accuracy_onnx:.2f}% ONNX, {100 * v.accuracy_fake_quant:.2f}% "
        "fake-quant)"
    )
    if v.agreement_plain != v.agreement or v.accuracy_plain != v.accuracy_fake_quant:
        print(
            f"  without the deployment's roundings: agreement {100 * v.agreement_plain:.2f}%, fake-quant accuracy "
            f"{100 * v.accuracy_plain:.2f}%"
        )
    if args.json:
        atomic_write_text(args.json, json.dumps(v.to_dict(), indent=2) + "\n")
    return 0
