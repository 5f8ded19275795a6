"""hypergrad="famus": FaMUS's layer-wise meta gradient (Xu et al., CVPR 2021).

The reference is the authors' gating written out by hand (their ``_compute_gated_grad``:
the virtual step's gradient of a kept layer stays in the graph, a dropped layer's is
detached, every layer still moves), on a hand-written BnCnn forward, differentiated by
create_graph; the library computes the same sum with one JVP. The sampler is checked by
what it promises: the frequency of each layer, the mean of many draws (biased by K/L as
the paper's sum is, unbiased when rescaled), draws that depend on the run's seed and the
step only, and a resumed run that draws what an uninterrupted one does.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nets import BnCnn, random_batches, reference_forward, reference_weights
from rounding import ORDER_FACTOR, gamma

import mwnet
from mwnet.core.famus import LayerSampling, layer_groups

IMAGE, CLASSES, N = (3, 8, 8), 5, 12
F64 = torch.float64
LAYERS = [["conv.weight"], ["bn.weight", "bn.bias"], ["fc.weight", "fc.bias"]]
"""BnCnn's layers, in the order they run: the modules that hold parameters."""
LR = 0.3


def _setup(famus=None, hypergrad="famus", seed=0):
    """A float64 BnCnn after one real step (so the reference must read moved parameters),
    its weighting net and a reweighter."""
    torch.manual_seed(seed)
    model, vnet = BnCnn().double(), mwnet.WeightNet(hidden=10).double()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    rw = mwnet.MetaReweighter(
        model, opt, vnet, torch.optim.SGD(vnet.parameters(), lr=0.1),
        hypergrad=hypergrad, famus=famus,
    )  # fmt: skip
    rw.step(*random_batches(IMAGE, CLASSES, F64, seed=1, n=N))
    return model, vnet, rw


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def _gated_reference(model, vnet, batch, kept, *, move_dropped=True):
    """∂L_meta/∂Θ with only the ``kept`` parameters' virtual-step gradients left in the
    graph (FaMUS's r_l = 1), the others detached (r_l = 0) but still applied; and, for
    the rounding bound, Σ|terms| of the chain-rule sum behind each component.

    ``move_dropped=False`` is a plausible wrong variant: dropped layers do not move at all
    in the virtual step (what the partial step does), which is another problem."""
    x, y, xm, ym = batch
    p = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    theta = [t.detach().clone().requires_grad_() for t in vnet.parameters()]
    losses = F.cross_entropy(
        reference_forward(p, {k: v.clone() for k, v in model.named_buffers()}, x),
        y,
        reduction="none",
    )
    w = reference_weights(theta, losses.detach())
    c = w / w.sum()
    grads = torch.autograd.grad((c * losses).sum(), list(p.values()), create_graph=True)
    hat = {}
    for (k, v), g in zip(p.items(), grads, strict=True):
        if k in kept:
            hat[k] = v - LR * g
        else:
            hat[k] = v - LR * g.detach() if move_dropped else v.detach()
    meta = F.cross_entropy(
        reference_forward(hat, {k: v.clone() for k, v in model.named_buffers()}, xm), ym
    )
    want = _flat(torch.autograd.grad(meta, theta, retain_graph=True))
    # Σ_i |∂c_i/∂Θ| · Σ_{p kept} |t_p| |∂L_i/∂θ_p|, t = −lr ∇_θ̂ L_meta: the absolute terms
    t = torch.autograd.grad(meta, [hat[k] for k in kept], retain_graph=True)
    per_sample = []
    for i in range(len(y)):
        g_i = torch.autograd.grad(losses[i], [p[k] for k in kept], retain_graph=True)
        products = zip(t, g_i, strict=True)
        per_sample.append(sum(float((LR * a.abs() * b.abs()).sum()) for a, b in products))
    dc = torch.stack([_flat(torch.autograd.grad(c[i], theta, retain_graph=True)) for i in range(N)])
    abs_terms = (dc.abs() * torch.tensor(per_sample, dtype=F64)[:, None]).sum(0)
    return want, abs_terms


def _bound(abs_terms: torch.Tensor, kept: list[str], model) -> torch.Tensor:
    """Both sides evaluate Σ_i (∂c_i/∂Θ) Σ_p t_p ∂L_i/∂θ_p: n·P products, whose factors
    each come out of sums of at most 432 terms (batch norm's statistics over 12 x 6 x 6)
    chained through fewer than 10 ops per layer of 3 layers. To first order each side is
    within γ_M·Σ|terms| of the exact value with M = n·P + 30·432 (Higham §3.1, §4.2), so
    they differ by at most twice that."""
    sizes = dict((k, v.numel()) for k, v in model.named_parameters())
    m = N * sum(sizes[k] for k in kept) + 30 * 432
    return 2 * gamma(m, F64) * abs_terms


def test_layers_are_the_modules_that_hold_parameters():
    names = [n for layer in LAYERS for n in layer]
    assert layer_groups(names) == [[0], [1, 2], [3, 4]]
    assert layer_groups(["a.b.weight", "a.weight", "a.b.bias"]) == [[0, 2], [1]]


