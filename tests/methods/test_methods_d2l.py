"""D2L (Ma et al., 2018): the LID estimate, the turning point, the adapted targets and the
state that carries them across a resume; and ``mwnet compare`` with ELR and D2L."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_nets import TinyMlp, TinyTrainingSet
from rounding import gamma, relative_sum_bound, unit_roundoff
from torch import nn

from mwnet.cli import main
from mwnet.methods.d2l import D2L, D2LOptions, lid_subset
from mwnet.methods.lid import lid_alpha, mean_lid, mle_lid, turning_point
from mwnet.methods.penultimate import PenultimateFeatures
from mwnet.run import load_checkpoint, read_jsonl
from mwnet.train import loop
from mwnet.train.config import load_config

F64 = torch.float64


def _fake_data():
    path = Path(__file__).resolve().parents[1] / "train" / "fake_data.py"
    spec = importlib.util.spec_from_file_location("fake_data", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reference_lids(x: np.ndarray, k: int, batch: int, skip_self: bool = True) -> np.ndarray:
    """Each point's MLE LID within its batch, one point at a time (the authors'
    ``mle_batch``): sorted distances to the batch, itself (the first, 0) dropped, the k
    nearest, −k / Σ log(r_j / r_k + 1e-8). ``skip_self=False`` is the planted bug."""
    out = []
    for start in range(0, len(x), batch):
        part = x[start : start + batch]
        kk = min(k, len(part) - 1)
        if kk < 1:
            continue
        for point in part:
            distances = np.sort(np.sqrt(((part - point) ** 2).sum(axis=1)))
            nearest = distances[1 : kk + 1] if skip_self else distances[:kk]
            out.append(-kk / np.sum(np.log(nearest / nearest[-1] + 1e-8)))
    return np.array(out)


@pytest.mark.parametrize("n", [45, 41])  # a last batch of 5 (k clipped to 4), of 1 (no estimate)
def test_the_lid_estimate_is_the_authors_mle(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 6, generator=g, dtype=F64)
    k, batch = 5, 20
    want = _reference_lids(x.numpy(), k, batch)
    got = mle_lid(x[:20], k)
    np.testing.assert_allclose(got.numpy(), want[:20], rtol=_lid_tolerance(x.numpy(), k), atol=0)
    assert len(want) == (45 if n == 45 else 40)
    # the mean over all points: a mean of n non-negative estimates, each within the
    # relative bound below, summed in n - 1 more roundings
    rel = _lid_tolerance(x.numpy(), k) + relative_sum_bound(n, F64)
    assert abs(mean_lid(x, k, batch) - want.mean()) <= rel * want.mean()
    planted = _reference_lids(x.numpy(), k, batch, skip_self=False).mean()
    assert abs(planted - want.mean()) > 1e6 * rel * want.mean()


def _lid_tolerance(x: np.ndarray, k: int) -> float:
    """Relative distance between two float64 evaluations of one point's estimate. Each
    distance is a D-term sum of squares and a square root: within γ_{D+2}; a ratio of two
    within 2γ_{D+2} + u, and log(r + 1e-8) then within that much absolutely (log's
    absolute error is the argument's relative error) plus u·|log|. The k logs' sum S is
    off by k·(2γ_{D+2} + 2u) + γ_k·Σ|log|, and −k / S relatively by that over |S|, + u.
    |S| is smallest when the neighbours are nearly equidistant; the bound uses the
    smallest |S| of these points (from the reference's own estimates, S = −k / LID)."""
    d = x.shape[1]
    lids = _reference_lids(x, k, 20)
    s_min = float((k / lids).min())  # |S| = k / LID, and Σ|log| = |S| (all logs are <= 0)
    g, u = gamma(d + 2, F64), unit_roundoff(F64)
    per_sum = k * (2 * g + 2 * u) + gamma(k, F64) * 1.0
    return 2 * (per_sum / s_min + gamma(k, F64) + u)


@pytest.mark.parametrize("d", [2, 4])
def test_points_in_a_d_dimensional_subspace_have_lid_near_d(d):
    """The MLE is unbiased for k / (k − 2) · d where the density is locally uniform (the
    k − 1 log-ratios are Exp(d); E[k / Gamma(k − 1, d)] = k·d / (k − 2): 1.11·d for k = 20).
    Gaussian samples of 128 per batch are not locally uniform at the 20th neighbour:
    measured over 20 seeds, 1.146·d (d = 2) and 1.05·d (d = 4) with a spread of 1%; 10%
    of k·d / (k − 2) is the margin. And the estimate sees only distances: the same points
    in R^d and rotated into R^32 give one estimate, to rounding."""
    g = torch.Generator().manual_seed(d)
    basis, _ = torch.linalg.qr(torch.randn(32, d, generator=g, dtype=F64))
    z = torch.randn(1280, d, generator=g, dtype=F64)
    lid = mean_lid(z @ basis.T, 20, 128)
    expected = 20 * d / 18
    assert abs(lid - expected) <= 0.1 * expected
    # rotated distances differ from the originals by the basis' departure from
    # orthonormality and the products' rounding, 1e-14 relative; the estimate's
    # condition (k / |S| <= 40 here) keeps it below 1e-11
    assert abs(mean_lid(z, 20, 128) - lid) <= 1e-11 * lid
    other = mean_lid(torch.randn(1280, 2 * d, generator=g, dtype=F64), 20, 128)
    assert other > 1.5 * lid


def _turning_epoch(lids: list[float], init_epoch: int, window: int) -> int | None:
    """The authors' rule written out: the first epoch i with i + 1 > init + window values
    where LID_i − mean(previous window) > 2 · std(previous window), population std."""
    for i in range(len(lids)):
        if i + 1 <= init_epoch + window:
            continue
        before = lids[i - window : i]
        mean = sum(before) / window
        std = math.sqrt(sum((v - mean) ** 2 for v in before) / window)
        if lids[i] - mean > 2 * std:
            return i
    return None


HISTORY = [10.0, 8.1, 8.0, 8.1, 9.0, 8.0, 8.05, 9.5, 9.9, 10.4]
"""Falls, rises at epoch 4 (too early to count: init 2 + window 3), and for good at 7."""


def test_the_turning_point_is_the_first_rise_past_the_window():
    assert _turning_epoch(HISTORY, 2, 3) == 7
    fired = [i for i in range(len(HISTORY)) if turning_point(HISTORY[: i + 1], 2, 3)]
    assert fired[0] == 7
    # planted off-by-one bugs: counting from len >= init + window, or the window taking
    # in the latest value, each turn elsewhere
    assert _turning_epoch(HISTORY, 1, 3) == 4  # one epoch early is what ">=" does
    with_latest = [
        i
        for i in range(6, len(HISTORY))
        if HISTORY[i] - np.mean(HISTORY[i - 2 : i + 1]) > 2 * np.std(HISTORY[i - 2 : i + 1])
    ]
    assert 7 not in with_latest


def _d2l(epochs: int = 10, **options) -> D2L:
    model = TinyMlp()
    return D2L(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        TinyTrainingSet.of("mlp"),
        epochs=epochs,
        options=D2LOptions(**{"init_epoch": 2, "window": 3, **options}),
    )


def test_alpha_follows_the_authors_formula_from_the_turning_point():
    method = _d2l()
    alphas, turned = [], []
    history = [*HISTORY[:2], float("nan"), *HISTORY[3:]]  # an undefined estimate at 2
    for epoch, lid in enumerate(history):
        method.record(lid, epoch)
        alphas.append(method.alpha)
        turned.append(method.turning_epoch)
    assert method.lids[2] == HISTORY[1]  # the undefined one repeats the last
    recorded = [*HISTORY[:2], HISTORY[1], *HISTORY[3:]]
    assert _turning_epoch(recorded, 2, 3) == 7
    first = _turning_epoch(recorded, 2, 3)
    assert turned == [-1] * first + [first - 1] * (len(HISTORY) - first)
    for epoch, alpha in enumerate(alphas):
        if epoch < first:
            assert alpha == 1.0
        else:  # exp(−(i/T)·LID_i / min LID): two quotients, a product and an exp
            want = math.exp(-(epoch / 10) * recorded[epoch] / min(recorded[: epoch + 1]))
            assert alpha == pytest.approx(want, rel=relative_sum_bound(5, F64), abs=0)
    assert lid_alpha(5, 10, [4.0, 2.0, 3.0]) == pytest.approx(math.exp(-0.75), abs=1e-15)
    with pytest.raises(ValueError, match="LID estimate of epoch 0 is undefined"):
        _d2l().record(float("nan"), 0)


def test_after_the_turning_point_the_targets_mix_the_label_and_the_prediction():
    method = _d2l()
    g = torch.Generator().manual_seed(3)
    logits = 3 * torch.randn(8, 5, generator=g, dtype=F64)
    logits[0] = torch.tensor([30.0, 0, 0, 0, 0], dtype=F64)  # clipped at 1 - 1e-7
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    losses = F.cross_entropy(logits, y, reduction="none")
    loss, _ = method.objective(logits, losses, y)
    assert float(loss) == float(losses.mean())  # before the turning point: cross-entropy
    method.turning_epoch, method.alpha = 3, 0.6
    loss, _ = method.objective(logits, losses, y)

    def reference(soft: bool = False) -> float:
        z = logits.numpy()
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        given = np.eye(5)[y.numpy()]
        predicted = p if soft else np.eye(5)[p.argmax(1)]
        target = 0.6 * given + 0.4 * predicted
        p = np.clip(p / p.sum(1, keepdims=True), 1e-7, 1 - 1e-7)
        return float(-(target * np.log(p)).sum(1).mean())

    # per sample a 5-term sum of products of logs of softmax entries (each within a few
    # roundings amplified by the logit spread, <= 60 here), then the mean: γ_80 of Σ|terms|
    scale = float(-(torch.log(torch.softmax(logits, 1).clamp(1e-7, 1 - 1e-7))).sum(1).mean())
    tol = 2 * gamma(80, F64) * scale
    assert abs(float(loss) - reference()) <= tol
    assert abs(reference(soft=True) - reference()) > 1e6 * tol  # the planted bug: soft p


def test_the_subset_and_the_features():
    before = torch.random.get_rng_state()
    a, b = lid_subset(100, 30, seed=1, epoch=2), lid_subset(100, 30, seed=1, epoch=2)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a, b) and len(set(a.tolist())) == 30
    assert not torch.equal(a, lid_subset(100, 30, seed=1, epoch=3))
    assert not torch.equal(a, lid_subset(100, 30, seed=2, epoch=2))
    assert torch.equal(lid_subset(10, 30, 0, 0).sort().values, torch.arange(10))
    model = TinyMlp()
    x = torch.randn(4, 6)
    want = torch.tanh(model.hidden(x))
    assert torch.equal(PenultimateFeatures(model)(x), want)
    assert not model.out._forward_pre_hooks  # the hook lives for one forward only
    with pytest.raises(ValueError, match=r"ran no nn\.Linear"):
        PenultimateFeatures(nn.Tanh())(x)
    # begin_epoch estimates on the drawn subset's features: the estimate of those rows
    method = _d2l(subset=30, batch=10, k=4)
    method.begin_epoch(0)
    rows = TinyTrainingSet.of("mlp").inputs[lid_subset(40, 30, 0, 0)]
    with torch.no_grad():
        features = torch.tanh(method.model.hidden(rows)).double()
    assert method.lids == [mean_lid(features, 4, 10)]


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return _fake_data().write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=20)


