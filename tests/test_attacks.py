"""Attacks: budget invariants, strength ordering, state hygiene, determinism and gradient-masking exposure."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hwsearch.errors import ConfigError
from hwsearch.policy import uniform_policy
from hwsearch.quant import QuantWrapper, apply_policy, calibrate, quantizable_names
from hwsearch.robust import (
    MASKING_MARGIN,
    AttackConfig,
    RobustResult,
    attack,
    is_gradient_free,
    masking_gap,
    masking_warning,
    report_attacks,
    robust_accuracy,
    search_attacks,
)
from hwsearch.robust import attacks as attacks_module

N_CLASSES = 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy machine threads thrash; restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _blobs(n: int, seed: int, shape: tuple[int, ...], noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Class prototypes in [0, 1] plus Gaussian noise: separable, but only by a margin of order 0.2."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(N_CLASSES, *shape, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    x = (protos[y] + noise * torch.randn(n, *shape, generator=g)).clamp(0, 1)
    return x, y


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 80) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Tiny conv net with BatchNorm (to check running stats) on 1x6x6 synthetic images."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(144, N_CLASSES),
    )
    x, y = _blobs(256, 1, (1, 6, 6))
    _fit(model, x, y)
    xt, yt = _blobs(96, 2, (1, 6, 6))
    return model, xt, yt


@pytest.fixture(scope="module")
def mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, N_CLASSES, bias=False))
    x, y = _blobs(256, 1, (16,))
    _fit(model, x, y, steps=100)
    xt, yt = _blobs(128, 2, (16,))
    return model, xt, yt


def _quantized(model: nn.Module, bits: int, x: torch.Tensor) -> nn.Module:
    return apply_policy(model, uniform_policy(quantizable_names(model), bits, bits), calibrate(model, x))


# ------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"method": "cw"}, "'cw'"),
        ({"eps": -0.1}, "-0.1"),
        ({"eps": 1.5}, "1.5"),
        ({"eps": float("nan")}, "nan"),
        ({"steps": 0}, "steps = 0"),
        ({"steps": 2.5}, "2.5"),
        ({"step_size": 0.0}, "step_size = 0.0"),
        ({"norm": "l1"}, "'l1'"),
        ({"loss": "hinge"}, "'hinge'"),
        ({"grad": "bpda"}, "'bpda'"),
        ({"restarts": 0}, "restarts = 0"),
        ({"random_start": 1}, "random_start = 1"),
        ({"method": "square", "grad": "shadow"}, "'shadow' does not apply to square"),
        ({"method": "square", "norm": "l2"}, "'l2' is not available for square"),
        ({"grad": "none"}, "'none' needs a gradient-free method"),
    ],
)
def test_config_rejects_bad_values_naming_them(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        AttackConfig(**kwargs)


def test_config_defaults_labels_and_step_size() -> None:
    assert AttackConfig().label == "pgd10-ste"
    assert AttackConfig().alpha == pytest.approx(2.5 * 0.1 / 10)
    assert AttackConfig("fgsm", 0.1, grad="shadow").label == "fgsm-shadow"
    assert AttackConfig("pgd", 0.1, 40, grad="transfer", restarts=2).label == "pgd40-transfer-r2"
    assert AttackConfig("pgd", 2.0, 5, norm="l2", loss="margin").label == "pgd5-ste-l2-margin"
    assert AttackConfig(step_size=0.05).alpha == 0.05
    assert [a.label for a in search_attacks(0.1)] == ["pgd10-ste", "pgd10-shadow"]
    assert [a.label for a in search_attacks(0.1, 10, method="fgsm")] == ["fgsm-ste", "fgsm-shadow"]
    labels = [a.label for a in report_attacks(0.2, steps=20, restarts=3)]
    assert labels == [
        "pgd20-ste-r3",
        "pgd20-shadow-r3",
        "pgd20-transfer-r3",
        "pgd20-shadow-margin-r3",
        "fgsm-ste",
        "square150-margin",
    ]
    no_square = ["pgd20-ste", "pgd20-shadow", "pgd20-transfer", "pgd20-shadow-margin", "fgsm-ste"]
    assert [a.label for a in report_attacks(0.2, steps=20, restarts=1, queries=0)] == no_square
    assert all(a.eps == 0.2 for a in report_attacks(0.2))
    sq = AttackConfig("square", 0.1, 300)
    assert sq.grad == "none" and sq.label == "square300" and is_gradient_free(sq.label)
    assert not any(is_gradient_free(a.label) for a in report_attacks(0.1, queries=0))
    assert not is_gradient_free("worst")


def test_robust_result_validates_and_is_read_only() -> None:
    r = RobustResult(0.9, 0.5, {"a": 0.5}, 10)
    with pytest.raises(TypeError):
        r.per_attack["b"] = 0.1  # type: ignore[index]
    assert r.to_dict()["per_attack"] == {"a": 0.5}
    with pytest.raises(ConfigError, match="exceeds"):
        RobustResult(0.5, 0.6, {}, 10)
    with pytest.raises(ConfigError, match="1.2"):
        RobustResult(1.2, 0.5, {}, 10)


# ------------------------------------------------------------------------------------------- budget


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("method", ["fgsm", "pgd"])
@pytest.mark.parametrize("grad", ["ste", "shadow", "transfer"])
def test_examples_stay_in_budget_and_image_range(cnn, norm: str, method: str, grad: str) -> None:
    model, x, y = cnn
    q = _quantized(model, 3, x)
    eps = 0.15 if norm == "linf" else 0.8
    cfg = AttackConfig(method, eps, 5, norm=norm, grad=grad, restarts=2)
    x_adv = attack(q, x, y, cfg, source_model=model, generator=torch.Generator().manual_seed(0))
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(dim=1) if norm == "linf" else d.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (size > 0).any()


@pytest.mark.parametrize("eps", [0.3, 0.5])
@pytest.mark.parametrize("bits", [3, 32])
def test_square_stays_in_budget_and_image_range_and_fools_some(cnn, eps: float, bits: int) -> None:
    model, x, y = cnn
    q = model if bits == 32 else _quantized(model, bits, x)
    x_adv = attack(q, x, y, AttackConfig("square", eps, 60, loss="margin"), generator=torch.Generator().manual_seed(0))
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    d = (x_adv - x).abs().flatten(1).amax(dim=1)
    assert (d <= eps + 1e-6).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        clean_ok = q(x).argmax(1) == y
        fooled = q(x_adv).argmax(1) != y
    assert (fooled & clean_ok).any()  # it searched, and found something
    assert torch.equal(x_adv[~clean_ok], x[~clean_ok])  # images already wrong are left alone


def test_square_is_seeded_by_the_generator_and_leaves_global_rng_alone(cnn) -> None:
    model, x, y = cnn
    cfg = AttackConfig("square", 0.3, 30)
    state = torch.random.get_rng_state()
    a = attack(model, x, y, cfg, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.random.get_rng_state(), state)  # torchattacks reseeds the global RNG; we restore it
    b = attack(model, x, y, cfg, generator=torch.Generator().manual_seed(1))
    c = attack(model, x, y, cfg, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("cfg", [AttackConfig("pgd", 0.0), AttackConfig("fgsm", 0.0), AttackConfig(eps=0.0, norm="l2")])
def test_zero_eps_returns_input_exactly(cnn, cfg: AttackConfig) -> None:
    model, x, y = cnn
    x_adv = attack(model, x, y, cfg)
    assert torch.equal(x_adv, x) and x_adv.data_ptr() != x.data_ptr()
    r = robust_accuracy(model, x, y, [cfg])
    assert r.worst == r.clean


# ------------------------------------------------------------------------------------------- strength


def test_robust_accuracy_below_clean_and_non_increasing_in_eps(cnn) -> None:
    model, x, y = cnn
    results = [robust_accuracy(model, x, y, search_attacks(eps, steps=5), seed=3) for eps in (0.0, 0.05, 0.1, 0.2)]
    assert results[0].clean > 0.9
    worst = [r.worst for r in results]
    assert all(r.worst <= r.clean for r in results)
    assert all(b <= a + 1 / len(y) for a, b in zip(worst, worst[1:], strict=False)), worst
    assert worst[-1] < worst[0] - 0.2, worst


def test_pgd_no_weaker_than_fgsm(cnn) -> None:
    model, x, y = cnn
    fgsm = robust_accuracy(model, x, y, [AttackConfig("fgsm", 0.15)]).worst
    pgd = robust_accuracy(model, x, y, [AttackConfig("pgd", 0.15, 10)]).worst
    assert pgd <= fgsm


@pytest.mark.parametrize(("eps", "norm"), [(1.0, "linf"), (0.5, "linf"), (6.0, "l2")])
def test_large_eps_breaks_everything(cnn, eps: float, norm: str) -> None:
    model, x, y = cnn
    r = robust_accuracy(model, x, y, [AttackConfig("pgd", eps, 10, norm=norm)])
    assert r.clean > 0.9 and r.worst <= 0.05


def test_worst_case_is_per_sample_intersection(cnn) -> None:
    model, x, y = cnn
    q = _quantized(model, 2, x)
    r = robust_accuracy(q, x, y, report_attacks(0.1, steps=5, restarts=1), source_model=model, batch_size=40)
    assert r.n == len(y)
    assert r.worst <= min(r.per_attack.values()) <= max(r.per_attack.values()) <= r.clean
    assert set(r.per_attack) == {a.label for a in report_attacks(0.1, steps=5, restarts=1)}


class _ReadsMarker(nn.Module):
    """Class 0 unless feature 0 is pushed below 0.5; feature 1 carries the image's index (i / n) for the fakes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0] - 0.5, 0.5 - x[:, 0]], dim=1)


