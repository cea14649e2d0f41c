"""Networks: output shapes for every input size, published parameter counts, the factory's errors."""
import pytest
import torch

from gence import models

SIZES = [(1, 8), (1, 28), (3, 32)]
# Too slow for a unit test at full size on 2 CPU cores; their shapes are checked at 8x8 only.
BIG = {"wrn28_10", "preact_resnet18"}
PARAMS = {"resnet": {"depth": 8}, "wrn": {"depth": 10, "width": 1}}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", models.available())
@pytest.mark.parametrize("channels,size", SIZES)
def test_output_shape(name, channels, size):
    if name in BIG and size != 8:
        pytest.skip("large model: 8x8 only")
    torch.manual_seed(0)
    model = models.build(name, in_channels=channels, num_classes=7, image_size=size, **PARAMS.get(name, {}))
    out = model(torch.randn(3, channels, size, size))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, channels, size, size)).shape == (1, 7)


def test_mlp_takes_feature_vectors():
    model = models.build("mlp", in_channels=5, num_classes=3, image_size=None, hidden=(8,))
    assert model(torch.randn(4, 5)).shape == (4, 3)
    assert n_params(model) == 5 * 8 + 8 + 8 * 3 + 3


def cifar_resnet_params(depth, shortcut, classes=10, channels=3):
    """Closed-form count for the CIFAR ResNet: 3x3 convs, BN (2 per channel), linear head."""
    n = (depth - 2) // 6
    total = channels * 16 * 9 + 2 * 16
    in_planes = 16
    for planes in (16, 32, 64):
        for _ in range(n):
            total += in_planes * planes * 9 + planes * planes * 9 + 4 * planes
            if in_planes != planes and shortcut == "B":
                total += in_planes * planes + 2 * planes
            in_planes = planes
    return total + 64 * classes + classes


def test_resnet_parameter_counts():
    # He et al. 2016, Table 6: ResNet-20 0.27M, ResNet-32 0.46M, ResNet-56 0.85M (option A).
    for depth, published in [(20, 0.27e6), (32, 0.46e6), (56, 0.85e6)]:
        count = n_params(models.build(f"resnet{depth}", 3, 10, 32))
        assert count == cifar_resnet_params(depth, "A")
        assert abs(count - published) / published < 0.01
    assert n_params(models.build("resnet20", 3, 10, 32)) == 269_722
    # Option B adds the two 1x1 projections; 272,474 is the count widely quoted for ResNet-20.
    assert n_params(models.build("resnet", 3, 10, 32, depth=20, shortcut="B")) == 272_474


def test_wide_resnet_parameter_counts():
    # Zagoruyko & Komodakis 2016 / their reference code, 10 classes, RGB input.
    assert n_params(models.build("wrn16_2", 3, 10, 32)) == 691_674
    assert abs(n_params(models.build("wrn16_4", 3, 10, 32)) - 2.7e6) / 2.7e6 < 0.02
    with torch.device("meta"):  # 36.5M parameters: count them without allocating
        assert n_params(models.build("wrn28_10", 3, 10, 32)) == 36_479_194


def test_preact_resnet18_parameter_count():
    with torch.device("meta"):
        count = n_params(models.build("preact_resnet18", 3, 10, 32))
    # 11,171,146 is the widely used CIFAR PreActResNet18 (kuangliu/pytorch-cifar), which omits the paper's
    # final BN-ReLU before pooling; we keep it, adding 2 x 512 BatchNorm parameters.
    assert count == 11_171_146 + 2 * 512


def test_factory_errors_name_the_argument():
    with pytest.raises(ValueError, match="name='resnet7'"):
        models.build("resnet7", 3, 10, 32)
    with pytest.raises(ValueError, match="depth=21"):
        models.build("resnet", 3, 10, 32, depth=21)
    with pytest.raises(ValueError, match="image_size"):
        models.build("resnet20", 3, 10, None)
    with pytest.raises(ValueError, match="head='cos'.*'cosine'"):
        models.build("resnet8", 3, 10, 32, head="cos")


def test_available_names_every_network_with_a_description():
    names = models.available()
    assert set(names) == {"resnet", "resnet8", "resnet20", "resnet32", "resnet56", "wrn", "wrn16_2", "wrn16_4",
                          "wrn28_10", "preact_resnet18", "small_cnn", "mlp"}
    assert list(names) == sorted(names) and all(isinstance(d, str) and d for d in names.values())


