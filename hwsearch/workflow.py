"""The building blocks of the pipelines: a prepared workspace, the search env, scoring and comparing policies.

The pipelines themselves (what the CLI runs) are :mod:`hwsearch.job` and :mod:`hwsearch.pipelines`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwsearch.budget import Budget
from hwsearch.data import DataSplits, load_dataset, tensors
from hwsearch.envs import EnvConfig, MixedPrecisionEnv
from hwsearch.errors import ConfigError
from hwsearch.evaluate import Evaluator, EvaluatorConfig, clean_accuracy
from hwsearch.hardware import CostModel, PolicyCost, bit_grid, float_size_bits, get_cost_model, policy_cost
from hwsearch.hardware.cpu import is_ort_cpu
from hwsearch.layers import LayerInfo, discover_layers
from hwsearch.policy import Policy, uniform_policy
from hwsearch.quant import Calibration, apply_policy, calibrate, fold_batch_norms, remove_quantizers
from hwsearch.records import CompareRow
from hwsearch.runtime import resolve_compute_device, to_device
from hwsearch.training import TrainConfig

__all__ = [
    "Workspace",
    "prepare",
    "build_env",
    "prepare_cost_model",
    "score_policy",
    "compare_policies",
    "finetune_policy",
    "robust_evaluator",
    "standard_entries",
    "target_export_style",
    "quantize_as_exported",
    "range_images",
]

CALIBRATION_IMAGES = 512


@dataclass
class Workspace:
    """A trained float model with everything traced and calibrated once, ready to price and score policies."""

    model: nn.Module
    model_name: str
    splits: DataSplits
    layers: list[LayerInfo]
    calibration: Calibration
    device: torch.device
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def layer_names(self) -> list[str]:
        return [ly.name for ly in self.layers]

    def uniform(self, w: int, a: int | None = None) -> Policy:
        return uniform_policy(self.layer_names, w, a)

    def split(self, which: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        ds = {"train": self.splits.train, "val": self.splits.val, "test": self.splits.test}[which]
        return tensors(ds, limit)


def prepare(
    checkpoint: str | Path,
    *,
    data_root: str | None = None,
    device: str = "cpu",
    calibration_method: str = "percentile",
    model_name: str | None = None,
) -> Workspace:
    """Load a checkpoint written by ``hwsearch train`` and the dataset it was trained on; trace and calibrate.

    ``model_name`` rebuilds a checkpoint of a custom ``module:factory`` model (see ``model_from_checkpoint``).
    """
    from hwsearch.checkpoint import model_from_checkpoint

    dev = resolve_compute_device(device)
    model, meta = model_from_checkpoint(checkpoint, model_name)
    splits = load_dataset(meta["dataset"], data_root)
    model = to_device(model, dev).eval()
    layers = discover_layers(model, splits.input_shape)
    stored = meta.get("extra", {}).get("calibration")
    if stored is not None:  # a fine-tuned (defended) model keeps the ranges it was trained with
        calibration = Calibration.from_dict(stored)
    else:
        x_cal, _ = tensors(splits.train, CALIBRATION_IMAGES)
        calibration = calibrate(model, x_cal.to(dev), method=calibration_method)
    return Workspace(model, meta["model_name"], splits, layers, calibration, dev, dict(meta))


def target_export_style(target: str) -> str:
    """The ONNX export a target prices, and so the roundings its policies are scored with: ``kernels`` for
    ``ort-cpu`` (ONNX Runtime runs the integer-kernel file), ``qdq`` for every other target."""
    return "kernels" if is_ort_cpu(target) else "qdq"


def quantize_as_exported(ws: Workspace, policy: Policy, style: str) -> nn.Module:
    """``policy`` applied to ``ws``'s model as an ONNX export of ``style`` runs it: ``qdq``, the fake-quant model;
    ``kernels``, on the batch-norm-folded model with that export's roundings, as an ``ort-cpu`` search scored it
    (``EvaluatorConfig.export_style``)."""
    if style != "kernels":
        return apply_policy(ws.model, policy, ws.calibration)
    from hwsearch.int_kernels import with_deployment_roundings

    images = _range_split(ws)
    qmodel = apply_policy(fold_batch_norms(ws.model, tuple(images.shape[1:])), policy, ws.calibration).eval()
    return with_deployment_roundings(qmodel, images.to(ws.device))


def range_images(ws: Workspace, config: EvaluatorConfig | None) -> torch.Tensor | None:
    """The images an evaluator measures the ``kernels`` export's output ranges on, or None when ``config`` does
    not need them."""
    return _range_split(ws) if config is not None and config.export_style == "kernels" else None


def _range_split(ws: Workspace) -> torch.Tensor:
    """The export's own range images: the first :data:`~hwsearch.int_kernels.OUTPUT_RANGE_IMAGES` training ones."""
    from hwsearch.int_kernels import OUTPUT_RANGE_IMAGES

    return ws.split("train", OUTPUT_RANGE_IMAGES)[0]