def _config(root: Path, out: Path, name: str):
    return load_config(
        None,
        [
            f"data.root={root}",
            "data.download=false",
            "data.subset=100",
            "data.meta_per_class=2",
            "data.batch_size=25",
            "data.noise=uniform",
            "data.noise_rate=0.4",
            "model.name=mlp",
            "model.options.hidden=[8]",
            "optim.lr=0.3",
            "optim.epochs=5",
            "method.name=d2l",
            "method.d2l.init_epoch=0",
            "method.d2l.window=1",
            "method.d2l.batch=100",
            "threads=1",
            "device=cpu",
            f"out_dir={out}",
            f"name={name}",
        ],
    )


def test_a_resumed_run_turns_and_trains_as_an_uninterrupted_one(fmnist_root, tmp_path):
    whole, whole_dir = loop.start(_config(fmnist_root, tmp_path, "whole"), quiet=True)
    whole.fit()
    cut, cut_dir = loop.start(_config(fmnist_root, tmp_path, "cut"), quiet=True)
    cut.fit(stop_after=3)
    cut.close()
    loop.resume(cut_dir, quiet=True).fit()
    timing = ("epoch_time", "wall_time")

    def metrics(run_dir):
        return [
            {k: v for k, v in r.items() if k not in timing}
            for r in read_jsonl(run_dir / "metrics.jsonl")
        ]

    assert metrics(cut_dir) == metrics(whole_dir)
    a = load_checkpoint(whole_dir / "checkpoint.pt")
    b = load_checkpoint(cut_dir / "checkpoint.pt")
    assert a["method"] == b["method"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    state = a["method"]
    assert len(state["lids"]) == 5
    # the LID falls, then rises (measured: 5.61, 5.04, 4.80, 5.08, ...); a window of one
    # epoch turns at the first rise, here after the cut: the resumed run finds it from the
    # history it restored, and trains its last epoch on the adapted targets
    assert state["turning_epoch"] >= 2 and state["alpha"] < 1


def test_compare_runs_elr_and_d2l_beside_cross_entropy(fmnist_root, tmp_path, capsys):
    args = [
        "compare",
        "--preset",
        "fmnist-flip2-40-mlp",
        "--methods",
        "ce,elr,d2l",
        "--jobs",
        "1",
        "--top",
        "4",
        f"data.root={fmnist_root}",
        "data.download=false",
        "data.subset=100",
        "data.meta_per_class=2",
        "data.batch_size=25",
        "model.options.hidden=[8]",
        "optim.epochs=2",
        "optim.milestones=[1]",
        "method.d2l.init_epoch=0",
        "method.d2l.window=1",
        "method.elr.lam=7",
        f"out_dir={tmp_path}",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    folder = next(tmp_path.glob("*-compare-seed0"))
    record = json.loads((folder / "comparison.json").read_text())
    assert [r["method"] for r in record["runs"]] == ["ce", "elr", "d2l"]
    assert {r["status"] for r in record["runs"]} == {"trained"}
    for name in ("elr", "d2l"):
        assert f"| {name} |" in out
        state = load_checkpoint(folder / name / "checkpoint.pt")
        assert state["config"]["method"]["name"] == name
    elr = load_checkpoint(folder / "elr" / "checkpoint.pt")
    assert elr["config"]["method"]["elr"]["lam"] == 7.0
    assert len(load_checkpoint(folder / "d2l" / "checkpoint.pt")["method"]["lids"]) == 2