def test_parameter_errors_name_model_parameter_and_what_is_valid():
    # unknown names are found from the constructor's signature, before anything is built
    with pytest.raises(ValueError, match=r"model 'mlp': unknown parameter depth=3; expected some of: hidden$"):
        models.build("mlp", 1, 10, 8, depth=3)
    with pytest.raises(ValueError, match=r"model 'resnet': unknown parameter widths=\(8,\); "
                                         r"expected some of: depth, shortcut, width$"):
        models.build("resnet", 3, 10, 32, widths=(8,))
    with pytest.raises(ValueError, match=r"model 'wrn': unknown parameter dropout_rate=0.3"):
        models.check_params("wrn", dropout_rate=0.3)
    # a name that fixes a parameter refuses another value (it used to be overridden silently)
    with pytest.raises(ValueError, match=r"model 'resnet20': depth=32 cannot be set, the name fixes depth=20"):
        models.build("resnet20", 3, 10, 32, depth=32)
    with pytest.raises(ValueError, match=r"model 'wrn16_4': width=2 cannot be set, the name fixes depth=16, width=4"):
        models.check_params("wrn16_4", width=2)
    # a value the constructor rejects, of the wrong kind or type, names the model too
    with pytest.raises(ValueError, match=r"model 'resnet20': ResNet shortcut='C': expected 'A'"):
        models.build("resnet20", 3, 10, 32, shortcut="C")
    with pytest.raises(ValueError, match=r"model 'resnet' \(depth='20'\): "):
        models.build("resnet", 3, 10, 32, depth="20")
    with pytest.raises(ValueError, match=r"model 'small_cnn': head='cos'; expected one of \('linear', 'cosine'\)"):
        models.check_params("small_cnn", head="cos")
    models.check_params("wrn", depth=10, width=1, dropout=0.3, head="cosine")  # valid: no error


def test_cosine_head_logits_are_cosines_of_features_and_class_weights():
    """The logits equal the cosine between the network's pooled features (captured by a hook on the head)
    and each class's weight row, computed in float64 numpy; the head has no bias."""
    import numpy as np

    torch.manual_seed(0)
    model = models.build("resnet8", 3, 5, 16, head="cosine")
    head = model.fc
    assert isinstance(head, models.CosineLinear) and [n for n, _ in head.named_parameters()] == ["weight"]
    np.testing.assert_allclose(head.weight.detach().norm(dim=1).numpy(), 1.0, rtol=1e-6)  # unit rows at start
    with torch.no_grad():                # rows of other norms: the logits must not depend on them
        head.weight.mul_(torch.tensor([0.1, 1.0, 3.0, 7.0, 0.5])[:, None])
    seen = {}
    head.register_forward_hook(lambda m, inp, out: seen.update(features=inp[0].detach()))
    logits = model(torch.randn(6, 3, 16, 16)).detach().double().numpy()
    f, w = seen["features"].double().numpy(), head.weight.detach().double().numpy()
    expected = (f @ w.T) / np.linalg.norm(f, axis=1)[:, None] / np.linalg.norm(w, axis=1)[None, :]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(logits).max() <= 1 + 1e-6


@pytest.mark.parametrize("name,params", [("mlp", {"hidden": (8,)}), ("mlp", {"hidden": ()}), ("small_cnn", {}),
                                         ("wrn", {"depth": 10, "width": 1})])
def test_cosine_head_replaces_the_last_linear_layer_only(name, params):
    torch.manual_seed(0)
    linear = models.build(name, 1, 4, 8, **params)
    cosine = models.build(name, 1, 4, 8, head="cosine", **params)
    kinds = lambda m: [type(x).__name__ for x in m.modules() if isinstance(x, (torch.nn.Linear, models.CosineLinear))]
    assert kinds(linear)[-1] == "Linear" and kinds(cosine)[-1] == "CosineLinear"
    assert kinds(cosine)[:-1] == kinds(linear)[:-1]
    # Same parameter count less the bias of the replaced layer.
    assert n_params(cosine) == n_params(linear) - 4


# ------------------------------------------------------------------------------------------------
# a user's network: "package.module:function" and "timm:NAME", not registered