def prepare_cost_model(cost_model: CostModel, ws: Workspace) -> CostModel:
    """Let a measured target see the model it will price (``ort-cpu`` times the whole exported model once to
    charge the graph's other nodes to the layers); other cost models need nothing."""
    calibrate = getattr(cost_model, "calibrate", None)
    if callable(calibrate):
        calibrate(ws)
    return cost_model


def build_env(
    ws: Workspace,
    cost_model: CostModel,
    budget: Budget,
    *,
    evaluator_config: EvaluatorConfig | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    evaluator: Evaluator | None = None,
    bits: Sequence[int] = range(2, 9),
) -> tuple[MixedPrecisionEnv, Evaluator]:
    """The env on the search-val split; reward references are fixed W8A8's figures, as its cost reference.

    Pass an ``evaluator`` to share its cache between searches (a budget sweep): its figures do not depend on
    the budget.
    """
    if evaluator is None:
        x, y = ws.split("val")
        evaluator = Evaluator(
            ws.model, ws.calibration, x, y, evaluator_config, range_images=range_images(ws, evaluator_config)
        )
    prepare_cost_model(cost_model, ws)
    kwargs = dict(env_kwargs or {})
    if kwargs.get("w_rob", 0.0) > 0 and not evaluator.attacks:
        raise ConfigError("a robustness weight needs an attack: give the evaluator attacks (--attack pgd --eps E)")
    if "w_bits" not in kwargs and "a_bits" not in kwargs:  # the widths this device prices for every layer
        kwargs["w_bits"], kwargs["a_bits"] = bit_grid(cost_model, ws.layers, candidates=bits)
    ref = evaluator.evaluate(ws.uniform(8))
    kwargs.setdefault("acc_ref", ref.accuracy)
    if ref.robust_accuracy is not None:
        kwargs.setdefault("rob_ref", ref.robust_accuracy)
    env = MixedPrecisionEnv(ws.layers, evaluator, cost_model, EnvConfig(budget=budget, **kwargs))
    return env, evaluator


def score_policy(
    name: str,
    model: nn.Module,
    layers: Sequence[LayerInfo],
    policy: Policy | None,
    cost_model: CostModel,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    reference: PolicyCost | None = None,
    robust_eval: Callable[[nn.Module, torch.Tensor, torch.Tensor], Mapping[str, Any]] | None = None,
) -> CompareRow:
    """One row of a comparison: ``model`` (already quantized by ``policy``; None = FP32, not priced) scored on
    ``(x, y)`` and priced on ``cost_model`` against fixed W8A8 (``reference``, computed when not given)."""
    if reference is None:
        reference = policy_cost(cost_model, layers, uniform_policy([ly.name for ly in layers], 8))
    if policy is None:
        lat, energy, size = None, None, float_size_bits(layers)
    else:
        pc = policy_cost(cost_model, layers, policy)
        lat, energy, size = pc.latency_ms, pc.energy_mj, int(pc.size_bits)
    device = next(model.parameters()).device
    acc = clean_accuracy(model, x.to(device), y.to(device))
    speedup = reference.latency_ms / lat if lat else None
    saving = reference.energy_mj / energy if (energy and reference.energy_mj) else None
    robust = dict(robust_eval(model, x, y)) if robust_eval else {}
    return CompareRow(name, policy, acc, lat, energy, size, speedup, saving, robust)


