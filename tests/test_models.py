"""mwnet.models: shapes, parameter counts, registry, and that every model trains with MW-Net."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from rounding import gamma
from torch import nn

import mwnet
from mwnet.models import (
    ZeroPadShortcut,
    available,
    build,
    cifar_resnet,
    input_shape,
    mlp,
    preact_resnet18,
    register,
    resnet32,
    wide_resnet,
    wrn28_10,
)

# Small configurations for forward/step tests; wrn28_10 (36.5M parameters) is only counted.
FORWARD_CASES: list[tuple[str, dict]] = [
    ("resnet20", {}),
    ("resnet32", {}),
    ("resnet44", {}),
    ("resnet56", {}),
    ("resnet110", {}),
    ("wrn", {"depth": 10, "width": 2, "dropout": 0.3}),
    ("cnn_small", {}),
    ("mlp", {"hidden": (32, 16), "dropout": 0.1}),
    ("linear", {}),
    ("preact_resnet18", {"width": 16}),
]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny batches gain nothing from threads, and a busy shared CPU makes them much slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "kwargs"), FORWARD_CASES)
def test_output_shape(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = build(name, num_classes=7, **kwargs)
    out = model(torch.randn(3, *input_shape(name)))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


def test_every_registered_name_is_covered() -> None:
    assert set(available()) == {name for name, _ in FORWARD_CASES} | {"wrn28_10"}


def test_resnet32_parameter_count() -> None:
    # conv1 3*16*9 = 432, bn1 2*16 = 32                                      ->     464
    # stage 1: 5 blocks x (2 convs 16*16*9 + 2 BN 2*16) = 5 * 4,672         ->  23,360
    # stage 2: 16*32*9 + 32*32*9 + 2*64 = 13,952; 4 x (2*9,216 + 128) = 74,240 ->  88,192
    # stage 3: 32*64*9 + 64*64*9 + 2*128 = 55,552; 4 x (2*36,864 + 256) = 295,936
    #                                                                       -> 351,488
    # fc 64*10 + 10                                                          ->     650
    # total 464 + 23,360 + 88,192 + 351,488 + 650 = 464,154 (option-A shortcuts add none)
    assert n_params(resnet32(num_classes=10)) == 464_154
    assert n_params(build("resnet32", 10)) == 464_154


def test_preact_resnet18_parameter_count() -> None:
    # stem: conv 3*64*9 = 1,728, BN 128                                           ->     1,856
    # block(i -> o) = BN 2i + conv 9io + BN 2o + conv 9oo (+ 1x1 shortcut io if i != o)
    # stage 1: 2 x (128 + 36,864 + 128 + 36,864)                                  ->   147,968
    # stage 2: (128 + 73,728 + 256 + 147,456 + 8,192) + (256 + 2*147,456 + 256)   ->   525,184
    # stage 3: (256 + 294,912 + 512 + 589,824 + 32,768) + (512 + 2*589,824 + 512) -> 2,098,944
    # stage 4: (512 + 1,179,648 + 1,024 + 2,359,296 + 131,072)
    #          + (1,024 + 2*2,359,296 + 1,024)                                    -> 8,392,192
    # fc 512*10 + 10                                                              ->     5,130
    # total 11,171,274 ("11.2M"); 100 classes add 90*513 = 46,170
    assert n_params(preact_resnet18(num_classes=10)) == 11_171_274
    assert n_params(build("preact_resnet18", 10)) == 11_171_274
    assert n_params(build("preact_resnet18", 100)) == 11_217_444


def test_wrn28_10_parameter_count() -> None:
    # Commonly cited as 36.5M; this implementation gives 36,479,194 for 10 classes.
    count = n_params(wrn28_10(num_classes=10))
    assert abs(count - 36.5e6) / 36.5e6 < 0.01
    assert n_params(build("wrn", 10, depth=28, width=10)) == count


def test_option_a_shortcut_is_parameter_free() -> None:
    shortcut = ZeroPadShortcut(16, 32, stride=2)
    assert list(shortcut.parameters()) == [] and list(shortcut.buffers()) == []
    x = torch.randn(2, 16, 8, 8)
    out = shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    # zeros on both sides: channels 0..7 and 24..31 are zero, 8..23 carry pixels (0, 2, 4, 6)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert torch.count_nonzero(out[:, :8]) == 0 and torch.count_nonzero(out[:, 24:]) == 0
    wide = ZeroPadShortcut(32, 64, stride=2)(torch.randn(1, 32, 7, 7))
    assert wide.shape == (1, 64, 4, 4) and torch.count_nonzero(wide[:, :16]) == 0
    model = resnet32()
    assert not any(m.kernel_size == (1, 1) for m in model.modules() if isinstance(m, nn.Conv2d))
    assert sum(isinstance(m, ZeroPadShortcut) for m in model.modules()) == 2


class _RefResNetBlock(nn.Module):
    """The authors' ResNet-32 block, written independently of mwnet (reference layout)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = stride != 1 or in_planes != planes
        self.planes = planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.pad:  # option A: pixels 0, 2, 4, ...; planes // 4 zero channels each side
            q = self.planes // 4
            sub = x[:, :, ::2, ::2]
            zeros = sub.new_zeros(sub.shape[0], q, *sub.shape[2:])
            short = torch.cat([zeros, sub, zeros], dim=1)
        else:
            short = x
        return torch.relu(out + short)