USER_MODULE = '''
import torch
from torch import nn

CALLS = []


def tiny_net(num_classes, in_channels, image_size, hidden=6):
    CALLS.append({"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size,
                  "hidden": hidden})
    h, w = image_size
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * h * w, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


class ConvOnly(nn.Module):
    """A classifier that is a 1x1 convolution: no nn.Linear to make cosine."""

    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.head = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x):
        return self.head(x).mean(dim=(2, 3))


def not_a_module(num_classes, in_channels):
    return 42


def takes_no_classes(in_channels):
    return nn.Identity()
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    import importlib
    import sys

    (tmp_path / "my_nets.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_nets", None)
    yield importlib.import_module("my_nets")
    sys.modules.pop("my_nets", None)


def test_a_user_function_is_a_model_without_registration(user_module):
    assert models.is_reference("my_nets:tiny_net") and not models.is_reference("resnet8")
    assert "my_nets:tiny_net" not in models.available()
    models.check_params("my_nets:tiny_net", hidden=3)
    torch.manual_seed(0)
    model = models.build("my_nets:tiny_net", in_channels=2, num_classes=5, image_size=(4, 3), hidden=3)
    assert user_module.CALLS[-1] == {"num_classes": 5, "in_channels": 2, "image_size": (4, 3), "hidden": 3}
    assert model(torch.randn(7, 2, 4, 3)).shape == (7, 5)
    assert n_params(model) == (2 * 4 * 3) * 3 + 3 + 3 * 5 + 5
    with pytest.raises(ValueError, match=r"my_nets:tiny_net.*depth=3.*hidden"):
        models.check_params("my_nets:tiny_net", depth=3)
    with pytest.raises(ValueError, match="head='square'"):
        models.build("my_nets:tiny_net", 1, 2, 4, head="square")


def test_a_user_model_gets_the_cosine_head_on_its_last_linear(user_module):
    import numpy as np

    torch.manual_seed(0)
    model = models.build("my_nets:tiny_net", 1, 4, 5, head="cosine")
    head = model[3]
    assert isinstance(head, models.CosineLinear) and (head.in_features, head.out_features) == (6, 4)
    assert isinstance(model[1], torch.nn.Linear)  # the hidden layer is untouched
    seen = {}
    head.register_forward_hook(lambda m, inp, out: seen.update(features=inp[0].detach()))
    logits = model(torch.randn(5, 1, 5, 5)).detach().double().numpy()
    f, w = seen["features"].double().numpy(), head.weight.detach().double().numpy()
    expected = (f @ w.T) / np.linalg.norm(f, axis=1)[:, None] / np.linalg.norm(w, axis=1)[None, :]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_user_model_errors_name_the_model_and_what_is_expected(user_module):
    with pytest.raises(ValueError, match=r"my_nets:ConvOnly.*head='cosine'.*nn.Linear"):
        models.build("my_nets:ConvOnly", 3, 4, 8, head="cosine")
    assert models.build("my_nets:ConvOnly", 3, 4, 8)(torch.randn(2, 3, 8, 8)).shape == (2, 4)  # linear: fine
    with pytest.raises(ValueError, match=r"no_such_module_xyz.*cannot import"):
        models.check_params("no_such_module_xyz:net")
    with pytest.raises(ValueError, match=r"has no attribute 'nope'"):
        models.build("my_nets:nope", 1, 2, 4)
    with pytest.raises(ValueError, match=r"returned a int.*nn.Module"):
        models.build("my_nets:not_a_module", 1, 2, 4)
    with pytest.raises(ValueError, match=r"takes no num_classes"):
        models.check_params("my_nets:takes_no_classes")


class _FakeTimmNet(torch.nn.Module):
    def __init__(self, num_classes, in_chans, width=8):
        super().__init__()
        self.stem = torch.nn.Conv2d(in_chans, width, 3, padding=1)
        self.fc = torch.nn.Linear(width, num_classes)
        self.extra = torch.nn.Linear(width, num_classes)  # registered after fc: get_classifier must win

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.fc(self.stem(x).mean(dim=(2, 3)))


@pytest.fixture
def fake_timm(monkeypatch):
    import sys
    import types

    calls = []

    def create_model(name, pretrained=False, **kwargs):
        calls.append({"name": name, **kwargs})
        if name != "fakenet":
            raise RuntimeError(f"Unknown model ({name})")
        return _FakeTimmNet(**kwargs)

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    return calls


def test_timm_models_go_through_create_model(fake_timm):
    model = models.build("timm:fakenet", in_channels=1, num_classes=3, image_size=28, width=5)
    assert fake_timm == [{"name": "fakenet", "num_classes": 3, "in_chans": 1, "width": 5}]
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3)
    models.check_params("timm:fakenet", head="cosine", anything=1)  # timm takes any keyword


def test_timm_cosine_head_replaces_what_get_classifier_returns(fake_timm):
    model = models.build("timm:fakenet", 3, 4, 8, head="cosine")
    assert isinstance(model.fc, models.CosineLinear) and model.get_classifier() is model.fc
    assert type(model.extra) is torch.nn.Linear  # the last nn.Linear, but not the classifier


def test_timm_missing_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(ImportError, match=r"timm:resnet18.*pip install timm"):
        models.build("timm:resnet18", 3, 10, 32)
    with pytest.raises(ImportError, match=r"pip install timm"):
        models.check_params("timm:resnet18")