def _fooling(parity: int, n: int):  # type: ignore[no-untyped-def]
    """A fake attack that fools exactly the images whose index has this parity (and only those)."""

    def fake(model, x, y, cfg, *, source_model=None, generator=None, starts=None):  # type: ignore[no-untyped-def]
        idx = torch.round(x[:, 1] * n).long()
        out = x.clone()
        out[idx % 2 == parity, 0] = 0.0
        return out, model(out).argmax(1) != y

    return fake


@pytest.mark.parametrize("batch_size", [3, 256])
def test_worst_case_is_the_per_sample_intersection_not_the_lowest_column(monkeypatch, batch_size: int) -> None:
    """Two attacks that fool disjoint halves: each column is 50%, but no image survives both, so worst is 0.
    The minimum of the per-attack columns (a tempting shortcut) would say 50%."""
    n = 10
    x = torch.stack([torch.ones(n), torch.arange(n) / n], dim=1)
    y = torch.zeros(n, dtype=torch.long)
    even, odd = AttackConfig("pgd", 0.1, 1, grad="ste"), AttackConfig("pgd", 0.1, 1, grad="shadow")
    even2 = AttackConfig("pgd", 0.1, 2, grad="ste")
    fakes = {even.label: _fooling(0, n), odd.label: _fooling(1, n), even2.label: _fooling(0, n)}
    monkeypatch.setattr(
        attacks_module,
        "attack_with_outcome",
        lambda model, x, y, cfg, **kw: fakes[cfg.label](model, x, y, cfg, **kw),
    )
    model = _ReadsMarker()
    r = robust_accuracy(model, x, y, [even, odd], batch_size=batch_size)
    assert r.clean == 1.0
    assert r.per_attack == {even.label: 0.5, odd.label: 0.5}
    assert r.worst == 0.0
    same = robust_accuracy(model, x, y, [even, even2], batch_size=batch_size)
    assert same.worst == 0.5  # an attack that fools nothing new leaves the worst case where the first put it


