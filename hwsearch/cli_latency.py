"""``hwsearch latency``: list devices, build and show cost tables, and measure layers on this machine."""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwsearch.errors import ConfigError
from hwsearch.hardware import (
    DEFAULT_DEVICE,
    CostModel,
    CostTable,
    TableCostModel,
    build_table,
    device_spec,
    get_device,
    list_devices,
    load_table,
    policy_cost,
    save_table,
)
from hwsearch.layers import LayerInfo, discover_layers
from hwsearch.policy import load_policy, uniform_policy

__all__ = [
    "add_latency_parser",
    "cmd_latency_devices",
    "cmd_latency_build",
    "cmd_latency_show",
    "cmd_latency_measure",
    "model_layers",
    "measure_layers",
]

_DEFAULT_SHAPES = {"smallcnn": "1,28,28"}


def _parse_shape(text: str | None, model: str) -> tuple[int, int, int]:
    text = text or _DEFAULT_SHAPES.get(model.lower(), "3,32,32")
    try:
        dims = tuple(int(x) for x in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 3 or any(d <= 0 for d in dims):
        raise ConfigError(f"--input-shape {text!r} must be C,H,W with positive integers, e.g. 3,32,32")
    return dims  # type: ignore[return-value]


def model_layers(model: str, num_classes: int, input_shape: tuple[int, int, int]) -> tuple[nn.Module, list[LayerInfo]]:
    """Build a zoo model (or module:factory) and list its quantizable layers."""
    from hwsearch.models import build_model

    net = build_model(model, num_classes=num_classes, input_shape=input_shape)
    return net, discover_layers(net, input_shape)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, help="zoo name (smallcnn, resnet20, mobilenet_v2, resnet18) or module:factory"
    )
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--input-shape", default=None, help="C,H,W (default 1,28,28 for smallcnn, else 3,32,32)")


def add_latency_parser(subparsers: Any) -> None:
    """Add ``latency devices|build|show|measure`` to the main CLI."""
    lat = subparsers.add_parser("latency", help="device cost tables: devices, build, show, measure")
    sub = lat.add_subparsers(dest="latency_command", required=True)

    p = sub.add_parser("devices", help="list the analytical devices and their parameters")
    p.set_defaults(func=cmd_latency_devices)

    p = sub.add_parser("build", help="tabulate a device's cost for every layer of a model and bit pair")
    p.add_argument("--device", default=DEFAULT_DEVICE, help=f"one of {', '.join(list_devices())}")
    _add_model_args(p)
    p.add_argument("--out", default=None, help="table file (default <device>-<model>.json)")
    p.set_defaults(func=cmd_latency_build)

    p = sub.add_parser("show", help="per-layer latency/energy of a policy on a device or table")
    p.add_argument("--device", default=DEFAULT_DEVICE)
    p.add_argument("--table", default=None, help="cost table file to read instead of the analytical device")
    _add_model_args(p)
    p.add_argument("--policy", default=None, help="policy.json (default: every layer W8A8)")
    p.set_defaults(func=cmd_latency_show)

    p = sub.add_parser("measure", help="time each layer on this machine (fp32; int8 where the runtime runs it)")
    _add_model_args(p)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--name", default=None, help="device name in the table (default cpu-<machine>)")
    p.add_argument("--out", default=None, help="write a measured table here")
    p.set_defaults(func=cmd_latency_measure)


def cmd_latency_devices(args: argparse.Namespace) -> int:
    for name in list_devices():
        spec = device_spec(name)
        mark = " (default)" if name == DEFAULT_DEVICE else ""
        print(f"{name}{mark}: {spec.get('description', '')}")
    return 0


def _batch_of(model: CostModel) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "batch", 1))


def cmd_latency_build(args: argparse.Namespace) -> int:
    model = get_device(args.device)
    shape = _parse_shape(args.input_shape, args.model)
    _, layers = model_layers(args.model, args.num_classes, shape)
    spec = device_spec(args.device)
    table = build_table(
        model,
        layers,
        batch=_batch_of(model),
        model=args.model,
        generator={
            "command": f"hwsearch latency build --device {args.device} --model {args.model}",
            "input_shape": list(shape),
            "num_classes": args.num_classes,
            "family": spec.get("family"),
            "parameters": spec.get("parameters"),
        },
        source=str(spec.get("source", "")),
    )
    out = Path(args.out or f"{args.device}-{args.model.replace(':', '_')}.json")
    save_table(table, out)
    print(f"wrote {len(table.entries)} layer signatures x {len(next(iter(table.entries.values())))} bit pairs to {out}")
    return 0