@pytest.mark.parametrize("virtual_step", ["sgd", "optimizer"])
def test_every_layer_kept_is_the_exact_hypergradient(virtual_step):
    """With K >= L every term is kept and the estimate is ``fast``'s, bit for bit (the same
    passes), and ``reverse``'s up to the order of the sums (derived bound)."""
    batch = random_batches(IMAGE, CLASSES, F64, seed=2, n=N)
    got = {}
    for mode, famus in [("fast", None), ("reverse", None), ("famus", LayerSampling(layers=3))]:
        _, _, rw = _setup(famus, mode)
        rw.virtual_step = virtual_step
        got[mode] = _flat(rw.meta_gradient(*batch)[0])
    assert torch.equal(got["famus"], got["fast"])
    model, vnet, rw = _setup(LayerSampling(layers=3))
    names = [n for layer in LAYERS for n in layer]
    assert rw.famus_parameters() == names
    if virtual_step == "sgd":  # the hand-written reference steps by plain SGD
        want, abs_terms = _gated_reference(model, vnet, batch, names)
        assert (got["famus"] - want).abs().le(_bound(abs_terms, names, model)).all()
    bound = _bound(_gated_reference(model, vnet, batch, names)[1], names, model)
    assert got["reverse"].norm() > 0
    assert (got["famus"] - got["reverse"]).abs().le(bound).all()


def _steps_covering(rw, want_subsets: int, limit: int = 60) -> dict[tuple[str, ...], int]:
    """The first step at which each distinct kept set appears, until ``want_subsets``."""
    seen: dict[tuple[str, ...], int] = {}
    for step in range(limit):
        seen.setdefault(tuple(rw.famus_parameters(step)), step)
        if len(seen) == want_subsets:
            break
    return seen


@pytest.mark.parametrize("layers", [1, 2])
def test_kept_layers_match_the_authors_gated_reference(layers):
    """Every kept set of K of BnCnn's 3 layers, at the step that draws it: the estimate is
    the hand-written gated reference's (derived bound), which a plausible wrong variant
    (all layers kept, or the dropped layers not moving) misses by far more."""
    model, vnet, rw = _setup(LayerSampling(layers=layers, seed=7))
    batch = random_batches(IMAGE, CLASSES, F64, seed=2, n=N)
    exact = _flat(_setup(None, "fast")[2].meta_gradient(*batch)[0])
    seen = _steps_covering(rw, math.comb(3, layers))
    assert len(seen) == math.comb(3, layers)
    for kept, step in seen.items():
        rw.steps_done = step
        got = _flat(rw.meta_gradient(*batch)[0])
        want, abs_terms = _gated_reference(model, vnet, batch, list(kept))
        bound = _bound(abs_terms, list(kept), model)
        assert (got - want).abs().le(bound).all(), kept
        assert (got - exact).abs().gt(100 * bound).any(), kept
        frozen, _ = _gated_reference(model, vnet, batch, list(kept), move_dropped=False)
        assert (got - frozen).abs().gt(100 * bound).any(), kept


def test_top_keeps_the_layers_nearest_the_output_every_step():
    _, _, rw = _setup(LayerSampling(layers=2, sampling="top"))
    for step in (0, 1, 17):
        assert rw.famus_parameters(step) == ["bn.weight", "bn.bias", "fc.weight", "fc.bias"]


DRAWS = 300


@pytest.mark.parametrize("rescale", [False, True])
def test_the_mean_of_many_draws(rescale):
    """One layer of three per step, over 300 steps (float64). Each layer is kept with
    frequency 1/3 (within 5 binomial standard errors), and the mean estimate is
    E = Σ_l P(l kept)·term_l: 1/3 of the exact hypergradient for the paper's plain sum, the
    exact one when rescaled by L/K = 3, within 5 standard errors of the mean per component
    (the draws are seeded, so the test is deterministic). The per-layer terms come from
    the hand-written reference, one layer at a time."""
    model, vnet, rw = _setup(LayerSampling(layers=1, rescale=rescale, seed=11))
    batch = random_batches(IMAGE, CLASSES, F64, seed=2, n=N)
    terms = [_gated_reference(model, vnet, batch, layer)[0] for layer in LAYERS]
    exact = sum(terms)
    estimates, counts = [], np.zeros(3)
    for step in range(DRAWS):
        rw.steps_done = step
        kept = rw.famus_parameters()
        counts[[i for i, layer in enumerate(LAYERS) if layer[0] in kept]] += 1
        estimates.append(_flat(rw.meta_gradient(*batch)[0]))
    p = 1 / 3
    assert np.all(np.abs(counts / DRAWS - p) <= 5 * math.sqrt(p * (1 - p) / DRAWS)), counts
    stack = torch.stack(estimates)
    mean, se = stack.mean(0), stack.std(0) / math.sqrt(DRAWS)
    expected = exact if rescale else exact / 3
    assert (mean - expected).abs().le(5 * se + 1e-12 * exact.abs().max()).all()
    if not rescale:  # the bias of the paper's sum, (K/L − 1)·exact, is far outside the noise
        biggest = exact.abs().argmax()
        assert abs(mean[biggest] - exact[biggest]) > 10 * se[biggest]