class _ModeProbe(nn.Module):
    """Records ``self.training`` on every forward pass (and of a child, which ``model.eval()`` must reach too)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(36, N_CLASSES))
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.training or self.body.training)
        return self.body(x)


@pytest.mark.parametrize(
    "cfg",
    [
        AttackConfig("pgd", 0.1, 3, grad="ste"),
        AttackConfig("pgd", 0.1, 3, grad="shadow", restarts=2),
        AttackConfig("pgd", 0.1, 3, grad="transfer"),
        AttackConfig("fgsm", 0.1),
        AttackConfig("square", 0.1, 10),
    ],
    ids=lambda c: c.label,
)
def test_attacks_run_the_model_in_eval_mode_and_give_train_mode_back(cnn, cfg: AttackConfig) -> None:
    """Handed over in train mode (BatchNorm/Dropout would then use batch statistics and drift): every forward
    pass the attack makes, on the attacked model and on the transfer source, sees eval mode."""
    _, x, y = cnn
    torch.manual_seed(0)
    model, source = _ModeProbe().train(), _ModeProbe().train()
    attack(model, x, y, cfg, source_model=source, generator=torch.Generator().manual_seed(0))
    passes = model.seen + source.seen
    assert passes and not any(passes), passes
    assert model.training and model.body.training and source.training  # given back as handed over
    model.seen.clear()
    robust_accuracy(model, x, y, [cfg], source_model=source)
    assert model.seen and not any(model.seen)
    assert model.training


def test_cascade_keeps_the_worst_case_and_makes_columns_cumulative(cnn) -> None:
    model, x, y = cnn
    q = _quantized(model, 3, x)
    atks = [
        AttackConfig("pgd", 0.1, 5, grad="ste", random_start=False),
        AttackConfig("pgd", 0.1, 5, grad="shadow", loss="margin", random_start=False),
        AttackConfig("fgsm", 0.1),
    ]
    full = robust_accuracy(q, x, y, atks)
    fast = robust_accuracy(q, x, y, atks, cascade=True)
    cols = list(fast.per_attack.values())
    assert fast.clean == full.clean
    assert cols[0] == full.per_attack[atks[0].label]
    assert cols == sorted(cols, reverse=True) and cols[-1] == fast.worst
    assert abs(fast.worst - full.worst) <= 1 / len(y)


def test_cascade_attacks_only_what_still_stands(cnn, monkeypatch) -> None:
    """The point of the cascade is cost: each attack sees only the images every earlier one left robust."""
    model, x, y = cnn
    atks = [AttackConfig("pgd", 0.15, 3, grad="ste"), AttackConfig("fgsm", 0.15), AttackConfig("pgd", 0.15, 2)]
    seen: list[int] = []
    real = attacks_module.attack_with_outcome

    def spy(model, x, y, cfg, **kw):  # type: ignore[no-untyped-def]
        seen.append(int(x.shape[0]))
        return real(model, x, y, cfg, **kw)

    monkeypatch.setattr(attacks_module, "attack_with_outcome", spy)
    fast = robust_accuracy(model, x, y, atks, cascade=True)
    n = len(y)
    cols = [round(v * n) for v in fast.per_attack.values()]
    assert seen == [round(fast.clean * n), *cols[:-1]] and cols[0] < seen[0]
    seen.clear()
    robust_accuracy(model, x, y, atks, cascade=False)
    assert seen == [round(fast.clean * n)] * 3


def test_restarts_keep_every_earlier_success(cnn) -> None:
    model, x, y = cnn
    one = attack(model, x, y, AttackConfig(eps=0.2, steps=3), generator=torch.Generator().manual_seed(5))
    three = attack(model, x, y, AttackConfig(eps=0.2, steps=3, restarts=3), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        fooled_one = model(one).argmax(1) != y
        fooled_three = model(three).argmax(1) != y
    assert (fooled_three | ~fooled_one).all()  # first restart is the same run; later ones only add
    assert fooled_three.sum() >= fooled_one.sum()
    assert fooled_one.any() and not fooled_one.all()
    # an image fooled by the first restart keeps that very example: later restarts never re-attack it
    assert torch.equal(three[fooled_one], one[fooled_one])


# ------------------------------------------------------------------------------------------- hygiene


@pytest.mark.parametrize("grad", ["ste", "shadow", "transfer"])
def test_attack_leaves_model_and_input_untouched(cnn, grad: str) -> None:
    model, x, y = cnn
    q = _quantized(model, 4, x)
    q.train()
    q[1].eval()  # mixed flags must come back exactly as they were
    for w in q.modules():
        if isinstance(w, QuantWrapper):
            w.grad_mode = "shadow"
    bn = q[1]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    q[4].layer.weight.grad = torch.ones_like(q[4].layer.weight)  # an existing .grad must not change either
    x0 = x.clone()
    attack(q, x, y, AttackConfig(eps=0.1, steps=3, grad=grad), source_model=model)
    assert torch.equal(x, x0)
    assert [m.training for m in q.modules()] == [m is not bn for m in q.modules()]
    assert not model.training and not any(m.training for m in model.modules())
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert torch.equal(bn.num_batches_tracked, stats[2])
    assert all(p.grad is None for n, p in q.named_parameters() if not n.startswith("4."))
    assert torch.equal(q[4].layer.weight.grad, torch.ones_like(q[4].layer.weight))
    assert all(p.grad is None for p in model.parameters())
    assert all(w.grad_mode == "shadow" for w in q.modules() if isinstance(w, QuantWrapper))


def test_same_seed_same_examples_and_results(cnn) -> None:
    model, x, y = cnn
    cfg = AttackConfig(eps=0.1, steps=3, restarts=2)
    a = attack(model, x, y, cfg, generator=torch.Generator().manual_seed(7))
    b = attack(model, x, y, cfg, generator=torch.Generator().manual_seed(7))
    c = attack(model, x, y, cfg, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    r1 = robust_accuracy(model, x, y, search_attacks(0.1, 3), seed=1, batch_size=32)
    r2 = robust_accuracy(model, x, y, search_attacks(0.1, 3), seed=1, batch_size=32)
    assert r1 == r2


def test_errors_for_missing_source_bad_inputs_and_duplicate_labels(cnn) -> None:
    model, x, y = cnn
    with pytest.raises(ConfigError, match="source_model"):
        attack(model, x, y, AttackConfig(grad="transfer"))
    with pytest.raises(ConfigError, match="source_model"):
        robust_accuracy(model, x, y, report_attacks(0.1))
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        attack(model, x * 2 - 0.5, y, AttackConfig())
    with pytest.raises(ConfigError, match="distinct"):
        robust_accuracy(model, x, y, [AttackConfig(eps=0.1), AttackConfig(eps=0.2)])
    with pytest.raises(ConfigError, match="labels"):
        attack(model, x, y[:-1], AttackConfig())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_the_models_device(cnn) -> None:
    model, x, y = cnn
    gpu = copy.deepcopy(model).cuda()
    x_adv = attack(gpu, x, y, AttackConfig(eps=0.1, steps=2), generator=torch.Generator().manual_seed(0))
    assert x_adv.device == x.device
    r = robust_accuracy(gpu, x, y, search_attacks(0.1, 2))
    assert 0 <= r.worst <= r.clean


# ------------------------------------------------------------------------------------------- masking


class _HardRound(nn.Module):
    """Snaps inputs to a 0.25 grid with no gradient at all: the textbook gradient-masking layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 4) / 4


