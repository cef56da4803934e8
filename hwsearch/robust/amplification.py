"""Error-amplification probe: how much an input perturbation grows, layer by layer (Defensive Quantization).

For a clean batch ``x`` and a perturbed one ``x'``, each quantizable layer's output is compared:
``||f_l(x') - f_l(x)|| / ||f_l(x)||`` (per sample, averaged over the batch), divided by the same relative
size of the perturbation at the input. A value above one means the layer's output moved (relatively) more
than the input did. Adversarial perturbations are set against random sign noise of the same L-inf size, the
control showing that amplification is specific to adversarial directions.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hwsearch.errors import ConfigError
from hwsearch.io import atomic_write_text, atomic_write_with
from hwsearch.quant import quantizable_names

__all__ = ["AmplificationResult", "amplification_profile", "write_amplification"]


@dataclass(frozen=True)
class AmplificationResult:
    """Per quantizable layer (forward order): relative output perturbation / relative input perturbation."""

    layers: list[str]
    adversarial: list[float]
    noise: list[float]

    def __post_init__(self) -> None:
        n = len(self.layers)
        if len(self.adversarial) != n or len(self.noise) != n:
            raise ConfigError(
                f"amplification needs one value per layer: {n} layers, {len(self.adversarial)} adversarial, "
                f"{len(self.noise)} noise values"
            )
        object.__setattr__(self, "layers", list(self.layers))
        object.__setattr__(self, "adversarial", [float(v) for v in self.adversarial])
        object.__setattr__(self, "noise", [float(v) for v in self.noise])


def _relative(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample ||b - a|| / ||a|| (L2 over all but the batch dimension)."""
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    return (b - a).norm(dim=1) / a.norm(dim=1).clamp_min(1e-12)


@torch.no_grad()
def _layer_outputs(model: nn.Module, names: list[str], x: Tensor) -> dict[str, Tensor]:
    """Each named layer's output (its first call, if called twice), keyed in the order the forward runs them."""
    outs: dict[str, Tensor] = {}
    handles = []
    for name in names:

        def hook(_m: nn.Module, _inp: object, out: object, name: str = name) -> None:
            t = out[0] if isinstance(out, (tuple, list)) else out
            if name not in outs and isinstance(t, Tensor):
                outs[name] = t.detach()

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return outs


def amplification_profile(
    model: nn.Module, x: Tensor, x_adv: Tensor, *, generator: torch.Generator | None = None
) -> AmplificationResult:
    """Error amplification of ``x_adv`` (and of sign noise of the same per-sample L-inf size) at every layer.

    Hooks sit on each quantizable layer's output (the QuantWrapper in a quantized model, so quantization is
    included). The model runs in eval mode; every submodule's training flag is restored afterwards. The noise
    is ``x + eps_i * sign`` with random signs from ``generator``, clipped to [0, 1]; its ratio divides by its
    own input perturbation, so the clipping does not bias it. Ratios are batch means of the per-sample
    relative changes, divided by the batch mean of the input's relative change.
    """
    if x.shape != x_adv.shape:
        raise ConfigError(f"x {tuple(x.shape)} and x_adv {tuple(x_adv.shape)} must have the same shape")
    names = quantizable_names(model)
    if not names:
        raise ConfigError("the model has no Conv2d/Linear layers to probe")
    p = next(model.parameters(), None)
    device = p.device if p is not None else x.device
    x = x.detach().to(device)
    x_adv = x_adv.detach().to(device)
    eps = (x_adv - x).flatten(1).abs().amax(dim=1).view(-1, *([1] * (x.dim() - 1)))
    gen_dev = generator.device if generator is not None else device
    coin = torch.randint(0, 2, x.shape, generator=generator, device=gen_dev).to(device=device, dtype=x.dtype)
    x_noise = (x + eps * (2 * coin - 1)).clamp(0.0, 1.0)

    in_adv = _relative(x, x_adv).mean()
    in_noise = _relative(x, x_noise).mean()
    if in_adv <= 0:
        raise ConfigError("x_adv equals x: there is no perturbation to trace (is eps 0?)")

    saved = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        clean = _layer_outputs(model, names, x)
        adv = _layer_outputs(model, names, x_adv)
        noisy = _layer_outputs(model, names, x_noise)
    finally:
        for m, flag in saved:
            m.training = flag
    order = list(clean)  # forward order
    return AmplificationResult(
        layers=order,
        adversarial=[float(_relative(clean[n], adv[n]).mean() / in_adv) for n in order],
        noise=[float(_relative(clean[n], noisy[n]).mean() / in_noise) if in_noise > 0 else float("nan") for n in order],
    )


def write_amplification(
    results: Mapping[str, AmplificationResult], csv_path: str | os.PathLike[str], png_path: str | os.PathLike[str]
) -> None:
    """Write the profiles of several models as a CSV (model, index, layer, adversarial, noise) and a line plot.

    Solid lines are adversarial perturbations, dashed lines the same-size noise control, one colour per model.
    Both files are written atomically. The plot uses matplotlib's Agg canvas directly (no pyplot state).
    """
    if not results:
        raise ConfigError("no amplification results to write")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "index", "layer", "adversarial", "noise"])
    for model_name, r in results.items():
        for i, (layer, a, n) in enumerate(zip(r.layers, r.adversarial, r.noise, strict=True)):
            w.writerow([model_name, i, layer, f"{a:.6g}", f"{n:.6g}"])

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    longest: list[str] = []
    for k, (model_name, r) in enumerate(results.items()):
        color = f"C{k % 10}"
        idx = list(range(len(r.layers)))
        ax.plot(idx, r.adversarial, "-o", color=color, label=f"{model_name} (adversarial)")
        ax.plot(idx, r.noise, "--", color=color, alpha=0.7, label=f"{model_name} (noise)")
        if len(r.layers) > len(longest):
            longest = r.layers
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xticks(range(len(longest)), longest, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("layer (forward order)")
    ax.set_ylabel("relative output change / relative input change")
    ax.set_title("Error amplification")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: lines stay visible

    atomic_write_text(csv_path, buf.getvalue())
    atomic_write_with(png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
