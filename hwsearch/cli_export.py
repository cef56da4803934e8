"""``hwsearch export | evaluate | show``: hand a policy to other tools, score one policy, print one policy."""

from __future__ import annotations

import argparse
from typing import Any

from hwsearch.cli import FACTORY_HELP
from hwsearch.errors import ConfigError
from hwsearch.hardware import DEFAULT_DEVICE

__all__ = ["add_export_parser", "cmd_export", "cmd_evaluate", "cmd_show", "EXPORT_FORMATS"]

EXPORT_FORMATS = ("json", "yaml", "csv", "haq", "checkpoint", "onnx")


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
        help="onnx integer types: portable (default; exact on every CPU), s8 (int8 throughout: exact and fastest "
        "on x86 with VNNI and on aarch64, wrong on x86 without VNNI), auto (the one for this CPU)",
    )
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("evaluate", help="test accuracy and device cost of one policy")
    p.add_argument("--policy", default=None, help="policy file (with --checkpoint)")
    p.add_argument("--checkpoint", default=None, help="FP32 checkpoint from `hwsearch train`")
    p.add_argument("--quantized", default=None, help="quantized checkpoint from `hwsearch export --format checkpoint`")
    p.add_argument("--device", default=DEFAULT_DEVICE, help="target device (see `hwsearch latency devices`)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--model-factory", default=None, metavar="MODULE:FACTORY", help=FACTORY_HELP)
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser("show", help="print a policy as a table (with latency shares given a checkpoint)")
    p.add_argument("--policy", required=True)
    p.add_argument("--checkpoint", default=None, help="FP32 checkpoint: adds per-layer latency on --device")
    p.add_argument("--device", default=None, help=f"target device (default {DEFAULT_DEVICE}; needs --checkpoint)")
    p.add_argument("--model-factory", default=None, metavar="MODULE:FACTORY", help=FACTORY_HELP)
    p.set_defaults(func=cmd_show)


def _float_model_and_layers(checkpoint: str, model_factory: str | None) -> tuple[Any, list[Any], dict]:
    from hwsearch.checkpoint import model_from_checkpoint
    from hwsearch.layers import discover_layers

    model, meta = model_from_checkpoint(checkpoint, model_factory)
    return model, discover_layers(model, tuple(meta["input_shape"])), meta


def _read_policy(path: str, layer_names: list[str] | None) -> Any:
    from hwsearch.export import format_from_path, import_policy

    fmt = format_from_path(path)
    if fmt == "haq" and layer_names is None:
        raise ConfigError(f"{path} is a HAQ strategy without layer names; pass --checkpoint to name its layers")
    return import_policy(path, fmt, layer_names=layer_names)