def test_transfer_exposes_a_zero_gradient_layer(mlp) -> None:
    model, x, y = mlp
    masked = nn.Sequential(_HardRound(), copy.deepcopy(model))
    r = robust_accuracy(masked, x, y, report_attacks(0.3, steps=10, restarts=1), source_model=model)
    assert r.clean > 0.9
    assert r.per_attack["pgd10-ste"] >= r.clean - 0.02  # looks robust to white-box PGD
    assert r.per_attack["pgd10-transfer"] < 0.2
    assert r.worst < 0.2


def test_shadow_exposes_a_saturated_low_bit_quantizer(mlp) -> None:
    """A 1-bit quantizer whose calibrated range (hi=1e-3) sits below nearly every activation: the forward value
    still separates the classes (it is the sign pattern of the hidden layer), but the clipped STE gradient is
    zero almost everywhere, so STE-PGD stalls while shadow gradients go through the float layer."""
    model, x, y = mlp
    q = copy.deepcopy(model)
    q[2] = QuantWrapper(q[2], w_bits=8, a_bits=1, lo=0.0, hi=1e-3)
    r = robust_accuracy(q, x, y, search_attacks(0.1, steps=10), seed=0)
    assert r.clean > 0.5
    assert r.per_attack["pgd10-ste"] > r.per_attack["pgd10-shadow"] + 0.15, dict(r.per_attack)
    assert r.worst == pytest.approx(r.per_attack["pgd10-shadow"], abs=0.02)


