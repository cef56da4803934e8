"""The user-level pipelines besides the search job (:mod:`hwsearch.job`): train a baseline, fine-tune a policy,
profile error amplification, compare policies into a report, score one policy. Each CLI command is one of these
calls; the library never prints (progress comes back through callbacks). See docs/ARCHITECTURE.md, "Data flow".
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwsearch.checks import check_int, check_number
from hwsearch.cores import model_probe, use_threads
from hwsearch.errors import ConfigError
from hwsearch.hardware import DEFAULT_DEVICE, PolicyCost, float_size_bits, get_cost_model, policy_cost
from hwsearch.layers import LayerInfo
from hwsearch.policy import Policy
from hwsearch.policy_formats import format_from_path, load_policy, save_policy
from hwsearch.records import CompareRow
from hwsearch.training import TrainConfig
from hwsearch.workflow import Workspace, compare_policies, prepare, robust_evaluator, score_policy, standard_entries

__all__ = [
    "ModelSource",
    "BaselineConfig",
    "TrainedBaseline",
    "train_baseline",
    "FinetuneConfig",
    "finetune_checkpoint",
    "AmplifyConfig",
    "amplify_models",
    "CompareConfig",
    "CompareReport",
    "compare_report",
    "EvaluateConfig",
    "PolicyReport",
    "evaluate_policy",
    "read_policy_for",
]

OnEpoch = Callable[[int, dict], None]


@dataclass(frozen=True)
class ModelSource:
    """Where a trained model comes from and where it runs: checkpoint, local data, custom factory, torch device."""

    checkpoint: str
    data_root: str | None = None
    model_factory: str | None = None
    compute_device: str = "cpu"

    def prepare(self, checkpoint: str | None = None) -> Workspace:
        """The workspace of ``checkpoint`` (default :attr:`checkpoint`) with this source's data, device, factory."""
        return prepare(
            checkpoint or self.checkpoint,
            data_root=self.data_root,
            device=self.compute_device,
            model_name=self.model_factory,
        )


def read_policy_for(path: str) -> Callable[[Sequence[str]], Policy]:
    """Read a policy file now (a bad file fails before any model loads); a HAQ strategy, which has no names,
    is read once the model's layer names are known. Call the result with those names."""
    if format_from_path(path) == "haq":
        return lambda names: load_policy(path, layer_names=names)
    policy = load_policy(path)
    return lambda names: policy


# ----------------------------------------------------------------------------------------------- train
@dataclass(frozen=True)
class BaselineConfig:
    """An FP32 baseline: model, dataset and the training settings (``lipschitz_beta`` > 0 adds the Lipschitz
    term, the Defensive Quantization regulariser)."""

    model: str = "smallcnn"
    dataset: str = "mnist5k"
    data_root: str | None = None
    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 64
    lipschitz_beta: float = 0.0
    seed: int = 0
    compute_device: str = "cpu"


@dataclass(frozen=True)
class TrainedBaseline:
    path: Path
    test_accuracy: float
    seconds: float


def train_baseline(config: BaselineConfig, out: str | Path, *, on_epoch: OnEpoch | None = None) -> TrainedBaseline:
    """Train ``config.model`` on ``config.dataset``, score it on the test split, save the checkpoint to ``out``."""
    from hwsearch.checkpoint import save_checkpoint
    from hwsearch.data import load_dataset, tensors
    from hwsearch.evaluate import clean_accuracy
    from hwsearch.models import build_model
    from hwsearch.runtime import resolve_compute_device, set_seed
    from hwsearch.training import train

    device = resolve_compute_device(config.compute_device)
    splits = load_dataset(config.dataset, config.data_root)
    set_seed(config.seed)
    model = build_model(config.model, splits.num_classes, splits.input_shape, splits.mean, splits.std)
    cfg = TrainConfig(
        epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, seed=config.seed, device=str(device)
    )
    regularizer = None
    if config.lipschitz_beta > 0:
        from hwsearch.robust import lipschitz_regularizer

        regularizer = lipschitz_regularizer(config.lipschitz_beta)
    t0 = time.perf_counter()
    train(model, splits.train, cfg, regularizer=regularizer, on_epoch=on_epoch)
    x, y = tensors(splits.test)
    acc = clean_accuracy(model, x.to(device), y.to(device))
    metrics = {"test_accuracy": acc, "epochs": config.epochs, "lipschitz_beta": config.lipschitz_beta}
    path = save_checkpoint(
        out,
        model,
        model_name=config.model,
        dataset=config.dataset,
        num_classes=splits.num_classes,
        input_shape=splits.input_shape,
        mean=splits.mean,
        std=splits.std,
        metrics={**metrics, "seed": config.seed},
    )
    return TrainedBaseline(path, acc, time.perf_counter() - t0)


