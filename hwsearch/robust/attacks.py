"""Attacks (FGSM, PGD, gradient-free Square) on fake-quantized models, and worst-case robust accuracy.

Quantizers blunt gradients: straight-through (STE) PGD alone flatters low-bit models (docs/ARCHITECTURE.md,
"The attack set").
Every attack therefore names how its gradient is taken: ``ste`` (through the quantizers' straight-through
estimators), ``shadow`` (quantized forward value, float backward) or ``transfer`` (crafted on the FP32 source
model); ``square`` takes none (random search on the forward value, :mod:`hwsearch.robust.square`), the guard
against gradient masking that every gradient route can miss. :func:`robust_accuracy` counts an image robust only if it is classified correctly clean and survives
every attack in the list: the per-sample worst case.

Attacks run in eval mode, take inputs in [0, 1] (normalisation lives inside the model) and differentiate with
respect to the input only (``torch.autograd.grad``), so parameters' ``.grad`` and BatchNorm statistics are
never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwsearch.checks import check_choice, check_int, check_number
from hwsearch.errors import ConfigError
from hwsearch.quant import gradient_mode

__all__ = [
    "ATTACK_METHODS",
    "ATTACK_NORMS",
    "ATTACK_LOSSES",
    "ATTACK_GRADS",
    "GRADIENT_FREE_METHODS",
    "SQUARE_QUERIES",
    "AttackConfig",
    "RobustResult",
    "attack",
    "attack_survivors",
    "attack_with_outcome",
    "image_starts",
    "robust_accuracy",
    "search_attacks",
    "report_attacks",
    "is_gradient_free",
]

ATTACK_METHODS = ("fgsm", "pgd", "square")
ATTACK_NORMS = ("linf", "l2")
ATTACK_LOSSES = ("ce", "margin")
ATTACK_GRADS = ("ste", "shadow", "transfer", "none")
GRADIENT_FREE_METHODS = ("square",)
# Square's query budget in reports. `compare` of FP32 + W8A8 + W4A4 (demo smallcnn, 500 images, eps 0.1) took
# 2.15x as long with 200 queries as without Square; 150 queries: 2.02x the CPU time (benchmarks.square_cost).
SQUARE_QUERIES = 150

_STEP_FACTOR = 2.5  # Madry et al.: step = 2.5 * eps / steps lets PGD reach the boundary from any start


@dataclass(frozen=True)
class AttackConfig:
    """One attack: method, budget (``eps`` in input units), gradient route, loss and restarts.

    ``eps`` must lie in [0, 1] for ``linf`` (the whole pixel range); for ``l2`` any finite ``eps >= 0``.
    ``step_size`` defaults to ``2.5 * eps / steps`` for both norms. FGSM is a single deterministic step of
    size ``eps`` from the clean input, so it ignores ``steps``, ``step_size``, ``random_start`` and ``restarts``.
    ``square`` (L-inf only) is gradient-free: ``steps`` is its query budget per restart, ``grad`` is ``none``
    (the default ``ste`` is read as ``none``), ``step_size`` and ``random_start`` do not apply.
    """

    method: str = "pgd"
    eps: float = 0.1
    steps: int = 10
    step_size: float | None = None
    norm: str = "linf"
    loss: str = "ce"
    grad: str = "ste"
    restarts: int = 1
    random_start: bool = True

    def __post_init__(self) -> None:
        check_choice(self.method, "attack method", ATTACK_METHODS)
        check_choice(self.norm, "attack norm", ATTACK_NORMS)
        check_choice(self.loss, "attack loss", ATTACK_LOSSES)
        check_choice(self.grad, "attack grad", ATTACK_GRADS)
        if self.method in GRADIENT_FREE_METHODS:
            if self.grad not in ("ste", "none"):
                raise ConfigError(f"attack grad = {self.grad!r} does not apply to {self.method} (gradient-free)")
            object.__setattr__(self, "grad", "none")
            if self.norm != "linf":
                raise ConfigError(f"attack norm = {self.norm!r} is not available for {self.method}; use 'linf'")
        elif self.grad == "none":
            raise ConfigError(f"attack grad = 'none' needs a gradient-free method ({', '.join(GRADIENT_FREE_METHODS)})")
        check_number(self.eps, "attack eps")
        if self.eps < 0 or (self.norm == "linf" and self.eps > 1):
            bound = "[0, 1] (inputs are in [0, 1])" if self.norm == "linf" else ">= 0"
            raise ConfigError(f"attack eps = {self.eps!r} is out of range; use {bound}")
        object.__setattr__(self, "eps", float(self.eps))
        check_int(self.steps, "attack steps", 1)
        check_int(self.restarts, "attack restarts", 1)
        if self.step_size is not None:
            object.__setattr__(self, "step_size", check_number(self.step_size, "attack step_size", positive=True))
        if not isinstance(self.random_start, bool):
            raise ConfigError(f"attack random_start = {self.random_start!r} must be True or False")

    @property
    def alpha(self) -> float:
        """The PGD step size actually used."""
        return self.step_size if self.step_size is not None else _STEP_FACTOR * self.eps / self.steps

    @property
    def label(self) -> str:
        """Short column name, e.g. ``pgd10-ste``, ``pgd40-shadow-margin-r2``, ``fgsm-ste``, ``square150-margin``
        (eps not included)."""
        head = "fgsm" if self.method == "fgsm" else f"{self.method}{self.steps}"
        parts = [head] if self.grad == "none" else [head, self.grad]
        if self.norm != "linf":
            parts.append(self.norm)
        if self.loss != "ce":
            parts.append(self.loss)
        if self.method != "fgsm" and self.restarts > 1:
            parts.append(f"r{self.restarts}")
        if self.method == "pgd" and not self.random_start:
            parts.append("nors")
        return "-".join(parts)


@dataclass(frozen=True)
class RobustResult:
    """Clean and robust accuracy (fractions) on ``n`` images; ``worst`` is the per-sample worst case."""

    clean: float
    worst: float
    per_attack: Mapping[str, float]
    n: int

    def __post_init__(self) -> None:
        for what, v in (("clean", self.clean), ("worst", self.worst), *self.per_attack.items()):
            if not (0.0 <= v <= 1.0):
                raise ConfigError(f"accuracy {what} = {v!r} is not a fraction in [0, 1]")
        if self.worst > self.clean + 1e-12:
            raise ConfigError(f"robust accuracy {self.worst} exceeds clean accuracy {self.clean}")
        object.__setattr__(self, "per_attack", MappingProxyType(dict(self.per_attack)))

    def to_dict(self) -> dict[str, object]:
        return {"clean": self.clean, "worst": self.worst, "per_attack": dict(self.per_attack), "n": self.n}


# --------------------------------------------------------------------------------------------- helpers


def _device_of(model: nn.Module, fallback: torch.device) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return fallback


@contextmanager
def _eval_mode(*models: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the attack, which needs only the input's gradient (frozen, a shadow
    quantizer skips its float forward pass: ``hwsearch.quant.apply._ShadowGrad``); restores every submodule's own
    flag (a model may be partly in train mode) and every parameter's."""
    saved = [(m, m.training) for model in models for m in model.modules()]
    trainable = [p for model in models for p in model.parameters() if p.requires_grad]
    for model in models:
        model.eval()
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for m, flag in saved:
            m.training = flag
        for p in trainable:
            p.requires_grad_(True)