# ------------------------------------------------------------------------------------------- masking check


@pytest.mark.parametrize(
    ("figs", "gap", "warn"),
    [
        # gradient attacks look strong (80%) but Square breaks 10 points more: masking warning
        ({"worst": 0.70, "pgd20-ste": 0.85, "pgd20-shadow": 0.80, "square200-margin": 0.70}, 0.10, True),
        # Square weaker than the gradient attacks: nothing to warn about (the direction matters)
        ({"worst": 0.60, "pgd20-ste": 0.60, "fgsm-ste": 0.70, "square200-margin": 0.75}, -0.15, False),
        # exactly the margin is not "more than" it; just over it is
        ({"pgd20-ste": 0.80, "square200-margin": 0.80 - MASKING_MARGIN}, MASKING_MARGIN, False),
        ({"pgd20-ste": 0.80, "square200-margin": 0.80 - MASKING_MARGIN - 0.002}, MASKING_MARGIN + 0.002, True),
        # compared against the LOWEST gradient attack, not the highest or the mean
        ({"pgd20-ste": 0.95, "pgd20-transfer": 0.62, "square200": 0.61}, 0.01, False),
        # worst is not an attack column (it is always <= every column)
        ({"worst": 0.10, "pgd20-ste": 0.80, "square200": 0.79}, 0.01, False),
    ],
)
def test_masking_warning_on_fake_numbers(figs: dict, gap: float, warn: bool) -> None:
    assert masking_gap(figs) == pytest.approx(gap)
    assert masking_warning(figs) is warn


def test_masking_check_needs_both_kinds() -> None:
    assert masking_gap({"pgd20-ste": 0.5}) is None and not masking_warning({"pgd20-ste": 0.5})
    assert masking_gap({"worst": 0.1, "square200": 0.5}) is None


def test_square_exposes_a_zero_gradient_layer_without_any_gradient(mlp) -> None:
    """The hard-rounding layer blocks every gradient route through the attacked model; Square, which only
    queries the forward value, breaks it without help from the FP32 source model."""
    model, x, y = mlp
    masked = nn.Sequential(_HardRound(), copy.deepcopy(model))
    atks = [AttackConfig("pgd", 0.3, 10, grad="ste"), AttackConfig("square", 0.3, 100, loss="margin")]
    r = robust_accuracy(masked, x, y, atks)
    assert r.clean > 0.9
    assert r.per_attack["pgd10-ste"] >= r.clean - 0.02
    assert r.per_attack["square100-margin"] < 0.5
    assert masking_warning(r.per_attack)