def test_draws_depend_on_the_seed_and_the_step_only():
    """Not on the global RNG (reseeded between two reweighters), and a step leaves the
    global RNG where it was (BnCnn has no dropout: nothing else draws)."""
    sampling = LayerSampling(layers=1, seed=3)
    torch.manual_seed(0)
    np.random.seed(0)
    first = [_setup(sampling)[2].famus_parameters(s) for s in range(12)]
    torch.manual_seed(99)
    np.random.seed(99)
    again = [_setup(sampling)[2].famus_parameters(s) for s in range(12)]
    other = [_setup(LayerSampling(layers=1, seed=4))[2].famus_parameters(s) for s in range(12)]
    assert first == again
    assert first != other
    assert len({tuple(k) for k in first}) > 1  # the layers change from step to step
    _, _, rw = _setup(sampling)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    rw.step(*random_batches(IMAGE, CLASSES, F64, seed=5, n=N))
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)


def test_a_resumed_run_draws_what_an_uninterrupted_one_draws():
    """Four steps straight, against two steps, a save, a fresh reweighter loaded from it,
    two more steps: the same parameters bit for bit (a sampler that advanced a generator
    of its own at each step would restart it on resume and keep other layers)."""
    sampling = LayerSampling(layers=1, seed=5)
    batches = [random_batches(IMAGE, CLASSES, F64, seed=10 + s, n=N) for s in range(4)]
    model, vnet, rw = _setup(sampling)
    saved = None
    for s, batch in enumerate(batches):
        if s == 2:
            saved = copy.deepcopy((model.state_dict(), rw.optimizer.state_dict(), rw.state_dict()))
        rw.step(*batch)
    kept = [rw.famus_parameters(s) for s in range(1, 5)]
    assert len({tuple(k) for k in kept}) > 1
    model2, vnet2, rw2 = _setup(sampling, seed=1)  # other initial values, all overwritten
    model_state, opt_state, rw_state = saved
    model2.load_state_dict(model_state)
    rw2.optimizer.load_state_dict(opt_state)
    rw2.load_state_dict(rw_state)
    for batch in batches[2:]:
        rw2.step(*batch)
    for (k, v), v2 in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        assert torch.equal(v, v2), k
    for v, v2 in zip(vnet.parameters(), vnet2.parameters(), strict=True):
        assert torch.equal(v, v2)


def test_options_are_checked():
    with pytest.raises(ValueError, match="layers must be an integer >= 1"):
        LayerSampling(layers=0)
    with pytest.raises(ValueError, match="sampling must be one of uniform, top"):
        LayerSampling(sampling="bottom")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="draws nothing"):
        LayerSampling(sampling="top", rescale=True)
    model = BnCnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="hypergrad='famus' only"):
        mwnet.MetaReweighter(model, opt, hypergrad="fast", famus=LayerSampling())
    with pytest.raises(ValueError, match="needs hypergrad='famus'"):
        mwnet.MetaReweighter(model, opt).famus_parameters()


def test_layers_below_the_kept_ones_under_bf16_autocast():
    """Under autocast a batch norm whose input carries no tangent (conv is dropped here)
    but whose float32 weight does returned a bfloat16 primal with a float32 tangent, and
    the classifier's forward-mode rule then failed on the mixed dtypes. The replay casts
    the tangent to its primal's dtype, as autocast casts the tangent of any input it casts.

    The value is only held to bfloat16's precision: within ORDER_FACTOR times the distance
    autocast puts between ``fast``'s hypergradient and its float32 one on the same batch
    (the same passes, every op rounded to 8 significant bits; measured 3 % here, famus
    6 %). That catches a crash, NaN or a tangent in the wrong layer, not a small error."""
    batch = random_batches(IMAGE, CLASSES, torch.float32, seed=2, n=N)
    distance = {}
    for mode, famus in [("fast", None), ("famus", LayerSampling(layers=2, sampling="top"))]:
        torch.manual_seed(0)
        model = BnCnn()
        rw = mwnet.MetaReweighter(
            model, torch.optim.SGD(model.parameters(), lr=LR), hypergrad=mode, famus=famus
        )
        full = _flat(rw.meta_gradient(*batch)[0])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = _flat(rw.meta_gradient(*batch)[0])
            result = rw.step(*batch)
        assert low.dtype == torch.float32 and torch.isfinite(result.meta_loss)
        distance[mode] = float((low - full).norm() / full.norm())
    assert rw.famus_parameters(0) == ["bn.weight", "bn.bias", "fc.weight", "fc.bias"]
    assert 0 < distance["famus"] <= ORDER_FACTOR * distance["fast"]