def cmd_export(args: argparse.Namespace) -> int:
    from hwsearch.export import export_onnx, export_policy, save_quantized

    needs_model = args.fmt in ("checkpoint", "onnx")
    if needs_model and not args.checkpoint:
        raise ConfigError(f"--format {args.fmt} needs --checkpoint (the FP32 checkpoint the policy is for)")
    names = None
    if args.checkpoint:
        _, layers, _ = _float_model_and_layers(args.checkpoint, args.model_factory)
        names = [ly.name for ly in layers]
    policy = _read_policy(args.policy, names)
    if names is not None:
        policy.check_against(names)
    if not needs_model:
        path = export_policy(policy, args.out, args.fmt)
        note = " (meta not kept)" if args.fmt == "csv" else " (names and meta not kept)" if args.fmt == "haq" else ""
        print(f"wrote {args.fmt} policy to {path}{note}")
        return 0
    from hwsearch.workflow import prepare

    ws = prepare(args.checkpoint, data_root=args.data_root, model_name=args.model_factory)
    if args.fmt == "checkpoint":
        path = save_quantized(args.out, ws, policy, ws.calibration, {"policy_file": str(args.policy)})
        print(f"wrote quantized checkpoint to {path}")
    else:
        path = export_onnx(ws, policy, ws.calibration, args.out, ws.splits.input_shape, int8_form=args.int8_form)
        print(f"wrote ONNX model (QDQ, opset 13, {args.int8_form} int8 form) to {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from hwsearch.data import load_dataset, tensors
    from hwsearch.evaluate import clean_accuracy
    from hwsearch.hardware import get_cost_model, policy_cost
    from hwsearch.layers import discover_layers
    from hwsearch.policy import uniform_policy

    if bool(args.quantized) == bool(args.policy or args.checkpoint):
        raise ConfigError("pass either --policy P --checkpoint CKPT, or --quantized F.pt")
    cost_model = get_cost_model(args.device)  # fail fast on a bad name, before loading anything
    if args.quantized:
        from hwsearch.export import load_quantized
        from hwsearch.models import build_model

        qmodel, policy, meta = load_quantized(args.quantized)
        shape = tuple(meta["input_shape"])
        shell = build_model(meta["model_name"], meta["num_classes"], shape, meta["mean"], meta["std"])
        layers = discover_layers(shell, shape)
        splits = load_dataset(meta["dataset"], args.data_root)
        x, y = tensors(splits.test)
        source = args.quantized
    else:
        if not (args.policy and args.checkpoint):
            raise ConfigError("--policy and --checkpoint go together (or pass --quantized F.pt)")
        from hwsearch.quant import apply_policy
        from hwsearch.workflow import prepare

        ws = prepare(args.checkpoint, data_root=args.data_root, model_name=args.model_factory)
        policy = _read_policy(args.policy, ws.layer_names)
        policy.check_against(ws.layer_names)
        qmodel = apply_policy(ws.model, policy, ws.calibration)
        layers, splits = ws.layers, ws.splits
        x, y = ws.split("test")
        source = args.policy
    acc = clean_accuracy(qmodel, x, y)
    cost = policy_cost(cost_model, layers, policy)
    ref = policy_cost(cost_model, layers, uniform_policy([ly.name for ly in layers], 8))
    float_bits = sum(ly.params * 32 for ly in layers)
    print(f"policy {source} on {splits.name} test split ({len(y)} images), device {cost_model.name}")
    print(f"  test accuracy   {100 * acc:.2f}%")
    print(f"  latency         {cost.latency_ms:.5g} ms/image (fixed 8-bit {ref.latency_ms:.5g})")
    if cost.energy_mj is not None:
        ref_e = f" (fixed 8-bit {ref.energy_mj:.5g})" if ref.energy_mj is not None else ""
        print(f"  energy          {cost.energy_mj:.5g} mJ/image{ref_e}")
    else:
        print("  energy          unknown on this device")
    print(
        f"  weights size    {cost.size_bits / 8 / 1024:.1f} KiB ({float_bits / max(cost.size_bits, 1):.2f}x smaller than FP32)"
    )
    speedup = ref.latency_ms / cost.latency_ms if cost.latency_ms > 0 else float("inf")
    print(f"  speed-up vs fixed 8-bit  {speedup:.2f}x")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    if args.device and not args.checkpoint:
        raise ConfigError("--device prices the policy's layers, which needs --checkpoint")
    layers = None
    if args.checkpoint:
        _, layers, _ = _float_model_and_layers(args.checkpoint, args.model_factory)
    names = None if layers is None else [ly.name for ly in layers]
    policy = _read_policy(args.policy, names)
    cost = None
    if layers is not None:
        from hwsearch.hardware import get_cost_model, policy_cost

        policy.check_against(names or [])
        cost_model = get_cost_model(args.device or DEFAULT_DEVICE)
        cost = policy_cost(cost_model, layers, policy)
    width = max(5, *(len(n) for n in policy.names()))

    def bits(b: int) -> str:
        return "fp" if b == 32 else str(b)

    head = f"{'layer':<{width}}   W   A"
    print(head + ("   latency ms   share" if cost else ""))
    for name, lb in policy.layers.items():
        line = f"{name:<{width}}  {bits(lb.w):>2}  {bits(lb.a):>2}"
        if cost is not None:
            c = cost.per_layer[name]
            share = 100 * c.latency_ms / cost.latency_ms if cost.latency_ms else 0.0
            line += f"  {c.latency_ms:11.5g}  {share:5.1f}%"
        print(line)
    if cost is not None:
        print(
            f"total on {cost_model.name}: {cost.latency_ms:.5g} ms/image, {cost.size_bits / 8 / 1024:.1f} KiB of weights"
        )
    kind = policy.meta.get("kind")
    if kind:
        print(f"({kind})")
    return 0