# -------------------------------------------------------------------------------------------- finetune
@dataclass(frozen=True)
class FinetuneConfig:
    """Quantization-aware fine-tuning of ``policy`` on ``source``'s model (Defensive Quantization when
    ``lipschitz_beta`` > 0)."""

    source: ModelSource
    policy: str
    epochs: int = 2
    lr: float = 5e-4
    batch_size: int = 64
    seed: int = 0
    lipschitz_beta: float = 0.0

    def __post_init__(self) -> None:
        if check_number(self.lipschitz_beta, "lipschitz_beta") < 0:
            raise ConfigError(f"--lipschitz-beta {self.lipschitz_beta} must be >= 0 (0 = plain QAT)")


def finetune_checkpoint(
    config: FinetuneConfig, out: str | Path, *, on_epoch: OnEpoch | None = None
) -> tuple[Path, Path]:
    """Fine-tune and write the weights to ``out`` and the policy beside it (``out`` with ``.policy.json``);
    returns both paths. The checkpoint keeps the policy and calibration, so ``amplify --defended`` finds them."""
    from hwsearch.checkpoint import save_checkpoint
    from hwsearch.workflow import finetune_policy

    read = read_policy_for(config.policy)
    ws = config.source.prepare()
    policy = read(ws.layer_names)
    policy.check_against(ws.layer_names)
    cfg = TrainConfig(
        epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, seed=config.seed, device=str(ws.device)
    )
    model = finetune_policy(ws, policy, cfg, lipschitz_beta=config.lipschitz_beta, on_epoch=on_epoch)
    path = Path(out)
    meta = ws.meta
    extra = {
        "policy": policy.to_dict(),
        "calibration": ws.calibration.to_dict(),
        "lipschitz_beta": config.lipschitz_beta,
    }
    save_checkpoint(
        path,
        model,
        model_name=meta["model_name"],
        dataset=meta["dataset"],
        num_classes=meta["num_classes"],
        input_shape=meta["input_shape"],
        mean=meta["mean"],
        std=meta["std"],
        metrics={"finetune_epochs": config.epochs, "lipschitz_beta": config.lipschitz_beta, "seed": config.seed},
        extra=extra,
    )
    policy_path = save_policy(policy.with_meta(finetuned=str(path)), path.with_suffix(".policy.json"))
    return path, policy_path


# --------------------------------------------------------------------------------------------- amplify
def _check_eps(eps: float) -> float:
    if not 0 < check_number(eps, "eps") <= 1:
        raise ConfigError(f"--eps {eps} is outside (0, 1]; eps is in input units of [0, 1] images")
    return eps


@dataclass(frozen=True)
class AmplifyConfig:
    """Per-layer error amplification (PGD with shadow gradients) of FP32, a policy and its defended version."""

    source: ModelSource
    policy: str | None = None
    defended: str | None = None
    eps: float = 0.1
    steps: int = 10
    images: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        _check_eps(self.eps)


def amplify_models(config: AmplifyConfig, out: str | Path) -> dict[str, Any]:
    """Write ``amplification.csv`` / ``.png`` to the folder ``out``; returns each model's profile by name."""
    from hwsearch.job import prepare_output
    from hwsearch.quant import apply_policy
    from hwsearch.robust import AttackConfig, amplification_profile, attack, write_amplification

    read = read_policy_for(config.policy) if config.policy else None
    ws = config.source.prepare()
    models: dict[str, nn.Module] = {"FP32": ws.model}
    if read is not None and config.policy:
        models[f"quantized ({Path(config.policy).name})"] = apply_policy(ws.model, read(ws.layer_names), ws.calibration)
    if config.defended:
        dws = config.source.prepare(config.defended)
        stored = dws.meta.get("extra", {}).get("policy")
        if stored is not None:
            dpolicy = Policy.from_dict(stored)
        elif read is not None:
            dpolicy = read(dws.layer_names)
        else:
            raise ConfigError(f"{config.defended!r} was not written by `hwsearch finetune`; pass --policy too")
        models["defended"] = apply_policy(dws.model, dpolicy, dws.calibration)
    x, y = ws.split("test", config.images)
    x, y = x.to(ws.device), y.to(ws.device)
    cfg = AttackConfig("pgd", config.eps, config.steps, grad="shadow")
    results = {}
    for name, model in models.items():
        x_adv = attack(model, x, y, cfg, generator=torch.Generator().manual_seed(config.seed))
        results[name] = amplification_profile(model, x, x_adv, generator=torch.Generator().manual_seed(config.seed))
    folder = prepare_output(out, True, "amplification.csv")
    write_amplification(results, folder / "amplification.csv", folder / "amplification.png")
    return results


