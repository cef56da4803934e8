"""Batch-norm folding for scoring: the same function, the same quantized function, refused when unsafe."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from hwsearch.errors import ConfigError
from hwsearch.evaluate import Evaluator, EvaluatorConfig
from hwsearch.models import build_model
from hwsearch.policy import uniform_policy
from hwsearch.quant import apply_policy, calibrate, fold_batch_norms, quantizable_names, quantize_weight
from hwsearch.quant.fold import foldable_pairs


def _with_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random batch-norm statistics and affine terms (negative gammas too), as training leaves them."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.2)
            m.weight.data.copy_(torch.randn(c, generator=g))
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.2)
    return model.eval()


@pytest.mark.parametrize(("name", "n_pairs"), [("smallcnn", 0), ("resnet20", 19), ("mobilenet_v2", 52)])
def test_folding_keeps_the_function_and_the_layer_names(name: str, n_pairs: int) -> None:
    torch.manual_seed(0)
    model = _with_stats(build_model(name, 10, (1, 28, 28)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 1, 28, 28)
    pairs = foldable_pairs(model, (1, 28, 28))
    folded = fold_batch_norms(model, (1, 28, 28))
    assert len(pairs) == n_pairs and all(isinstance(folded.get_submodule(bn), nn.Identity) for _, bn in pairs)
    assert all(isinstance(folded.get_submodule(conv), nn.Conv2d) for conv, _ in pairs)  # names kept
    with torch.no_grad():
        want, got = model(x), folded(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the source is untouched
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == sum(
        isinstance(m, nn.BatchNorm2d) for m in model.modules()
    ) - len(pairs)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_weight_quantization_commutes_with_a_per_channel_scale(bits: int) -> None:
    """Why folding before quantizing is the same quantized model: scaling a channel scales its grid."""
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(16, 8, 3, 3, generator=g)
    s = (torch.rand(16, generator=g) + 0.1) * torch.where(torch.arange(16) % 3 == 0, -1.0, 1.0)
    shape = (-1, 1, 1, 1)
    got = quantize_weight(w * s.view(shape), bits)
    want = quantize_weight(w, bits) * s.view(shape)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


class _ReadsTwice(nn.Module):
    """The convolution's output feeds the batch norm and, functionally, a residual: folding would change it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(1)
        self.head = nn.Linear(28 * 28, 10)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return self.head((self.bn(y) + y).flatten(1))


def test_a_convolution_also_read_functionally_is_not_folded() -> None:
    torch.manual_seed(0)
    model = _with_stats(_ReadsTwice())
    assert foldable_pairs(model, (1, 28, 28)) == []  # the trace sees ``+ y`` read the convolution's output too
    assert fold_batch_norms(model, (1, 28, 28)) is model


def test_the_output_check_still_refuses_a_fold_that_changes_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import hwsearch.quant.fold as fold

    torch.manual_seed(0)
    model = _with_stats(_ReadsTwice())
    monkeypatch.setattr(fold, "foldable_pairs", lambda *_: [("conv", "bn")])  # a read no trace saw
    folded = fold_batch_norms(model, (1, 28, 28))
    assert isinstance(folded.bn, nn.BatchNorm2d)  # the output check refused the fold
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(folded(x), model(x))


def test_the_evaluator_scores_the_folded_model_except_when_fine_tuning() -> None:
    torch.manual_seed(0)
    model = _with_stats(build_model("resnet20", 10, (1, 28, 28)))
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    cal = calibrate(model, x)
    policy = uniform_policy(quantizable_names(model), 8)
    folding = Evaluator(model, cal, x, y)
    plain = Evaluator(model, cal, x, y, EvaluatorConfig(fold_batch_norms=False))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folding.scoring_model().modules())
    assert plain.scoring_model() is model
    with torch.no_grad():
        ref = apply_policy(model, policy, cal).eval()(x)
        out = folding.quantize(policy)(x)
    assert float((out - ref).abs().max()) < 0.05 * float(ref.abs().max())  # the same W8A8 model, up to rounding
    assert abs(folding.evaluate(policy).accuracy - plain.evaluate(policy).accuracy) <= 2 / 64
    tuned = Evaluator(model, cal, x, y, EvaluatorConfig(finetune_steps=1), train_data=(x, y))
    assert tuned.scoring_model() is model  # QAT trains the batch norms


def test_folding_handles_a_biased_convolution_and_a_non_affine_batch_norm() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=True),
        nn.BatchNorm2d(4, affine=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 26 * 26, 10),
    )
    model[1].running_mean.copy_(torch.randn(4))
    model[1].running_var.copy_(torch.rand(4) + 0.5)
    model.eval()
    folded = fold_batch_norms(model, (1, 28, 28))
    assert isinstance(folded[1], nn.Identity) and folded[0].bias is not None
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), rtol=1e-4, atol=1e-5)
    assert model.training is False and foldable_pairs(model.train(), (1, 28, 28)) == [("0", "1")]
    assert model.training and torch.equal(model[1].num_batches_tracked, torch.tensor(0))  # no statistics moved


@pytest.mark.parametrize("bits", [4, 3])
def test_low_bit_models_score_alike_folded_or_not(bits: int) -> None:
    """Folding moves values by float rounding only; at 3-4 bits a rare flipped rounding may move a prediction."""
    torch.manual_seed(1)
    model = _with_stats(build_model("resnet20", 10, (1, 28, 28)))
    x = torch.rand(128, 1, 28, 28)
    cal = calibrate(model, x)
    policy = uniform_policy(quantizable_names(model), bits)
    with torch.no_grad():
        plain = apply_policy(model, policy, cal).eval()(x).argmax(1)
        folded = apply_policy(fold_batch_norms(model, (1, 28, 28)), policy, cal).eval()(x).argmax(1)
    assert float((plain == folded).float().mean()) >= 0.95


def test_a_moved_evaluator_keeps_its_folded_model() -> None:
    torch.manual_seed(0)
    model = _with_stats(build_model("resnet20", 10, (1, 28, 28)))
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    ev = Evaluator(model, calibrate(model, x), x, y)
    folded = ev.scoring_model()
    assert ev.to("cpu").scoring_model() is folded  # moved with the evaluator, not rebuilt
    assert next(folded.parameters()).device.type == "cpu"
    with pytest.raises(ConfigError, match="fold_batch_norms"):
        EvaluatorConfig(fold_batch_norms=1)  # type: ignore[arg-type]
