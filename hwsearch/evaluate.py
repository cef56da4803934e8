"""``Evaluator``: clean and robust accuracy of a policy on a fixed split, cached by the enforced policy."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hwsearch.checks import check_choice, check_int, check_number
from hwsearch.errors import ConfigError, HwsearchError
from hwsearch.onnx_export import EXPORT_STYLES
from hwsearch.policy import Policy
from hwsearch.quant import Calibration, apply_policy, fold_batch_norms
from hwsearch.quant.inplace import activations_in_place
from hwsearch.records import EvalResult
from hwsearch.robust.attacks import AttackConfig
from hwsearch.runtime import to_device

__all__ = [
    "Counts",
    "EvaluatorConfig",
    "EvalTimings",
    "Evaluator",
    "clean_accuracy",
    "correct_mask",
    "count_correct",
    "default_batch",
]

#: images per clean-pass batch when none is given: on a CPU a batch of 128 small images keeps each layer's
#: activations in cache (resnet20 on 1,000 28x28 images: 1.14 s at 128 vs 2.44 s at 1,000 on one thread); a
#: GPU wants the whole split at once
CPU_BATCH, GPU_BATCH = 128, 1000


def default_batch(device: torch.device | str) -> int:
    """The clean-pass batch for ``device`` (:data:`CPU_BATCH` or :data:`GPU_BATCH`)."""
    return CPU_BATCH if torch.device(device).type == "cpu" else GPU_BATCH


def _is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error (CUDA's own type, or a RuntimeError saying so)."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def count_correct(
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int | None = None, *, device: torch.device | None = None
) -> int:
    """Top-1 hits of ``model`` on ``(x, y)`` (:func:`correct_mask` summed); the one top-1 count of hwsearch."""
    return int(correct_mask(model, x, y, batch_size, device=device).sum())


@torch.inference_mode()
def correct_mask(
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int | None = None, *, device: torch.device | None = None
) -> Tensor:
    """Which images of ``(x, y)`` ``model`` classifies correctly (bool, on the CPU), in eval mode (restored after).

    Inference mode because no gradient is ever needed here. On out-of-memory the batch is halved and the failed
    batch retried, down to one image; if even one image does not fit, a one-line :class:`HwsearchError` says so.
    The smaller batch is kept for the rest of the pass. Batches go to ``device`` (default: the model's);
    ``batch_size=None`` takes :func:`default_batch` of that device.
    """
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size = {batch_size} must be >= 1")
    was_training = model.training
    model.eval()
    if device is None:
        device = next(model.parameters()).device
    if batch_size is None:
        batch_size = default_batch(device)
    hits = torch.zeros(len(x), dtype=torch.bool)
    i = 0
    try:
        while i < len(x):
            try:
                out = model(x[i : i + batch_size].to(device))
            except (RuntimeError, MemoryError) as exc:
                if not (_is_oom(exc) or isinstance(exc, MemoryError)):
                    raise
                del exc
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if batch_size == 1:
                    raise HwsearchError(
                        f"out of memory evaluating one image on {device}; free memory on that device or use "
                        "--compute-device cpu"
                    ) from None
                batch_size = max(1, batch_size // 2)
                continue
            hits[i : i + batch_size] = out.argmax(dim=1).cpu() == y[i : i + batch_size].cpu()
            i += batch_size
    finally:
        model.train(was_training)
    return hits


def clean_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int | None = None) -> float:
    """Top-1 accuracy as a fraction (:func:`count_correct` over ``len(x)``)."""
    return count_correct(model, x, y, batch_size) / max(len(x), 1)


@dataclass(frozen=True)
class EvaluatorConfig:
    """How a policy is scored inside the search.

    ``attacks`` empty means no robustness figure. The attack runs on a fixed, seeded subset of
    ``robust_subset`` images, so every policy faces the same images and the same random starts.
    ``batch_size=None``: the clean pass's batch follows the device (:func:`default_batch`).
    ``fold_batch_norms``: score policies on the model with its batch norms folded into their convolutions
    (:mod:`hwsearch.quant.fold`; the same function up to float rounding, cheaper per attack step); never while
    fine-tuning per episode, which trains the batch norms.
    ``export_style``: the ONNX export the scored model stands for (:mod:`hwsearch.onnx_export`): ``qdq`` the
    fake-quant model exactly; ``kernels`` the fake-quant model with that deployment's roundings (each integer
    kernel's bias on its accumulator grid, an 8-bit output where no quantized layer alone reads a layer's,
    over ranges measured on the evaluator's ``range_images`` per policy), so an ``ort-cpu`` search scores what
    ONNX Runtime will run.
    """

    batch_size: int | None = None
    robust_subset: int = 200
    attacks: tuple[AttackConfig, ...] = ()
    seed: int = 0
    cache: bool = True
    finetune_steps: int = 0
    finetune_lr: float = 5e-4
    finetune_batch: int = 64
    lipschitz_beta: float = 0.0
    fold_batch_norms: bool = True
    export_style: str = "qdq"

    def __post_init__(self) -> None:
        check_choice(self.export_style, "export_style", EXPORT_STYLES)
        check_int(self.finetune_steps, "finetune_steps", 0)
        check_int(self.finetune_batch, "finetune_batch", 1)
        check_number(self.finetune_lr, "finetune_lr", positive=True)
        check_number(self.lipschitz_beta, "lipschitz_beta", 0)
        check_int(self.seed, "seed", 0, 2**32)
        if self.batch_size is not None:
            check_int(self.batch_size, "batch_size", 1)
        check_int(self.robust_subset, "robust_subset", 1)
        if not isinstance(self.fold_batch_norms, bool):
            raise ConfigError(f"fold_batch_norms = {self.fold_batch_norms!r} must be True or False")
        object.__setattr__(self, "attacks", tuple(self.attacks))


@dataclass
class EvalTimings:
    """Seconds spent per evaluation stage and cache counts; a search reports the difference of two snapshots."""

    quantize: float = 0.0
    accuracy: float = 0.0
    attack: float = 0.0
    calls: int = 0
    hits: int = 0

    def copy(self) -> EvalTimings:
        return dataclasses.replace(self)

    def since(self, earlier: EvalTimings) -> EvalTimings:
        """What was spent after ``earlier`` (a snapshot of the same counters)."""
        return EvalTimings(
            **{f.name: getattr(self, f.name) - getattr(earlier, f.name) for f in dataclasses.fields(self)}
        )

    def add(self, other: EvalTimings | Mapping[str, float]) -> None:
        """Add another evaluator's counters (a worker's), given as timings or as their ``asdict``."""
        values = dataclasses.asdict(other) if isinstance(other, EvalTimings) else other
        for name, value in values.items():
            setattr(self, name, getattr(self, name) + value)


class Evaluator:
    """Scores policies of one float model; calibration is done once, outside, and reused for every policy."""

    def __init__(
        self,
        model: nn.Module,
        calibration: Calibration,
        x: Tensor,
        y: Tensor,
        config: EvaluatorConfig | None = None,
        *,
        source_model: nn.Module | None = None,
        train_data: tuple[Tensor, Tensor] | None = None,
        range_images: Tensor | None = None,
    ) -> None:
        self.model = model
        self.calibration = calibration
        self.config = config or EvaluatorConfig()
        self.device = next(model.parameters()).device
        self.x = x.to(self.device)
        self.y = y.to(self.device)
        self.source_model = source_model if source_model is not None else model
        n = min(self.config.robust_subset, len(x))
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.config.seed))[:n]
        self._rob_idx = idx  # the clean pass's verdicts on these images are reused by the attack
        self.robust_ids = idx  # their ids, which seed their random starts (attacks.image_starts): their positions
        self.x_rob, self.y_rob = self.x[idx.to(self.device)], self.y[idx.to(self.device)]
        if self.config.finetune_steps and train_data is None:
            raise ConfigError("episode fine-tuning needs train_data=(x, y)")
        self.train_data = train_data
        if self.config.export_style == "kernels" and range_images is None:
            raise ConfigError("scoring the kernels export's roundings needs range_images (training images)")
        self.range_images = None if range_images is None else range_images.to(self.device)
        self.cache: dict[tuple, EvalResult] = {}
        self.timings = EvalTimings()
        self._folded: nn.Module | None = None  # built on first use (quant.fold)

    @property
    def attacks(self) -> Sequence[AttackConfig]:
        return self.config.attacks

    def to(self, device: str | torch.device) -> Evaluator:
        """Move the models and every held tensor to ``device`` (a worker on a GPU node); returns ``self``."""
        dev = torch.device(device)
        to_device(self.model, dev)
        to_device(self.source_model, dev)
        if self._folded is not None:
            to_device(self._folded, dev)
        self.x, self.y = self.x.to(dev), self.y.to(dev)
        self.x_rob, self.y_rob = self.x_rob.to(dev), self.y_rob.to(dev)
        if self.range_images is not None:
            self.range_images = self.range_images.to(dev)
        self.device = dev
        return self

    def reset_timings(self) -> None:
        """Zero the counters (a worker's copy reports only its own work, not what the driver did before)."""
        self.timings = EvalTimings()

    def count_hit(self) -> None:
        """Count an evaluation answered by a cache outside this evaluator (the workers' shared cache)."""
        self.timings.calls += 1
        self.timings.hits += 1

    def prime_cache(self, results: Mapping[tuple, EvalResult] | Iterable[tuple[tuple, EvalResult]]) -> None:
        """Seed the cache with known results keyed by :meth:`Policy.key` (a resumed log, the workers' cache)."""
        self.cache.update(results)

    def cached(self) -> dict[tuple, EvalResult]:
        """A copy of the cache (what a worker hands back to the driver)."""
        return dict(self.cache)

    def quantize(self, policy: Policy) -> nn.Module:
        """The policy's fake-quantized model, after the short per-episode fine-tune when one is configured, with
        the export style's roundings."""
        if self.config.finetune_steps:
            qmodel = apply_policy(self.model, policy, self.calibration)
            self._finetune(qmodel)
        else:
            qmodel = apply_policy(self.scoring_model(), policy, self.calibration)
        qmodel.eval()
        if self.config.export_style == "kernels":
            from hwsearch.int_kernels import with_deployment_roundings

            assert self.range_images is not None
            with_deployment_roundings(qmodel, self.range_images)
        return qmodel

    def scoring_model(self) -> nn.Module:
        """The float model policies are applied to: with batch norms folded unless the config says otherwise, and
        its activations in place where that changes nothing (:mod:`hwsearch.quant.inplace`)."""
        if not self.config.fold_batch_norms or self.config.finetune_steps:
            return self.model
        if self._folded is None:
            shape = tuple(self.x.shape[1:])
            self._folded = activations_in_place(fold_batch_norms(self.model, shape, self.x[:8]), shape, self.x[:4])
        return self._folded

    def _finetune(self, qmodel: nn.Module) -> None:
        """A few QAT steps on fixed, seeded batches (HAQ fine-tunes one epoch; this is the cheap version)."""
        assert self.train_data is not None
        x, y = self.train_data
        g = torch.Generator().manual_seed(self.config.seed)
        opt = torch.optim.Adam([p for p in qmodel.parameters() if p.requires_grad], lr=self.config.finetune_lr)
        reg = None
        if self.config.lipschitz_beta > 0:
            from hwsearch.robust import lipschitz_regularizer

            reg = lipschitz_regularizer(self.config.lipschitz_beta)
        qmodel.train()
        for _ in range(self.config.finetune_steps):
            idx = torch.randint(0, len(x), (self.config.finetune_batch,), generator=g)
            xb, yb = x[idx].to(self.device), y[idx].to(self.device)
            loss = nn.functional.cross_entropy(qmodel(xb), yb)
            if reg is not None:
                loss = loss + reg(qmodel)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def seconds_to_evaluate(self, policy: Policy) -> float:
        """Wall seconds of one evaluation of ``policy``, computed even when cached (a cached result is kept)."""
        key = policy.key()
        kept = self.cache.pop(key, None)
        t0 = time.perf_counter()
        self.evaluate(policy)
        seconds = time.perf_counter() - t0
        if kept is not None:
            self.cache[key] = kept
        return seconds

    def evaluate(self, policy: Policy) -> EvalResult:
        key = policy.key()
        self.timings.calls += 1
        if self.config.cache and key in self.cache:
            self.timings.hits += 1
            return self.cache[key]
        result = self._score(policy).result()
        if self.config.cache:
            self.cache[key] = result
        return result

    def _score(self, policy: Policy) -> Counts:
        """The policy's hit counts on this evaluator's images (a shard's part of a sharded evaluation)."""
        t0 = time.perf_counter()
        qmodel = self.quantize(policy)
        t1 = time.perf_counter()
        hits = correct_mask(qmodel, self.x, self.y, self.config.batch_size)
        t2 = time.perf_counter()
        counts = Counts(correct=int(hits.sum()), images=len(self.x))
        if self.attacks:
            from hwsearch.robust import robust_accuracy

            res = robust_accuracy(
                qmodel,
                self.x_rob,
                self.y_rob,
                list(self.attacks),
                source_model=self.source_model,
                seed=self.config.seed,
                cascade=True,  # the search needs only the worst case: attack only what still stands
                clean_correct=hits[self._rob_idx],
                sample_ids=self.robust_ids,
            )
            n = res.n
            counts.robust_images = n
            counts.robust = round(res.worst * n)
            counts.per_attack = {k: round(v * n) for k, v in res.per_attack.items()}
        t3 = time.perf_counter()
        self.timings.quantize += t1 - t0
        self.timings.accuracy += t2 - t1
        self.timings.attack += t3 - t2
        return counts


@dataclass
class Counts:
    """Hits of one policy on some images: clean ``correct`` of ``images``; ``robust`` (worst case) and each
    attack's survivors of ``robust_images`` (``robust`` None without attacks). Shards' counts add up."""

    correct: int
    images: int
    robust: int | None = None
    robust_images: int = 0
    per_attack: dict[str, int] = dataclasses.field(default_factory=dict)

    def __add__(self, other: Counts) -> Counts:
        robust = None if self.robust is None or other.robust is None else self.robust + other.robust
        return Counts(
            self.correct + other.correct,
            self.images + other.images,
            robust,
            self.robust_images + other.robust_images,
            {k: v + other.per_attack.get(k, 0) for k, v in self.per_attack.items()},
        )

    def result(self) -> EvalResult:
        """Fractions, as one process over all these images would have computed them."""
        if self.robust is None:
            return EvalResult(accuracy=self.correct / max(self.images, 1), robust_accuracy=None, per_attack={})
        denom = max(self.robust_images, 1)
        return EvalResult(
            accuracy=self.correct / max(self.images, 1),
            robust_accuracy=self.robust / denom,
            per_attack={k: v / denom for k, v in self.per_attack.items()},
        )