# --------------------------------------------------------------------------------------------- compare
def _named(spec: str, what: str) -> tuple[str, str]:
    name, sep, value = spec.partition("=")
    if not sep:
        name, value = Path(spec).parent.name or Path(spec).stem, spec
    if not name or not value:
        raise ConfigError(f"{what} {spec!r} is malformed; write NAME=PATH")
    return name, value


@dataclass(frozen=True)
class CompareConfig:
    """FP32, fixed-bit baselines and policies on the test split, priced on ``target``.

    ``policies`` are ``[NAME=]FILE[@CKPT]`` (a policy applied to another checkpoint, e.g. its fine-tuned
    weights); ``models`` are ``NAME=CKPT`` (another FP32 model). ``eps`` empty: no robust accuracy.
    """

    source: ModelSource
    target: str = DEFAULT_DEVICE
    policies: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    fixed: tuple[int, ...] = (8, 4)
    eps: tuple[float, ...] = ()
    attack_steps: int = 20
    restarts: int = 1
    robust_images: int = 500
    amplification: str | None = None
    threads: int | None = None  # None: 1 or every core, whichever measures faster for the model (hwsearch.cores)

    def __post_init__(self) -> None:
        if self.threads is not None:
            check_int(self.threads, "threads", 1)
        for eps in self.eps:
            _check_eps(eps)
        for flag, value in (("--robust-images", self.robust_images), ("--attack-steps", self.attack_steps)):
            if value < 1:
                raise ConfigError(f"{flag} {value} must be >= 1")
        check_int(self.restarts, "restarts", 1)


@dataclass(frozen=True)
class CompareReport:
    rows: list[CompareRow]
    header: str
    files: Mapping[str, Path] = field(default_factory=dict)  # md/json/csv when written


def compare_report(config: CompareConfig, out: str | Path | None = None) -> CompareReport:
    """Score every entry; with ``out``, write ``report.md/json/csv``, the trade-off plot and one bits plot per
    searched policy (and copy ``amplification`` in)."""
    from hwsearch.plots import plot_policy_bits, plot_tradeoff
    from hwsearch.report import write_compare
    from hwsearch.robust import SQUARE_QUERIES

    cost_model = get_cost_model(config.target)  # fail fast on a bad name, before loading anything
    readers: dict[str, tuple[Callable[[Sequence[str]], Policy] | None, str | None]] = {}
    for spec in config.policies:
        name, value = _named(spec, "--policy")
        path, _, ckpt = value.partition("@")
        readers[name] = (read_policy_for(path), ckpt or None)
    for spec in config.models:
        name, model_ckpt = _named(spec, "--model")
        readers[name] = (None, model_ckpt)
    ws = config.source.prepare()
    x_probe, y_probe = ws.split("val", 256)
    use_threads(config.threads, model_probe(ws.model, x_probe.to(ws.device), y_probe.to(ws.device)))
    others: dict[str, Workspace] = {}
    entries: dict[str, Any] = dict(standard_entries(ws, bits=config.fixed))
    for name, (read, other) in readers.items():
        policy = None if read is None else read(ws.layer_names)
        if other is None:
            entries[name] = policy
        else:
            if other not in others:
                others[other] = config.source.prepare(other)
            entries[name] = (policy, others[other])
    robust = robust_evaluator(
        ws, config.eps, steps=config.attack_steps, restarts=config.restarts, images=config.robust_images
    )
    rows = compare_policies(ws, entries, config.target, split="test", robust_eval=robust if config.eps else None)
    images = len(ws.splits.test)  # type: ignore[arg-type]  # every split is a sized map-style dataset
    header = (
        f"# hwsearch comparison\n\nModel `{ws.model_name}` on the `{ws.splits.name}` test split "
        f"({images} images), device `{config.target}`."
    )
    if config.eps:
        header += (
            f" Robust accuracy: per-sample worst case over STE-, shadow- and transfer-PGD ({config.attack_steps} "
            f"steps, {config.restarts} restart(s)), margin-loss PGD, FGSM and gradient-free Square "
            f"({SQUARE_QUERIES} queries), L-inf, on the first {config.robust_images} test images."
        )
    if out is None:
        return CompareReport(rows, header)
    from hwsearch.job import prepare_output

    folder = prepare_output(out, True, "report.md")
    plots = ["tradeoff.png"]
    plot_tradeoff(rows, folder / "tradeoff.png", device=config.target)
    for row in rows:
        if row.policy is not None and not row.name.startswith("fixed"):
            fname = f"bits-{''.join(c if c.isalnum() else '_' for c in row.name)}.png"
            entry = entries[row.name]
            src = entry[1] if isinstance(entry, tuple) else ws
            shares = policy_cost(cost_model, src.layers, row.policy).latency_shares()
            plot_policy_bits(row.policy, shares, folder / fname, title=f"{row.name}: bits per layer")
            plots.append(fname)
    if config.amplification:
        png = Path(config.amplification)
        png = png / "amplification.png" if png.is_dir() else png
        if not png.is_file():
            raise ConfigError(f"--amplification {str(png)!r} is not a PNG written by `hwsearch amplify`")
        shutil.copyfile(png, folder / "amplification.png")
        plots.append("amplification.png")
    header += "\n\n" + "\n".join(f"![{p}]({p})" for p in plots)
    return CompareReport(rows, header, write_compare(folder, rows, config.target, header))


