from __future__ import annotations

import pytest
import torch

from mwnet import ClassAwareWeightNet, WeightNet, normalize_weights, start_flat


def test_default_is_the_papers_1_100_1_vnet():
    net = WeightNet()
    assert [tuple(p.shape) for p in net.parameters()] == [(100, 1), (100,), (1, 100), (1,)]


@pytest.mark.parametrize(("hidden", "depth", "count"), [(50, 1, 151), (100, 2, 10401), (5, 0, 2)])
def test_width_and_depth(hidden, depth, count):
    assert sum(p.numel() for p in WeightNet(hidden, depth).parameters()) == count


def test_output_shape_follows_input_and_lies_in_unit_interval():
    net = WeightNet()
    losses = torch.linspace(0, 20, 50)
    w = net(losses)
    assert w.shape == (50,) and net(losses[:, None]).shape == (50, 1)
    assert bool(((w > 0) & (w < 1)).all())


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"shape \(n,\) or \(n, 1\), got \(4, 2\)"):
        WeightNet()(torch.zeros(4, 2))


@pytest.mark.parametrize(("kw", "msg"), [({"hidden": 0}, "hidden width"), ({"depth": -1}, "depth")])
def test_bad_sizes(kw, msg):
    with pytest.raises(ValueError, match=msg):
        WeightNet(**kw)


def test_normalizations():
    w = torch.tensor([0.2, 0.3, 0.5, 1.0])
    torch.testing.assert_close(normalize_weights(w, "sum"), w / 2.0)
    torch.testing.assert_close(normalize_weights(w, "mean"), w / 4)
    assert normalize_weights(w, "none") is w
    torch.testing.assert_close(normalize_weights(w, "sum-detached"), w / 2.0)
    assert torch.equal(normalize_weights(torch.zeros(3), "sum"), torch.zeros(3))
    with pytest.raises(ValueError, match="normalize must be one of"):
        normalize_weights(w, "l2")


def test_detached_sum_treats_the_sum_as_a_constant():
    """Same values as "sum"; only the derivative differs: dc_i/dw_j = [i == j] / Σw."""
    w = torch.tensor([0.2, 0.3, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
    jac = torch.autograd.functional.jacobian(lambda v: normalize_weights(v, "sum-detached"), w)
    torch.testing.assert_close(jac, torch.eye(4, dtype=torch.float64) / 2.0)
    full = torch.autograd.functional.jacobian(lambda v: normalize_weights(v, "sum"), w)
    assert not torch.allclose(full, jac)


@pytest.mark.parametrize(
    "make",
    [
        lambda: WeightNet(),
        lambda: WeightNet(7, depth=2),
        lambda: WeightNet(3, depth=0),
        lambda: ClassAwareWeightNet([50, 20, 10, 5, 2], clusters=3),
    ],
)
def test_a_flat_start_weights_every_sample_one_half(make):
    torch.manual_seed(0)
    default = make()
    torch.manual_seed(0)
    net = start_flat(make())
    losses = torch.linspace(0, 20, 30)
    args = (losses,) if not net.takes_labels else (losses, torch.arange(30) % 5)
    with torch.no_grad():
        assert torch.equal(net(*args), torch.full((30,), 0.5))
        assert not torch.allclose(default(*args), torch.full((30,), 0.5))
    # only the output layer changed: the hidden layers keep the seed's initialisation
    changed = [
        k for k, v in net.state_dict().items() if not torch.equal(v, default.state_dict()[k])
    ]
    last = [name for name, m in net.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    assert changed and all(k.startswith(f"{last}.") for k in changed)


def test_a_flat_start_needs_a_linear_output_layer():
    with pytest.raises(TypeError, match=r"no nn\.Linear output layer"):
        start_flat(torch.nn.Sigmoid())
