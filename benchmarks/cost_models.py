"""Fixed 8/4/2-bit latency and energy of mobilenet_v2 and resnet18 (ImageNet shape) on every analytical device,
and fp32 vs int8 (and N-bit weights) per layer-sum on this machine for each runtime.

Run: ``python benchmarks/cost_models.py [--repeats N] [--no-measure]``. The analytical numbers come from the
device models and are checked against the shipped tables (``latency_tables/<device>__<model>.json``); the
measured numbers are sums of per-layer medians (batch 1, one thread), not end-to-end network times.
"""

from __future__ import annotations

import argparse

import torch

from hwsearch.hardware import TableCostModel, get_cost_model, list_devices, load_table, policy_cost
from hwsearch.hardware.measure import RUNTIMES, MeasureConfig, measure_layers, runtime_version
from hwsearch.hardware.regenerate import SHIPPED_MODELS, shipped_table_path
from hwsearch.layers import discover_layers
from hwsearch.models import build_model
from hwsearch.policy import uniform_policy

__all__ = ["main"]

MODELS = ("mobilenet_v2", "resnet18")


def _layers(name: str) -> tuple[torch.nn.Module, list]:
    spec = next(m for m in SHIPPED_MODELS if m.name == name)
    torch.manual_seed(0)
    net = build_model(name, num_classes=spec.num_classes, input_shape=spec.input_shape)
    return net, discover_layers(net, spec.input_shape)


def analytical(models: dict[str, tuple[torch.nn.Module, list]]) -> None:
    print("model         device            bits   latency ms   energy mJ   speed-up vs W8A8   energy saving vs W8A8")
    for model_name, (_, layers) in models.items():
        names = [x.name for x in layers]
        for device in list_devices():
            model = get_cost_model(device)
            shipped = TableCostModel(load_table(shipped_table_path(device, model_name)))
            costs = {b: policy_cost(model, layers, uniform_policy(names, b)) for b in (8, 4, 2)}
            base = costs[8]
            for b, c in costs.items():
                table = policy_cost(shipped, layers, uniform_policy(names, b))
                same = "" if (table.latency_ms, table.energy_mj) == (c.latency_ms, c.energy_mj) else "  TABLE DIFFERS"
                e = c.energy_mj if c.energy_mj is not None else float("nan")
                be = base.energy_mj if base.energy_mj is not None else float("nan")
                print(
                    f"{model_name:<13} {device:<17} W{b}A{b}  {c.latency_ms:10.4f}  {e:10.4f}"
                    f"   {base.latency_ms / c.latency_ms:15.2f}x   {be / e:20.2f}x{same}"
                )


def measured(models: dict[str, tuple[torch.nn.Module, list]], repeats: int) -> None:
    config = MeasureConfig(repeats=repeats, warmup=max(1, repeats // 4), threads=1)
    print(f"\nmeasured on this machine: sum of per-layer medians, batch 1, 1 thread, {repeats} repeats")
    print(
        "model         runtime               fp32 ms   int8 ms  fp32/int8  int8 layers  linear N-bit weights (vs fp32)"
    )
    for model_name, (net, layers) in models.items():
        for runtime in RUNTIMES:
            res = measure_layers(net, layers, runtime=runtime, config=config)
            both = [r for r in res.values() if "W32A32" in r and "W8A8" in r]
            fp32 = sum(r["W32A32"] for r in both)
            int8 = sum(r["W8A8"] for r in both)
            lin = [x.name for x in layers if x.kind == "linear"]
            nbits = []
            for key in ("W8A32", "W4A32", "W2A32"):
                if lin and all(key in res[n] for n in lin):
                    ratio = sum(res[n][key] for n in lin) / sum(res[n]["W32A32"] for n in lin)
                    nbits.append(f"{key} {ratio:.2f}x time")
            print(
                f"{model_name:<13} {runtime_version(runtime):<20} {fp32:8.3f}  {int8:8.3f}  {fp32 / int8:8.2f}x"
                f"  {len(both):>5}/{len(layers):<5}  {', '.join(nbits) or '-'}"
            )
    print("(fp32 and int8 summed over the layers int8 runs on; a layer the runtime cannot run in int8 is absent)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-measure", action="store_true", help="analytical devices only")
    args = parser.parse_args(argv)
    models = {name: _layers(name) for name in MODELS}
    analytical(models)
    if not args.no_measure:
        measured(models, args.repeats)


if __name__ == "__main__":
    main()