def cmd_latency_show(args: argparse.Namespace) -> int:
    shape = _parse_shape(args.input_shape, args.model)
    _, layers = model_layers(args.model, args.num_classes, shape)
    if args.table:
        cost_model: CostModel = TableCostModel(load_table(args.table))
    else:
        cost_model = get_device(args.device)
    names = [x.name for x in layers]
    policy = load_policy(args.policy) if args.policy else uniform_policy(names, 8)
    cost = policy_cost(cost_model, layers, policy)
    width = max(len(n) for n in names)
    print(f"{'layer':<{width}}  W/A    latency ms   share   energy mJ")
    for layer in layers:
        c = cost.per_layer[layer.name]
        bits = policy[layer.name]
        share = 100 * c.latency_ms / cost.latency_ms if cost.latency_ms else 0.0
        energy = f"{c.energy_mj:.5g}" if c.energy_mj is not None else "-"
        print(f"{layer.name:<{width}}  {bits.w}/{bits.a:<4} {c.latency_ms:11.5g}  {share:5.1f}%  {energy:>10}")
    total_e = f"{cost.energy_mj:.5g} mJ" if cost.energy_mj is not None else "unknown energy"
    print(
        f"total on {cost_model.name}: {cost.latency_ms:.5g} ms/image, {total_e}, "
        f"{cost.size_bits / 8 / 1024:.1f} KiB of weights"
    )
    return 0


def _median_ms(fn: Callable[[], Any], repeats: int, warmup: int) -> float:
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _int8_runner(module: nn.Module, x: torch.Tensor) -> Callable[[], Any] | None:
    """A quantized (x86/fbgemm) copy of a conv/linear and its quantized input, or None where it cannot run."""
    engines = torch.backends.quantized.supported_engines
    engine = "x86" if "x86" in engines else "fbgemm" if "fbgemm" in engines else None
    if engine is None:
        return None
    try:
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao\..*")
        torch.backends.quantized.engine = engine
        import torch.ao.nn.quantized as nnq
        from torch.ao.quantization import get_default_qconfig

        module = module.float().eval()
        module.qconfig = get_default_qconfig(engine)
        observed = torch.ao.quantization.prepare(nn.Sequential(module), inplace=False)
        with torch.no_grad():
            observed(x)
        qmod = observed[0]
        quantized = (nnq.Conv2d if isinstance(module, nn.Conv2d) else nnq.Linear).from_float(qmod)
        qx = torch.quantize_per_tensor(x, scale=float(x.abs().max()) / 127 or 1.0, zero_point=0, dtype=torch.quint8)
        quantized(qx)
        return lambda: quantized(qx)
    except Exception:  # noqa: BLE001 - a precision the runtime cannot run is absent, never invented
        return None


def measure_layers(
    net: nn.Module, layers: list[LayerInfo], *, repeats: int = 20, warmup: int = 5, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Median ms per layer (batch 1): ``W32A32`` always, ``W8A8`` where PyTorch's quantized engine runs it."""
    gen = torch.Generator().manual_seed(seed)
    modules = dict(net.named_modules())
    out: dict[str, dict[str, float]] = {}
    for layer in layers:
        mod = modules[layer.name]
        if layer.kind == "conv":
            x = torch.rand((1, layer.in_channels, *layer.in_hw), generator=gen)
        else:
            x = torch.rand((1, layer.in_channels), generator=gen)
        mod = mod.eval()
        cells = {"W32A32": _median_ms(lambda m=mod, x=x: m(x), repeats, warmup)}
        runner = _int8_runner(copy.deepcopy(mod), x)
        if runner is not None:
            cells["W8A8"] = _median_ms(runner, repeats, warmup)
        out[layer.name] = cells
    return out


def cmd_latency_measure(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.warmup < 0:
        raise ConfigError(f"--repeats {args.repeats} must be >= 1 and --warmup {args.warmup} >= 0")
    shape = _parse_shape(args.input_shape, args.model)
    net, layers = model_layers(args.model, args.num_classes, shape)
    torch.manual_seed(0)
    results = measure_layers(net, layers, repeats=args.repeats, warmup=args.warmup)
    name = args.name or f"cpu-{platform.machine() or 'unknown'}"
    width = max(len(x.name) for x in layers)
    print(f"{'layer':<{width}}  fp32 ms    int8 ms")
    for layer in layers:
        cells = results[layer.name]
        int8 = f"{cells['W8A8']:.4f}" if "W8A8" in cells else "-"
        print(f"{layer.name:<{width}}  {cells['W32A32']:.4f}  {int8:>9}")
    if args.out:
        entries: dict[str, dict[str, dict[str, float | None]]] = {}
        for layer in layers:
            row = {k: {"latency": max(v, 1e-9), "energy": None} for k, v in results[layer.name].items()}
            entries.setdefault(layer.signature(1), row)
        table = CostTable(
            device=name,
            batch=1,
            method="measured",
            source=f"median of {args.repeats} runs after {args.warmup} warm-up, torch {torch.__version__}, "
            f"{platform.processor() or platform.machine()}",
            entries=entries,
            model=args.model,
            generator={"input_shape": list(shape), "num_classes": args.num_classes, "threads": torch.get_num_threads()},
        )
        save_table(table, args.out)
        print(f"wrote measured table to {args.out}")
    return 0