class _RefResNet(nn.Module):
    def __init__(self, n: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            strides = [stride] + [1] * (n - 1)
            blocks = []
            for s in strides:
                blocks.append(_RefResNetBlock(in_planes, planes, s))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = nn.functional.avg_pool2d(out, out.shape[3]).view(out.shape[0], -1)
        return self.linear(out)


class _RefWideBlock(nn.Module):
    """The authors' WRN block: the 1x1 shortcut exists iff the width changes and, when it
    does, it and conv1 both read relu(bn1(x)); otherwise the shortcut is the raw input."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.equal = in_planes == planes
        self.convShortcut = (
            None if self.equal else nn.Conv2d(in_planes, planes, 1, stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = torch.relu(self.bn1(x))
        out = self.conv2(torch.relu(self.bn2(self.conv1(act))))
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class _RefNetworkBlock(nn.Module):
    """A WRN group as the authors name it: its blocks sit in ``.layer``."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class _RefWideResNet(nn.Module):
    def __init__(self, depth: int, width: int, num_classes: int) -> None:
        super().__init__()
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        groups, in_planes = [], 16
        for planes, stride in ((16 * width, 1), (32 * width, 2), (64 * width, 2)):
            blocks = []
            for i in range(n):
                blocks.append(_RefWideBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            groups.append(_RefNetworkBlock(blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        self.channels = in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = torch.relu(self.bn1(out))
        return self.fc(nn.functional.avg_pool2d(out, 8).view(-1, self.channels))


class _RefPreActBlock(nn.Module):
    """The CMW-Net authors' PreAct block: the shortcut (an empty Sequential, or a 1x1 conv
    with no BN) is applied to relu(bn1(x)) in every block, and nothing follows the sum."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(out)
        out = self.conv2(torch.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class _RefPreActResNet18(nn.Module):
    """The authors' ResNet18: 3x3 stem conv (stride 1) + BN + ReLU, stages of 2 blocks at
    64/128/256/512 channels, no final BN-ReLU, avg_pool2d(kernel 4), linear."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks = []
            for s in (stride, 1):
                blocks.append(_RefPreActBlock(in_planes, planes, s))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = nn.functional.avg_pool2d(out, 4)
        return self.linear(out.view(out.size(0), -1))


def _preact_key(ours: str) -> str:
    """Our PreAct key -> the authors' (stageK -> layerK, shortcut -> shortcut.0, fc -> linear)."""
    for k in (1, 2, 3, 4):
        ours = ours.replace(f"stage{k}.", f"layer{k}.")
    return ours.replace(".shortcut.", ".shortcut.0.").replace("fc.", "linear.")


def _resnet_key(ours: str) -> str:
    """Our ResNet state_dict key -> the authors' name (stageK -> layerK, fc -> linear)."""
    for k in (1, 2, 3):
        ours = ours.replace(f"stage{k}.", f"layer{k}.")
    return ours.replace("fc.", "linear.")


def _wrn_key(ours: str) -> str:
    """Our WRN key -> the authors' (groupK.i -> blockK.layer.i, shortcut -> convShortcut,
    final bn -> bn1)."""
    for k in (1, 2, 3):
        ours = ours.replace(f"group{k}.", f"block{k}.layer.")
    if ours.startswith("bn."):
        ours = "bn1." + ours[len("bn.") :]
    return ours.replace("shortcut.", "convShortcut.")


def _randomise(model: nn.Module) -> None:
    """Random weights and BN statistics, so no channel or branch can hide behind zeros."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen, dtype=tensor.dtype) + 0.5)
            else:
                tensor.copy_(0.3 * torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype))


def _assert_same_function(ours: nn.Module, ref: nn.Module, key) -> None:
    ours.double()
    ref.double()
    _randomise(ours)
    theirs = {key(k): v for k, v in ours.state_dict().items()}
    assert set(theirs) == set(ref.state_dict())  # an exact one-to-one key map
    ref.load_state_dict(theirs)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for train in (False, True):
        ours.train(train)
        ref.train(train)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-10, atol=1e-10)
    # the train-mode pass moved the running statistics identically
    after = ref.state_dict()
    for name, value in ours.state_dict().items():
        torch.testing.assert_close(value, after[key(name)], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("depth", [20, 32, 110])
def test_cifar_resnet_matches_authors_layout(depth: int) -> None:
    """Same weights, same outputs as the authors' ResNet (zero channels on both sides)."""
    _assert_same_function(cifar_resnet(depth, 10), _RefResNet((depth - 2) // 6, 10), _resnet_key)


@pytest.mark.parametrize(("depth", "width"), [(10, 1), (16, 2), (28, 1)])
def test_wide_resnet_matches_authors_layout(depth: int, width: int) -> None:
    """Same weights, same outputs as the authors' WRN (the paper's WRN-28-10 at small size)."""
    _assert_same_function(
        wide_resnet(depth=depth, width=width, num_classes=10),
        _RefWideResNet(depth, width, 10),
        _wrn_key,
    )


@pytest.mark.parametrize("num_classes", [10, 100])
def test_preact_resnet18_matches_authors_layout(num_classes: int) -> None:
    """Same weights, same outputs as CMW-Net's PreAct ResNet-18 (label-correction model)."""
    ours = preact_resnet18(num_classes)
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in ours.modules()) == 3
    _assert_same_function(ours, _RefPreActResNet18(num_classes), _preact_key)


def test_preact_resnet18_builds_for_cifar_and_fashion_mnist() -> None:
    torch.manual_seed(0)
    assert input_shape("preact_resnet18") == (3, 32, 32)
    cifar = build("preact_resnet18", num_classes=100)
    assert cifar.conv1.in_channels == 3
    assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    fmnist = build("preact_resnet18", num_classes=10, in_channels=1)
    assert fmnist.conv1.in_channels == 1
    last_map: list[torch.Size] = []
    fmnist.stage4.register_forward_hook(lambda m, i, o: last_map.append(o.shape))
    out = fmnist(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    # 28 -> 28, 14, 7, 4: a 4x4 final map, where global pooling equals the authors' kernel 4
    assert last_map == [torch.Size([2, 512, 4, 4])]


def test_preact_resnet18_one_fast_meta_step() -> None:
    """The published width through the package's meta step, on a tiny CIFAR-sized batch."""
    torch.manual_seed(0)
    model = build("preact_resnet18", 10)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    reweighter = mwnet.MetaReweighter(
        model, torch.optim.SGD(model.parameters(), lr=0.1), hypergrad="fast"
    )
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    x_meta, y_meta = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    result = reweighter.step(x, y, x_meta, y_meta)
    assert result.meta_loss is not None and torch.isfinite(result.meta_loss)
    assert result.weights.shape == (4,) and torch.isfinite(result.weights).all()
    after = model.state_dict()
    for name in ("conv1.weight", "stage4.1.conv2.weight", "fc.weight", "fc.bias"):
        assert not torch.equal(before[name], after[name]), name
    assert not torch.equal(before["stage1.0.bn1.running_mean"], after["stage1.0.bn1.running_mean"])


def test_invalid_depths() -> None:
    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_resnet(33)
    with pytest.raises(ValueError, match="6n\\+4"):
        wide_resnet(depth=27)


def test_in_channels_and_defaults() -> None:
    assert build("cnn_small")(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert build("cnn_small", 10, in_channels=3)(torch.randn(2, 3, 28, 28)).shape == (2, 10)
    assert build("resnet20", 4, in_channels=1)(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    wide_mlp = build("mlp", 10, in_channels=3, image_size=32)
    assert wide_mlp(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert mlp(in_features=5, hidden=())(torch.randn(2, 5)).shape == (2, 10)


def test_table_rows_give_the_flat_models_their_width() -> None:
    """A table's rows are D channels of one pixel: the flat models take D inputs."""
    torch.manual_seed(0)
    rows = torch.randn(4, 7, 1, 1)
    model = build("linear", 3, in_channels=7, image_size=1)
    assert n_params(model) == 7 * 3 + 3  # one affine map, no hidden layer
    layer = model.net[-1]
    expected = rows.flatten(1).double() @ layer.weight.double().T + layer.bias.double()
    # 7-term float32 dot products plus a bias: within gamma_8 of their sums of |terms|
    terms = rows.flatten(1).double().abs() @ layer.weight.double().abs().T + layer.bias.abs()
    assert ((model(rows).double() - expected).abs() <= gamma(8, torch.float32) * terms).all()
    assert build("mlp", 3, in_channels=7, image_size=1)(rows).shape == (4, 3)
    with pytest.raises(RuntimeError):  # a width taken from elsewhere does not fit
        build("linear", 3, in_channels=1, image_size=7)(rows)


def test_unknown_name_lists_available() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet33'") as info:
        build("resnet33")
    for name in available():
        assert name in str(info.value)
    with pytest.raises(ValueError, match="unknown model"):
        input_shape("nope")


def test_register_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="already taken"):
        register("resnet32", input_shape=(3, 32, 32))(resnet32)


def test_torchvision_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(ImportError, match="pip install torchvision"):
        build("torchvision:resnet18", 10)
    assert available(torchvision=True) == available()


@pytest.fixture
def fake_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in torchvision with one tiny 'model', so the lazy path is tested without it."""

    def get_model(name: str, weights=None, num_classes: int = 1000) -> nn.Module:
        assert name == "tiny" and weights is None
        return nn.Sequential(
            nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, num_classes))
        )

    models = types.ModuleType("torchvision.models")
    models.list_models = lambda module=None: ["tiny"]  # type: ignore[attr-defined]
    models.get_model = get_model  # type: ignore[attr-defined]
    package = types.ModuleType("torchvision")
    package.models = models  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)


@pytest.mark.usefixtures("fake_torchvision")
def test_torchvision_build_and_local_weights(tmp_path) -> None:
    assert "torchvision:tiny" in available(torchvision=True)
    assert build("torchvision:tiny", 5)(torch.randn(2, 3, 2, 2)).shape == (2, 5)

    pretrained = sys.modules["torchvision.models"].get_model("tiny")
    path = tmp_path / "tiny.pt"
    torch.save(pretrained.state_dict(), path)
    model = build("torchvision:tiny", 3, weights_path=path)
    assert torch.equal(model[1].weight, pretrained[1].weight)
    assert model[3][0].out_features == 3
    assert model(torch.randn(2, 3, 2, 2)).shape == (2, 3)

    with pytest.raises(ValueError, match="no classification model"):
        build("torchvision:huge", 3)
    with pytest.raises(ValueError, match="3-channel"):
        build("torchvision:tiny", 3, in_channels=1)


@pytest.mark.parametrize("hypergrad", ["fast", "reverse"])
@pytest.mark.parametrize(("name", "kwargs"), FORWARD_CASES[1:2] + FORWARD_CASES[5:])
def test_one_mwnet_step(name: str, kwargs: dict, hypergrad: str) -> None:
    torch.manual_seed(0)
    model = build(name, 10, **kwargs)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    reweighter = mwnet.MetaReweighter(model, optimizer, hypergrad=hypergrad)
    shape = input_shape(name)
    x, y = torch.randn(4, *shape), torch.randint(0, 10, (4,))
    x_meta, y_meta = torch.randn(4, *shape), torch.randint(0, 10, (4,))
    result = reweighter.step(x, y, x_meta, y_meta)
    assert result.meta_loss is not None and torch.isfinite(result.meta_loss)
    assert result.weights.shape == (4,)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
