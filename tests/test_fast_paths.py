"""The evaluation's shortcuts compute exactly what the plain path computes: same values, same verdicts."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hwsearch import runtime
from hwsearch.errors import ConfigError
from hwsearch.policy import Policy
from hwsearch.quant import apply_policy, calibrate, gradient_mode, quantizable_names
from hwsearch.quant.quantizers import quantize_activation
from hwsearch.robust import AttackConfig, robust_accuracy
from hwsearch.robust.attacks import _eval_mode, _wrong, attack_with_outcome

N_CLASSES = 4


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    """A fitted tiny CNN (with BatchNorm), its 3-bit quantized copy, and 48 images it mostly gets right."""
    g = torch.Generator().manual_seed(0)
    protos = torch.rand(N_CLASSES, 1, 6, 6, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, N_CLASSES, (48,), generator=g)
    x = (protos[y] + 0.1 * torch.randn(48, 1, 6, 6, generator=g)).clamp(0, 1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 36, N_CLASSES),
    )
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    cal = calibrate(model, x)
    policy = Policy({n: (3, 3) for n in quantizable_names(model)}, {})
    return model, apply_policy(model, policy, cal).eval(), x, y


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
def test_activation_quantizer_without_gradient_is_the_same_value(bits: int, signed: bool) -> None:
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(bits)) * 2
    lo, hi = (-1.5, 1.2) if signed else (0.0, 1.3)
    xg = x.clone().requires_grad_(True)
    with_grad = quantize_activation(xg, bits, lo, hi, signed)
    with torch.no_grad():
        plain = quantize_activation(x, bits, lo, hi, signed)
    assert torch.equal(plain, with_grad.detach()) and not plain.requires_grad
    (g,) = torch.autograd.grad(with_grad.sum(), xg)  # clipped STE still: 1 inside the range, 0 outside
    m = max(abs(lo), abs(hi))
    inside = (x >= -m) & (x <= m) if signed else (x >= 0) & (x <= hi)
    assert torch.equal(g, inside.float())


def test_shadow_forward_is_the_quantized_value_and_the_float_gradient(setup) -> None:  # type: ignore[no-untyped-def]
    model, qmodel, x, y = setup
    xg = x.clone().requires_grad_(True)
    with gradient_mode(qmodel, "ste"):
        ste_out = qmodel(xg)
    with gradient_mode(qmodel, "shadow"):
        shadow_out = qmodel(xg)
        with torch.no_grad():
            shadow_plain = qmodel(x)
    assert torch.equal(shadow_out.detach(), ste_out.detach()) and torch.equal(shadow_plain, ste_out.detach())
    # the gradient of the last (linear) layer's output w.r.t. its input is the float weight's
    (g_shadow,) = torch.autograd.grad(shadow_out[:, 0].sum(), xg)
    assert g_shadow.abs().sum() > 0
    (g_ste,) = torch.autograd.grad(ste_out[:, 0].sum(), xg)
    assert not torch.equal(g_shadow, g_ste)  # routes differ: shadow skips the quantizers' clipping and grid


@pytest.mark.parametrize(
    "cfg",
    [
        AttackConfig("pgd", 0.15, 5, grad="ste"),
        AttackConfig("pgd", 0.15, 5, grad="shadow", restarts=2),
        AttackConfig("pgd", 0.15, 5, grad="transfer"),
        AttackConfig("pgd", 2.0, 5, grad="shadow", loss="margin", norm="l2"),
        AttackConfig("fgsm", 0.15, 1, grad="ste"),
        AttackConfig("pgd", 0.0, 5, grad="ste"),
    ],
    ids=lambda c: f"{c.label}-eps{c.eps}",
)
def test_attack_outcome_is_the_models_verdict_on_its_examples(cfg: AttackConfig, setup) -> None:  # type: ignore[no-untyped-def]
    model, qmodel, x, y = setup
    gen = torch.Generator().manual_seed(0)
    x_adv, fooled = attack_with_outcome(qmodel, x, y, cfg, source_model=model, generator=gen)
    with _eval_mode(qmodel):
        assert torch.equal(fooled, _wrong(qmodel, x_adv, y))
    assert fooled.dtype == torch.bool and fooled.shape == y.shape
    if cfg.eps > 0:
        assert fooled.any()  # the check above is not vacuous


def test_robust_accuracy_with_the_callers_clean_verdicts_is_unchanged(setup) -> None:  # type: ignore[no-untyped-def]
    model, qmodel, x, y = setup
    attacks = [AttackConfig("pgd", 0.1, 5, grad="ste"), AttackConfig("pgd", 0.1, 5, grad="shadow")]
    with torch.no_grad():
        ok = qmodel(x).argmax(1) == y
    for cascade in (False, True):
        plain = robust_accuracy(qmodel, x, y, attacks, cascade=cascade, batch_size=20)
        reused = robust_accuracy(qmodel, x, y, attacks, cascade=cascade, batch_size=20, clean_correct=ok)
        assert plain == reused
    with pytest.raises(ConfigError, match=r"clean_correct has shape \(47,\); expected \(48,\)"):
        robust_accuracy(qmodel, x, y, attacks, clean_correct=ok[:47])


@pytest.mark.skipif(not runtime._X86, reason="to_device changes the layout on x86 CPUs only")
def test_to_device_stores_conv_weights_channels_last_and_keeps_the_values(setup) -> None:  # type: ignore[no-untyped-def]
    model, qmodel, x, _ = setup
    fast = runtime.to_device(copy.deepcopy(qmodel), "cpu")
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), qmodel(x), rtol=1e-4, atol=1e-4)
    # attacks read gradients through it: the same up to summation order
    g_ref, _ = _input_grad_of(qmodel, x)
    g_fast, _ = _input_grad_of(fast, x)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-3, atol=1e-5)


def test_to_device_leaves_models_without_convs_alone_and_gives_other_devices_the_default_layout() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(36, 4))
    before = [p.stride() for p in mlp.parameters()]
    assert runtime.to_device(mlp, "cpu") is mlp
    assert [p.stride() for p in mlp.parameters()] == before
    conv = nn.Conv2d(1, 8, 3).to(memory_format=torch.channels_last)
    runtime.to_device(conv, "meta")  # not a CPU: the default (contiguous) layout, as before this existed
    assert conv.weight.is_contiguous()


@pytest.mark.skipif(not runtime._X86, reason="to_device changes the layout on x86 CPUs only")
def test_zoo_models_are_built_channels_last_on_x86() -> None:
    from hwsearch.models import build_model

    model = build_model("smallcnn", 10, (1, 28, 28))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)


def _input_grad_of(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xg = x.detach().clone().requires_grad_(True)
    logits = model(xg)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(logits, logits.argmax(1)), xg)
    return g, logits.detach()


def test_an_evaluator_moved_to_another_device_gets_that_devices_layout() -> None:
    from hwsearch.evaluate import Evaluator
    from hwsearch.models import build_model

    model = build_model("smallcnn", 10, (1, 28, 28)).eval()
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    ev = Evaluator(model, calibrate(model, x), x, torch.zeros(8, dtype=torch.long))
    ev.to("meta")  # stands in for a GPU worker: not a CPU, so the default layout
    convs = [m.weight for m in ev.model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(w.is_contiguous() for w in convs)


def _frozen(model: nn.Module, frozen: bool) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(not frozen)
    return model


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(3, 6, 3, padding=1),
        nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False),
        nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=3),
        nn.Conv2d(3, 4, 1, padding="same"),  # a string padding: the general form
        nn.Linear(3 * 5 * 5, 7),
    ],
    ids=["conv", "strided", "grouped-dilated", "same-padding", "linear"],
)
@pytest.mark.parametrize("out_grid", [None, (0.05, 128)])
def test_shadow_with_frozen_parameters_matches_the_general_form(layer: nn.Module, out_grid) -> None:  # type: ignore[no-untyped-def]
    """Frozen (as attacks hold them), the shadow quantizer skips the float forward pass: the same value and the
    same input gradient as ``q + (ref - ref.detach())``, which it still takes when a parameter wants a gradient."""
    from hwsearch.quant.apply import QuantWrapper

    torch.manual_seed(0)
    channels = 6 if isinstance(layer, nn.Conv2d) and layer.groups == 3 else 3
    x = torch.randn(5, channels, 5, 5)
    if isinstance(layer, nn.Linear):
        x = x.flatten(1)
    wrapper = QuantWrapper(copy.deepcopy(layer), 4, 3, -2.0, 2.0).eval()
    wrapper.grad_mode = "shadow"
    wrapper.out_grid = out_grid
    results = []
    for frozen in (False, True):
        _frozen(wrapper, frozen)
        xg = x.clone().requires_grad_(True)
        out = wrapper(xg)
        weights = torch.linspace(-1, 1, out.shape[1]).reshape(-1, *[1] * (out.dim() - 2))
        (g,) = torch.autograd.grad((out * weights).sum(), xg)
        results.append((out.detach(), g))
    (general, g_general), (fast, g_fast) = results
    assert torch.equal(fast, general)
    torch.testing.assert_close(g_fast, g_general, rtol=1e-6, atol=1e-6)
    assert g_fast.abs().sum() > 0
    _frozen(wrapper, False)
    xg = x.clone().requires_grad_(True)
    wrapper(xg).sum().backward()  # trainable: the parameters get their float gradient, as QAT needs
    assert wrapper.layer.weight.grad is not None and wrapper.layer.weight.grad.abs().sum() > 0


def test_attacks_freeze_parameters_and_give_them_back(setup) -> None:  # type: ignore[no-untyped-def]
    model, qmodel, x, y = setup
    flags = [p.requires_grad for p in qmodel.parameters()]
    assert any(flags)
    with _eval_mode(qmodel):
        seen = [p.requires_grad for p in qmodel.parameters()]
    assert not any(seen) and [p.requires_grad for p in qmodel.parameters()] == flags