def compare_policies(
    ws: Workspace,
    entries: Mapping[str, Policy | None | tuple[Policy | None, Workspace | None]],
    target: str,
    *,
    split: str = "test",
    robust_eval: Callable[[nn.Module, torch.Tensor, torch.Tensor], Mapping[str, Any]] | None = None,
) -> list[CompareRow]:
    """Score each entry on ``split`` and price it on the cost model of ``target``.

    An entry is a policy (applied to ``ws``'s model), ``None`` (``ws``'s FP32 model, not priced), or a
    ``(policy, workspace)`` pair for another checkpoint of the same architecture: an FP32 model trained with
    the Lipschitz term, or the weights a defended policy was fine-tuned into.
    """
    cost_model = prepare_cost_model(get_cost_model(target), ws)
    x, y = ws.split(split)
    ref_cost = policy_cost(cost_model, ws.layers, ws.uniform(8))
    rows = []
    for name, entry in entries.items():
        policy, own = entry if isinstance(entry, tuple) else (entry, None)
        src = own or ws
        if src.layer_names != ws.layer_names:
            raise ConfigError(
                f"entry {name!r} is a model with other layers than {ws.model_name}; compare like with like"
            )
        if policy is None:
            model = src.model
        else:
            policy.check_against(src.layer_names)
            model = quantize_as_exported(src, policy, target_export_style(target))
        rows.append(
            score_policy(name, model, src.layers, policy, cost_model, x, y, reference=ref_cost, robust_eval=robust_eval)
        )
    return rows


def robust_evaluator(
    ws: Workspace, eps_list: Sequence[float], *, steps: int = 20, restarts: int = 1, images: int = 500, seed: int = 0
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], dict[str, dict[str, float]]]:
    """The report-grade attack set (STE, shadow, transfer from ``ws``'s FP32 model, margin loss, FGSM) per eps.

    Runs on the first ``images`` images of the split (the split order is a fixed stratified permutation).
    """
    from hwsearch.robust import report_attacks, robust_accuracy

    def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        xs, ys = x[:images].to(ws.device), y[:images].to(ws.device)
        for eps in eps_list:
            attacks = report_attacks(eps, steps=steps, restarts=restarts)
            res = robust_accuracy(model, xs, ys, attacks, source_model=ws.model, seed=seed)
            out[f"{eps:g}"] = {"worst": float(res.worst), **{k: float(v) for k, v in res.per_attack.items()}}
        return out

    return run


def finetune_policy(
    ws: Workspace,
    policy: Policy,
    config: TrainConfig,
    *,
    lipschitz_beta: float = 0.0,
    model: nn.Module | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> nn.Module:
    """Quantization-aware fine-tuning of ``policy`` (Defensive Quantization when ``lipschitz_beta`` > 0).

    Returns the float model holding the fine-tuned weights; apply the same policy with the same calibration
    (``ws.calibration``) to get the defended quantized model.
    """
    from hwsearch.robust import lipschitz_regularizer
    from hwsearch.training import train

    policy.check_against(ws.layer_names)
    qmodel = apply_policy(model if model is not None else ws.model, policy, ws.calibration)
    regularizer = lipschitz_regularizer(lipschitz_beta) if lipschitz_beta > 0 else None
    train(qmodel, ws.splits.train, config, regularizer=regularizer, on_epoch=on_epoch)
    return remove_quantizers(qmodel).eval()


def standard_entries(ws: Workspace, bits: Sequence[int] = (8, 4)) -> dict[str, Policy | None]:
    """The baselines every comparison starts with: FP32 (``None``) and fixed ``b``-bit policies."""
    entries: dict[str, Policy | None] = {"FP32": None}
    for b in bits:
        entries[f"fixed W{b}A{b}"] = ws.uniform(b)
    return entries
