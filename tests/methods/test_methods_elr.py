"""ELR (Liu et al., 2020): the loss and the target update are the authors' formulas, the
gradient holds the targets fixed, and the target table is state that resumes exactly."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rounding import central_difference_error, gamma, relative_sum_bound
from torch import nn

from mwnet.methods.elr import ELR
from mwnet.run import load_checkpoint, read_jsonl
from mwnet.train import loop
from mwnet.train.config import load_config

K = 5
BETA, LAM = 0.7, 3.0
CLAMP = 1e-4


def _fake_data():
    path = Path(__file__).resolve().parents[1] / "train" / "fake_data.py"
    spec = importlib.util.spec_from_file_location("fake_data", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _logits() -> torch.Tensor:
    """Six samples' logits, spread so that the clamps act: probabilities below 1e-4 in
    most rows, one above 1 - 1e-4 (row 0), one row near uniform."""
    g = torch.Generator().manual_seed(0)
    z = 4 * torch.randn(6, K, generator=g, dtype=torch.float64)
    z[0] = torch.tensor([14.0, 0.5, -1.0, 0.0, 2.0], dtype=torch.float64)
    z[5] = 0.1 * z[5]
    return z


def _reference(logits, labels, table, index, normalise=True, swap=False):
    """The loss and new rows of the authors' ``elr_loss``, written out in numpy float64;
    ``normalise`` and ``swap`` give the planted bugs (no renormalisation after the clamp;
    the EMA weights exchanged)."""
    z = logits.numpy()
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    p = np.clip(e / e.sum(axis=1, keepdims=True), CLAMP, 1 - CLAMP)
    q = p / p.sum(axis=1, keepdims=True) if normalise else p
    old = table.numpy()[index.numpy()]
    rows = (1 - BETA) * old + BETA * q if swap else BETA * old + (1 - BETA) * q
    log_softmax = shifted - np.log(e.sum(axis=1, keepdims=True))
    ce = -log_softmax[np.arange(len(z)), labels.numpy()].mean()
    s = (rows * p).sum(axis=1)
    return ce + LAM * np.log(1 - s).mean(), rows, p, s


def _tolerances(logits: torch.Tensor, s: np.ndarray) -> tuple[float, float]:
    """How far two float64 evaluations of the rows and of the loss may lie apart.

    A row entry is β·t_old + (1−β)·p̄_k / Σp̄, p̄ = clamp(e_k / Σe), e = exp(z − max z):
    a chain of non-negative terms, each exp within 2 roundings and amplified by |z − max z|
    (exp's condition number), then two K-term sums, two quotients, the products and the
    sum of the EMA; over two steps ``rounds`` roundings in all, so 2·γ_rounds relative
    (Higham, Lemma 3.1). The loss: CE_i = log Σe − (z_y − max z) within γ·(1 + spread +
    log K); 1 − s_i within γ·s_i + u, so log(1 − s_i) within γ·(1 + s_i) / (1 − s_i) plus
    γ·|log(1 − s_i)|; the means over n add γ_n. Both sides carry it, hence the 2.
    """
    spread = float((logits.max(1).values - logits.min(1).values).max())
    rounds = 3 * K + 10 + math.ceil(2 * spread)
    rows = relative_sum_bound(rounds, torch.float64)
    g = gamma(rounds + K + len(logits), torch.float64)
    reg = float(((1 + s) / (1 - s) + np.abs(np.log(1 - s))).max())
    loss = 2 * g * ((1 + spread + math.log(K)) + LAM * reg)
    return rows, loss


class Identity(nn.Module):
    """Its output is its input, exactly (the logits are the batch), with a parameter for
    the optimizer."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _method(n: int = 8) -> ELR:
    model = Identity()
    return ELR(model, torch.optim.SGD(model.parameters(), lr=0.0), n, K, beta=BETA, lam=LAM)


def test_loss_and_targets_are_the_authors_formulas_and_the_planted_bugs_are_not():
    method = _method()
    z = _logits()
    labels = torch.tensor([1, 0, 4, 2, 3, 3])
    table = torch.zeros(8, K, dtype=torch.float64)
    # two steps over overlapping samples: the second moves rows that are not zero any more
    for step, index in enumerate(
        (torch.tensor([0, 2, 4, 6, 1, 3]), torch.tensor([3, 2, 7, 5, 0, 1]))
    ):
        logits = z if step == 0 else z.flip(0)
        want_loss, want_rows, p, s = _reference(logits, labels, table, index)
        before = method.targets.clone()
        out = method.step(logits, labels, index)
        row_tol, loss_tol = _tolerances(logits, s)
        got_rows = method.targets[index].numpy()
        np.testing.assert_allclose(got_rows, want_rows, rtol=row_tol, atol=0)
        assert abs(float(out.loss) - want_loss) <= loss_tol
        others = np.setdiff1d(np.arange(8), index.numpy())
        assert torch.equal(method.targets[others], before[others])
        # the clamps acted, so the renormalisation matters (row 0 above 1 - 1e-4 at step 0)
        assert (p == CLAMP).any() and (step or p[0].max() == 1 - CLAMP)
        for bug in ({"swap": True}, {"normalise": False}):
            bad_loss, bad_rows, _, _ = _reference(logits, labels, table, index, **bug)
            assert np.abs(bad_rows - got_rows).max() > 1e3 * row_tol * np.abs(got_rows).max()
            if "swap" in bug:
                assert abs(bad_loss - float(out.loss)) > 1e3 * loss_tol
        table[index] = torch.from_numpy(want_rows)


def _fixed_target_loss(z: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> float:
    """The loss as a function of the logits alone, the batch's targets held fixed."""
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    p = np.clip(e / e.sum(axis=1, keepdims=True), CLAMP, 1 - CLAMP)
    ce = -(shifted - np.log(e.sum(axis=1, keepdims=True)))[np.arange(len(z)), labels].mean()
    return ce + LAM * np.log(1 - (rows * p).sum(axis=1)).mean()


def test_the_gradient_holds_the_targets_fixed():
    """autograd of the method's loss = central differences of the loss with the batch's
    new targets held fixed; letting the gradient flow through the targets (the planted
    bug: no detach) gives another gradient."""
    method = _method()
    index = torch.tensor([0, 2, 4, 6, 1, 3])
    labels = torch.tensor([1, 0, 4, 2, 3, 3])
    method.targets[index] = torch.softmax(torch.randn(6, K, dtype=torch.float64), 1) * 0.5
    logits = _logits().requires_grad_(True)
    method.batch_index = index
    loss, _ = method.objective(logits, F.cross_entropy(logits, labels, reduction="none"), labels)
    (grad,) = torch.autograd.grad(loss, logits)
    _, rows = method._pending
    z, y, fixed = logits.detach().numpy(), labels.numpy(), rows.detach().numpy()

    p = torch.softmax(logits.detach(), 1).numpy()
    h = 1e-5
    # no probability within reach of a clamp boundary: the loss is smooth around z
    assert (np.abs(p - CLAMP) > h).all() and (np.abs(p - (1 - CLAMP)) > h).all()
    fd = np.zeros_like(z)
    for i, k in np.ndindex(*z.shape):
        step = np.zeros_like(z)
        step[i, k] = h
        plus = _fixed_target_loss(z + step, y, fixed)
        minus = _fixed_target_loss(z - step, y, fixed)
        fd[i, k] = (plus - minus) / (2 * h)
    # |∂³L/∂z³| per entry: the CE's third cumulant (<= 1) and log(1 - s)'s chain rule with
    # |s'|, |s''|, |s'''| <= 1: 1/(1-s) + 3/(1-s)^2 + 2/(1-s)^3, over the mean's n
    s = float((fixed * np.clip(p, CLAMP, 1 - CLAMP)).sum(1).max())
    third = (1 + LAM * (1 / (1 - s) + 3 / (1 - s) ** 2 + 2 / (1 - s) ** 3)) / len(z)
    value = abs(_fixed_target_loss(z, y, fixed))
    tol = central_difference_error(h, value, third, torch.float64)
    np.testing.assert_allclose(grad.numpy(), fd, rtol=0, atol=tol)

    # the planted bug: the targets keep their graph
    probs = torch.softmax(logits, 1).clamp(CLAMP, 1 - CLAMP)
    attached = BETA * method.targets[index] + (1 - BETA) * probs / probs.sum(1, keepdim=True)
    wrong = F.cross_entropy(logits, labels) + LAM * torch.log(1 - (attached * probs).sum(1)).mean()
    (wrong_grad,) = torch.autograd.grad(wrong, logits)
    assert float((wrong_grad - grad).abs().max()) > 1e3 * tol


def test_a_failed_step_writes_no_target_and_bad_positions_are_named():
    method = _method()
    z, labels = _logits(), torch.tensor([1, 0, 4, 2, 3, 3])
    index = torch.tensor([0, 2, 4, 6, 1, 3])
    method.step(z, labels, index)
    before = method.targets.clone()
    bad = z.clone()
    bad[2, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="at step 1"):
        method.step(bad, labels, index)
    assert torch.equal(method.targets, before)
    with pytest.raises(ValueError, match=r"step\(x, y, index\)"):
        method.step(z, labels)
    with pytest.raises(ValueError, match=r"index 8 at position 1 lies outside .* 8 samples"):
        method.step(z, labels, torch.tensor([0, 8, 4, 6, 1, 3]))
    with pytest.raises(ValueError, match="repeats a sample"):
        method.step(z, labels, torch.tensor([0, 0, 4, 6, 1, 3]))
    model = Identity()
    with pytest.raises(ValueError, match=r"beta \(method.elr.beta\) must lie in \[0, 1\)"):
        ELR(model, torch.optim.SGD(model.parameters(), lr=0.1), 8, K, beta=1.0)
    with pytest.raises(ValueError, match="saved targets are for 9 samples"):
        method.load_state_dict({"steps_done": 1, "targets": torch.zeros(9, K)})


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
            "optim.lr=0.1",
            "optim.epochs=3",
            "method.name=elr",
            "method.elr.beta=0.6",
            "threads=1",
            "device=cpu",
            f"out_dir={out}",
            f"name={name}",
        ],
    )


def test_through_the_loop_every_target_moves_and_a_resumed_run_has_the_same(fmnist_root, tmp_path):
    whole, whole_dir = loop.start(_config(fmnist_root, tmp_path, "whole"), quiet=True)
    whole.fit()
    cut, cut_dir = loop.start(_config(fmnist_root, tmp_path, "cut"), quiet=True)
    cut.fit(stop_after=1)
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
    assert torch.equal(a["method"]["targets"], b["method"]["targets"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # each sample is stepped once an epoch, and each update adds (1 - β) of a distribution
    # to β of the old row: after 3 epochs every row sums to 1 - β³, to float32 rounding
    # (three EMA updates of K-term sums of the K = 10 entries: 2·γ_{3·(10 + 3)})
    targets = a["method"]["targets"]
    assert targets.shape == (len(whole.exp.data.train_labels), 10)
    sums = targets.double().sum(1)
    want = torch.full_like(sums, 1 - 0.6**3)
    torch.testing.assert_close(sums, want, rtol=relative_sum_bound(39, torch.float32), atol=0)
