"""Fixed 8/4/2-bit latency and energy of mobilenet_v2 and resnet18 on every analytical device.

Run: ``python benchmarks/cost_models.py`` (shapes only: the models are built on the meta device).
"""

from __future__ import annotations

import time

import torch
import torchvision

from hwsearch.hardware import get_device, list_devices, policy_cost
from hwsearch.layers import discover_layers
from hwsearch.policy import uniform_policy

__all__ = ["main"]

MODELS = {
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=1000),
    "resnet18": lambda: torchvision.models.resnet18(num_classes=1000),
}


def main() -> None:
    print("model         device            bits   latency ms   energy mJ   lat vs W8A8   energy vs W8A8")
    for model_name, factory in MODELS.items():
        with torch.device("meta"):
            net = factory()
        layers = discover_layers(net, (3, 224, 224))
        names = [x.name for x in layers]
        for device in list_devices():
            t0 = time.perf_counter()
            model = get_device(device)
            costs = {b: policy_cost(model, layers, uniform_policy(names, b)) for b in (8, 4, 2)}
            base = costs[8]
            for b, c in costs.items():
                e = c.energy_mj or float("nan")
                print(
                    f"{model_name:<13} {device:<17} W{b}A{b}  {c.latency_ms:10.4f}  {e:10.4f}"
                    f"   {base.latency_ms / c.latency_ms:10.2f}x   {(base.energy_mj or e) / e:12.2f}x"
                )
            print(f"# {model_name} on {device}: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
