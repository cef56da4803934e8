from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from hwsearch.errors import ModelError
from hwsearch.models import Normalize, NormalizedModel, build_model, list_models
from hwsearch.runtime import set_seed

QUANTIZABLE = (nn.Conv2d, nn.Linear)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core box they lose up to 20x to
    oversubscription (measured: one mnist5k epoch 4 s on one thread vs 84 s on two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _quantizable(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)]


def test_list_models():
    assert {"smallcnn", "resnet20", "resnet18", "resnet50", "mobilenet_v2"} <= set(list_models())


@pytest.mark.parametrize(
    "name, shape, classes",
    [
        ("smallcnn", (1, 28, 28), 10),
        ("smallcnn", (3, 32, 32), 7),
        ("smallcnn", (1, 8, 8), 10),
        ("resnet20", (3, 32, 32), 10),
        ("resnet20", (1, 28, 28), 5),
        ("mobilenet_v2", (3, 16, 16), 10),  # small inputs keep the heavy models fast
        ("mobilenet_v2", (1, 12, 12), 3),
        ("resnet18", (3, 16, 16), 10),
        ("resnet18", (1, 64, 64), 4),  # torchvision's own stem from 64 px up
        ("resnet50", (3, 16, 16), 10),
    ],
)
def test_zoo_output_shapes(name, shape, classes):
    set_seed(0)
    model = build_model(name, classes, shape)
    assert isinstance(model, NormalizedModel) and isinstance(model.normalize, Normalize)
    assert next(iter(model.children())) is model.normalize  # Normalize runs first
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, *shape))
    assert out.shape == (2, classes) and torch.isfinite(out).all()
    names = _quantizable(model)
    assert names and all(n.startswith("net.") for n in names)


def test_normalize_is_per_channel_and_follows_device_and_state_dict():
    norm = Normalize((0.1, 0.2, 0.3), (0.5, 0.25, 2.0))
    x = torch.rand(4, 3, 5, 5)
    expected = torch.stack([(x[:, c] - m) / s for c, (m, s) in enumerate([(0.1, 0.5), (0.2, 0.25), (0.3, 2.0)])], 1)
    assert torch.allclose(norm(x), expected)
    assert set(norm.state_dict()) == {"mean", "std"}
    assert not list(norm.parameters())  # not trained


def test_single_mean_std_broadcasts_to_channels():
    model = build_model("smallcnn", 10, (3, 16, 16), mean=(0.5,), std=(0.25,))
    assert model.normalize.mean.flatten().tolist() == [0.5] * 3
    assert model.normalize.std.flatten().tolist() == [0.25] * 3


@pytest.mark.parametrize("mean, std", [((0.1, 0.2), (0.5, 0.5)), ((0.5,), (0.0,)), ((), ())])
def test_bad_mean_std(mean, std):
    with pytest.raises(ModelError):
        build_model("smallcnn", 10, (3, 8, 8), mean=mean, std=std)


def test_smallcnn_names_and_size():
    model = build_model("smallcnn", 10, (1, 28, 28))
    assert _quantizable(model) == [
        "net.features.conv1",
        "net.features.conv2",
        "net.features.conv3",
        "net.classifier.fc1",
        "net.classifier.fc2",
    ]
    assert sum(p.numel() for p in model.parameters()) < 500_000


def test_resnet20_structure():
    model = build_model("resnet20", 10, (3, 32, 32))
    names = _quantizable(model)
    assert len(names) == 20 and names[0] == "net.conv1" and names[-1] == "net.fc"
    assert "net.layer3.2.conv2" in names
    assert 260_000 < sum(p.numel() for p in model.parameters()) < 280_000  # 0.27M, as published


@pytest.mark.parametrize("name, shape", [("smallcnn", (1, 28, 28)), ("resnet20", (3, 32, 32))])
def test_every_quantizable_layer_but_the_first_sees_unsigned_inputs(name, shape):
    set_seed(0)
    model = build_model(name, 10, shape).eval()
    mins: dict[str, float] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, inp, n=n: mins.__setitem__(n, float(inp[0].min())))
        for n, m in model.named_modules()
        if isinstance(m, QUANTIZABLE)
    ]
    with torch.no_grad():
        model(torch.rand(4, *shape))
    for h in hooks:
        h.remove()
    first, *rest = _quantizable(model)
    assert mins[first] < 0  # normalised input is signed
    assert all(mins[n] >= 0 for n in rest)


def test_build_is_reproducible_under_seed():
    set_seed(5)
    a = build_model("resnet20", 10, (3, 32, 32))
    set_seed(5)
    b = build_model("resnet20", 10, (3, 32, 32))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_unknown_model_lists_known_ones():
    with pytest.raises(ModelError, match="known: .*smallcnn"):
        build_model("vgg99", 10, (1, 28, 28))


@pytest.mark.parametrize("shape, classes", [((1, 28), 10), ((1, 0, 28), 10), ((1, 28, 28), 0)])
def test_bad_shape_or_classes(shape, classes):
    with pytest.raises(ModelError):
        build_model("smallcnn", classes, shape)


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "hw_user_models.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            def tiny(num_classes=10):
                return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

            def fixed():
                return nn.Sequential(nn.Flatten(), nn.LazyLinear(4))

            def boom(num_classes):
                raise ValueError("no")

            def not_a_module(num_classes):
                return 3

            def wrong_output(num_classes):
                return nn.Flatten()

            VALUE = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "hw_user_models"


def test_factory_models(factory_module):
    model = build_model(f"{factory_module}:tiny", 6, (1, 4, 4))
    assert model(torch.rand(3, 1, 4, 4)).shape == (3, 6)
    assert _quantizable(model) == ["net.1"]
    model = build_model(f"{factory_module}:fixed", 4, (1, 4, 4))  # takes no num_classes
    assert model(torch.rand(1, 1, 4, 4)).shape == (1, 4)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_module_xyz:f", "cannot import"),
        ("{m}:missing", "no attribute"),
        ("{m}:VALUE", "not callable"),
        ("{m}:boom", "factory failed"),
        ("{m}:not_a_module", "not an nn.Module"),
        ("{m}:wrong_output", "expected logits"),
        ("{m}:fixed", "expected logits"),  # 4 outputs, 10 classes asked
        (":f", "module:factory"),
    ],
)
def test_bad_factories_are_one_line_model_errors(factory_module, spec, message):
    with pytest.raises(ModelError, match=message) as err:
        build_model(spec.format(m=factory_module), 10, (1, 4, 4))
    assert "\n" not in str(err.value)