def _loss_fn(kind: str) -> Callable[[Tensor, Tensor], Tensor]:
    if kind == "ce":
        return lambda logits, y: F.cross_entropy(logits, y, reduction="sum")

    def margin(logits: Tensor, y: Tensor) -> Tensor:
        # CW-style: best wrong logit minus the true logit; does not saturate the way softmax-CE does
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
        return (other - true).sum()

    return margin


def _flat_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def _project(x_adv: Tensor, x: Tensor, eps: float, norm: str) -> Tensor:
    if norm == "linf":
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
    else:
        delta = x_adv - x
        delta = delta * (eps / _flat_norm(delta)).clamp(max=1.0)
        x_adv = x + delta
    return x_adv.clamp(0.0, 1.0)


def _step(x_adv: Tensor, g: Tensor, size: float, norm: str) -> Tensor:
    if norm == "linf":
        return x_adv + size * g.sign()
    return x_adv + size * g / _flat_norm(g)


def _start_delta(
    shape: Sequence[int],
    eps: float,
    norm: str,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """A random start's offset for a batch of ``shape``: uniform in the L-inf ball, or a random direction at a
    uniform radius for L2 (before projection onto [0, 1])."""
    gen_dev = generator.device if generator is not None else device
    if norm == "linf":
        u = torch.rand(tuple(shape), generator=generator, device=gen_dev, dtype=dtype).to(device)
        return (2 * u - 1) * eps
    d = torch.randn(tuple(shape), generator=generator, device=gen_dev, dtype=dtype).to(device)
    r = torch.rand((shape[0],), generator=generator, device=gen_dev, dtype=dtype).to(device)
    return d / _flat_norm(d) * (eps * r).view(-1, *([1] * (len(shape) - 1)))


def _random_start(x: Tensor, eps: float, norm: str, generator: torch.Generator | None) -> Tensor:
    return _project(x + _start_delta(x.shape, eps, norm, generator, x.dtype, x.device), x, eps, norm)


#: odd multiplier that spreads (seed, image id) over the 63-bit seed space of :func:`image_starts`
_ID_STRIDE = 0x9E3779B97F4A7C15 >> 1


def image_starts(ids: Tensor, restarts: int, shape: Sequence[int], cfg: AttackConfig, seed: int) -> Tensor:
    """Random-start offsets ``(restarts, len(ids), *shape)``, each image's drawn from its own generator seeded
    by ``(seed, id)``.

    An image's start then depends on nothing but its id: not on the batch it is attacked in, nor on which other
    images are still being attacked. That is what lets a sharded evaluation (:mod:`hwsearch.evaluate_shards`)
    give the same figures as one process. The offsets do not depend on the attack either, so two attacks that
    differ only in gradient route start from the same points.
    """
    rows = []
    for i in ids.tolist():
        g = torch.Generator(device="cpu").manual_seed((int(seed) * _ID_STRIDE + int(i) + 1) % (2**63))
        rows.append(_start_delta((restarts, *shape), cfg.eps, cfg.norm, g, torch.float32, torch.device("cpu")))
    if not rows:
        return torch.zeros((restarts, 0, *shape))
    return torch.stack(rows, dim=1)


def _input_grad(
    model: nn.Module, x: Tensor, y: Tensor, loss: Callable[[Tensor, Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """Gradient of the summed loss w.r.t. the input only (no parameter ``.grad`` is written); also the logits."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xg)
        (g,) = torch.autograd.grad(loss(logits, y), xg)
    return g, logits.detach()


@torch.no_grad()
def _wrong(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return model(x).argmax(dim=1) != y


def _run_once(
    source: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: AttackConfig,
    generator: torch.Generator | None,
    freeze: bool,
    start: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One restart crafted on ``source``. Returns (x_adv, frozen).

    With ``freeze`` (``source`` is the attacked model itself) a sample stops at the first iterate the model
    misclassifies (the forward value is the true quantized output in both ``ste`` and ``shadow`` modes) and is
    marked in ``frozen``; the rest continue. Cheaper, and no weaker than returning the last iterate.
    """
    loss = _loss_fn(cfg.loss)
    frozen = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    if cfg.method == "fgsm":
        g, _ = _input_grad(source, x, y, loss)
        return _project(_step(x, g, cfg.eps, cfg.norm), x, cfg.eps, cfg.norm), frozen

    if not cfg.random_start:
        x_adv = x.clone()
    elif start is not None:
        x_adv = _project(x + start.to(device=x.device, dtype=x.dtype), x, cfg.eps, cfg.norm)
    else:
        x_adv = _random_start(x, cfg.eps, cfg.norm, generator)
    active = torch.arange(x.shape[0], device=x.device)
    for _ in range(cfg.steps):
        xa, ya, x0 = x_adv[active], y[active], x[active]
        g, logits = _input_grad(source, xa, ya, loss)
        if freeze:
            keep = logits.argmax(dim=1) == ya
            frozen[active[~keep]] = True  # their current iterate, already in x_adv, is the result
            active, xa, x0, g = active[keep], xa[keep], x0[keep], g[keep]
            if active.numel() == 0:
                break
        x_adv[active] = _project(_step(xa, g, cfg.alpha, cfg.norm), x0, cfg.eps, cfg.norm)
    return x_adv, frozen


# --------------------------------------------------------------------------------------------- public


def attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: AttackConfig,
    *,
    source_model: nn.Module | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Adversarial examples for ``model`` within ``cfg.eps`` of ``x``; see :func:`attack_with_outcome`."""
    return attack_with_outcome(model, x, y, cfg, source_model=source_model, generator=generator)[0]


def attack_with_outcome(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: AttackConfig,
    *,
    source_model: nn.Module | None = None,
    generator: torch.Generator | None = None,
    starts: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Adversarial examples for ``model`` within ``cfg.eps`` of ``x`` (inputs and outputs in [0, 1]).

    Runs on the model's device and returns the examples on ``x``'s device and dtype; ``x`` is not modified.
    ``grad="transfer"`` crafts on ``source_model`` (the FP32 model) with plain gradients. With several
    restarts each sample keeps the first example that ``model`` misclassifies (restarts after the first only
    attack the samples not yet fooled); a sample never fooled gets the last restart's final iterate.
    Random starts draw from ``generator`` (any device) for reproducibility, or are given: ``starts`` holds one
    offset per restart and image, ``(restarts, N, ...)`` (:func:`image_starts`); Square ignores it.

    Also returns whether ``model`` misclassifies each example (a bool mask on ``x``'s device), which the attack
    has already computed: callers need no second forward pass to score it.
    """
    if not isinstance(cfg, AttackConfig):
        raise TypeError(f"cfg must be an AttackConfig, got {type(cfg).__name__}")
    if x.dim() < 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ConfigError(
            f"attack needs a batch x (N, ...) and labels y (N,); got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ConfigError(
            f"attack inputs must lie in [0, 1] (got [{x.min().item():.4g}, {x.max().item():.4g}]); "
            "normalise inside the model"
        )
    if cfg.grad == "transfer" and source_model is None:
        raise ConfigError(f"attack {cfg.label} transfers from the FP32 model; pass source_model=")
    restarts = 1 if cfg.method == "fgsm" else cfg.restarts
    if starts is not None and (
        starts.dim() != x.dim() + 1 or starts.shape[0] < restarts or starts.shape[1:] != x.shape
    ):
        raise ConfigError(
            f"starts has shape {tuple(starts.shape)}; expected ({restarts}, {', '.join(map(str, x.shape))})"
        )
    if cfg.eps == 0 or x.shape[0] == 0:
        with _eval_mode(model):
            return x.clone(), _wrong(model, x.to(_device_of(model, x.device)), y.to(_device_of(model, x.device))).to(
                x.device
            )

    device = _device_of(model, x.device)
    xd = x.detach().to(device)
    yd = y.detach().to(device)
    if cfg.grad == "transfer":
        assert source_model is not None
        source, mode = source_model, "ste"
        src_device = _device_of(source_model, device)
    else:
        source, mode, src_device = model, cfg.grad, device
    freeze = source is model

    best = xd.clone()
    done = torch.zeros(xd.shape[0], dtype=torch.bool, device=device)
    if cfg.method in GRADIENT_FREE_METHODS:
        from hwsearch.robust.square import square_attack

        with _eval_mode(model):
            best = square_attack(
                model, xd, yd, eps=cfg.eps, queries=cfg.steps, restarts=cfg.restarts, loss=cfg.loss, generator=generator
            )
            fooled = _wrong(model, best, yd)
        return best.to(device=x.device, dtype=x.dtype), fooled.to(x.device)
    with _eval_mode(model, source), gradient_mode(source, mode):
        for r in range(restarts):
            todo = (~done).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            xs, ys = xd[todo], yd[todo]
            start = None if starts is None else starts[r][todo.to(starts.device)]
            x_adv, fooled = _run_once(source, xs.to(src_device), ys.to(src_device), cfg, generator, freeze, start)
            x_adv, fooled = x_adv.to(device), fooled.to(device)
            rest = (~fooled).nonzero().squeeze(1)
            if rest.numel():
                fooled[rest] = _wrong(model, x_adv[rest], ys[rest])
            best[todo] = x_adv
            done[todo] = fooled
    return best.to(device=x.device, dtype=x.dtype), done.to(x.device)


def robust_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks: Sequence[AttackConfig],
    *,
    source_model: nn.Module | None = None,
    batch_size: int = 256,
    seed: int = 0,
    cascade: bool = False,
    clean_correct: Tensor | None = None,
    sample_ids: Tensor | None = None,
) -> RobustResult:
    """Clean accuracy and per-sample worst-case robust accuracy of ``model`` over ``attacks``.

    An image counts robust only if it is correct clean and correct under every attack; each attack's own
    column counts images correct clean and under that attack. Images misclassified clean are never attacked.
    Each image's random starts come from a generator seeded by ``seed`` and the image's id (:func:`image_starts`;
    ``sample_ids``, default its position in ``x``): the same for every attack, and independent of batches and of
    which images are attacked, so any split of the images gives the same per-image verdicts. Square draws from
    its own generator seeded with ``seed``. It runs where ``model`` is.

    ``cascade=True`` attacks an image only while it is still robust, in list order: the same worst case for
    a fraction of the cost (most images fall to the first attack at large eps), but then each column is the
    cumulative figure, robust to that attack and every one before it (the first column is unchanged).

    ``clean_correct``: which images ``model`` classifies correctly, when the caller's own clean pass already
    knows (the evaluator's); saves the clean forward pass here.
    """
    attacks = list(attacks)
    labels = [a.label for a in attacks]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"attack labels must be distinct (they name result columns); got {labels}")
    if any(a.grad == "transfer" for a in attacks) and source_model is None:
        raise ConfigError("a transfer attack is listed; pass source_model= (the FP32 model)")
    check_int(batch_size, "attack batch_size", 1)
    if x.shape[0] != y.shape[0]:
        raise ConfigError(f"x has {x.shape[0]} images but y has {y.shape[0]} labels")
    if clean_correct is not None and tuple(clean_correct.shape) != (x.shape[0],):
        raise ConfigError(f"clean_correct has shape {tuple(clean_correct.shape)}; expected ({x.shape[0]},)")
    if sample_ids is None:
        sample_ids = torch.arange(x.shape[0])
    elif tuple(sample_ids.shape) != (x.shape[0],):
        raise ConfigError(f"sample_ids has shape {tuple(sample_ids.shape)}; expected ({x.shape[0]},)")
    sample_ids = sample_ids.cpu()
    dev = _device_of(model, x.device)
    n = int(x.shape[0])
    gens = [torch.Generator(device="cpu").manual_seed(int(seed)) for _ in attacks]
    clean_ok = torch.zeros(n, dtype=torch.bool)
    per = torch.zeros(len(attacks), n, dtype=torch.bool)
    with _eval_mode(model):
        for lo in range(0, n, batch_size):
            xb = x[lo : lo + batch_size].to(dev)
            yb = y[lo : lo + batch_size].to(dev)
            if clean_correct is None:
                ok = ~_wrong(model, xb, yb)
            else:
                ok = clean_correct[lo : lo + batch_size].to(device=dev, dtype=torch.bool)
            clean_ok[lo : lo + batch_size] = ok.cpu()
            alive = ok.clone()
            for i, cfg in enumerate(attacks):
                idx = (alive if cascade else ok).nonzero().squeeze(1)
                survived = torch.zeros_like(ok)
                if idx.numel():
                    ids = sample_ids[lo : lo + batch_size][idx.cpu()]
                    fooled = _fooled(model, xb[idx], yb[idx], cfg, ids, seed, source_model, gens[i])
                    survived[idx] = ~fooled.to(dev)
                alive &= survived
                per[i, lo : lo + batch_size] = (alive if cascade else survived).cpu()
    worst = clean_ok.clone()
    for row in per:
        worst &= row
    denom = max(n, 1)
    return RobustResult(
        clean=clean_ok.sum().item() / denom,
        worst=worst.sum().item() / denom,
        per_attack={lab: per[i].sum().item() / denom for i, lab in enumerate(labels)},
        n=n,
    )


def _fooled(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: AttackConfig,
    ids: Tensor,
    seed: int,
    source_model: nn.Module | None,
    generator: torch.Generator | None,
) -> Tensor:
    """Which of these clean-correct images ``cfg`` fools, PGD starting each image where its id says."""
    starts = None
    if cfg.method == "pgd" and cfg.random_start:
        starts = image_starts(ids, cfg.restarts, tuple(x.shape[1:]), cfg, seed)
    _, fooled = attack_with_outcome(model, x, y, cfg, source_model=source_model, generator=generator, starts=starts)
    return fooled


def attack_survivors(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: AttackConfig,
    *,
    sample_ids: Tensor,
    seed: int = 0,
    source_model: nn.Module | None = None,
    batch_size: int = 256,
) -> Tensor:
    """Which of ``(x, y)``, all classified correctly clean, ``cfg`` fails to fool (bool, on the CPU).

    :func:`robust_accuracy`'s per-image verdict for one attack, for a caller that deals the images out itself
    (:class:`hwsearch.evaluate_shards.ShardedEvaluator` attacks each cascade stage's survivors on every shard).
    Gradient attacks only: Square draws its noise per batch, so its verdicts would depend on the deal.
    """
    if cfg.method in GRADIENT_FREE_METHODS:
        raise ConfigError(f"attack {cfg.label} draws its noise per batch; attack_survivors takes gradient attacks")
    check_int(batch_size, "attack batch_size", 1)
    if tuple(sample_ids.shape) != (x.shape[0],):
        raise ConfigError(f"sample_ids has shape {tuple(sample_ids.shape)}; expected ({x.shape[0]},)")
    dev = _device_of(model, x.device)
    ids = sample_ids.cpu()
    out = torch.zeros(x.shape[0], dtype=torch.bool)
    with _eval_mode(model):
        for lo in range(0, x.shape[0], batch_size):
            xb, yb = x[lo : lo + batch_size].to(dev), y[lo : lo + batch_size].to(dev)
            fooled = _fooled(model, xb, yb, cfg, ids[lo : lo + batch_size], seed, source_model, None)
            out[lo : lo + batch_size] = ~fooled.cpu()
    return out


def search_attacks(eps: float, steps: int = 10, method: str = "pgd") -> list[AttackConfig]:
    """The cheap pair the search runs every episode: STE and shadow gradients (no transfer model needed).

    ``method="fgsm"`` gives the one-step pair (``steps`` is then 1).
    """
    steps = 1 if method == "fgsm" else steps
    return [AttackConfig(method, eps, steps, grad="ste"), AttackConfig(method, eps, steps, grad="shadow")]


def report_attacks(eps: float, steps: int = 40, restarts: int = 2, queries: int = SQUARE_QUERIES) -> list[AttackConfig]:
    """The full set for reports: STE-, shadow- and transfer-PGD (CE), shadow-PGD with the margin loss, FGSM, and
    gradient-free Square (margin loss, ``queries`` per image; ``queries=0`` leaves it out).

    Needs ``source_model`` (the FP32 model) in :func:`robust_accuracy` for the transfer attack.
    """
    check_int(queries, "square queries", 0)
    square = [AttackConfig("square", eps, queries, loss="margin")] if queries else []
    return [
        AttackConfig("pgd", eps, steps, grad="ste", restarts=restarts),
        AttackConfig("pgd", eps, steps, grad="shadow", restarts=restarts),
        AttackConfig("pgd", eps, steps, grad="transfer", restarts=restarts),
        AttackConfig("pgd", eps, steps, grad="shadow", loss="margin", restarts=restarts),
        AttackConfig("fgsm", eps, 1, grad="ste"),
        *square,
    ]


def is_gradient_free(label: str) -> bool:
    """Whether a result column (an :attr:`AttackConfig.label`) comes from a gradient-free attack."""
    head = label.split("-", 1)[0].rstrip("0123456789")
    return head in GRADIENT_FREE_METHODS