# -------------------------------------------------------------------------------------------- evaluate
@dataclass(frozen=True)
class EvaluateConfig:
    """One policy's test accuracy and device cost: ``policy`` on ``source.checkpoint``, or a ``quantized``
    checkpoint written by ``hwsearch export --format checkpoint``."""

    policy: str | None = None
    checkpoint: str | None = None
    quantized: str | None = None
    target: str = DEFAULT_DEVICE
    data_root: str | None = None
    model_factory: str | None = None
    compute_device: str = "cpu"

    def __post_init__(self) -> None:
        if bool(self.quantized) == bool(self.policy or self.checkpoint):
            raise ConfigError("pass either --policy P --checkpoint CKPT, or --quantized F.pt")

    @property
    def source(self) -> ModelSource:
        return ModelSource(self.checkpoint or "", self.data_root, self.model_factory, self.compute_device)


@dataclass(frozen=True)
class PolicyReport:
    """What ``hwsearch evaluate`` prints: the scored row, its fixed 8-bit reference and the FP32 size."""

    source: str
    dataset: str
    images: int
    target: str
    row: CompareRow
    cost: PolicyCost
    reference: PolicyCost
    float_bits: int


def evaluate_policy(config: EvaluateConfig) -> PolicyReport:
    """Score the policy on the test split and price it on ``config.target`` (the same scoring as a comparison)."""
    from hwsearch.policy import uniform_policy

    cost_model = get_cost_model(config.target)  # fail fast on a bad name, before loading anything
    layers: list[LayerInfo]
    if config.quantized:
        from hwsearch.data import load_dataset, tensors
        from hwsearch.models import model_layers
        from hwsearch.quantized import load_quantized
        from hwsearch.runtime import resolve_compute_device, to_device

        device = resolve_compute_device(config.source.compute_device)
        qmodel, policy, meta = load_quantized(config.quantized, config.model_factory)
        _, layers = model_layers(meta["model_name"], meta["num_classes"], tuple(meta["input_shape"]))
        splits = load_dataset(meta["dataset"], config.data_root)
        x, y = tensors(splits.test)
        row = score_policy(config.quantized, to_device(qmodel, device), layers, policy, cost_model, x, y)
        source, dataset = config.quantized, splits.name
    else:
        if not (config.policy and config.checkpoint):
            raise ConfigError("--policy and --checkpoint go together (or pass --quantized F.pt)")
        read = read_policy_for(config.policy)
        ws = config.source.prepare()
        policy = read(ws.layer_names)
        row = compare_policies(ws, {config.policy: policy}, config.target, split="test")[0]
        layers, source, dataset = ws.layers, config.policy, ws.splits.name
        x, y = ws.split("test")
    cost = policy_cost(cost_model, layers, policy)
    ref = policy_cost(cost_model, layers, uniform_policy([ly.name for ly in layers], 8))
    return PolicyReport(source, dataset, len(y), cost_model.name, row, cost, ref, float_size_bits(layers))
