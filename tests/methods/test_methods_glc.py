"""Gold Loss Correction: the estimate of C from the trusted set, the forward-corrected
loss, the second phase's step, and the two phases through the training loop."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from corruption_helpers import (
    FixedPass,
    assert_same_end,
    tiny_compare_args,
    tiny_config,
    write_fmnist,
)
from method_nets import CLASSES, TinyMlp
from rounding import central_difference_error, gamma, relative_sum_bound

from mwnet.cli import main
from mwnet.methods import GoldLossCorrection, build_method
from mwnet.methods.corruption_estimate import (
    fit_inverse_temperature,
    trusted_confusion_estimate,
    trusted_set_estimate,
)
from mwnet.methods.losses import forward_corrected_losses
from mwnet.run import load_checkpoint, read_json
from mwnet.train import loop
from mwnet.train.config import ConfigError

F64 = torch.float64


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return write_fmnist(tmp_path_factory.mktemp("data") / "fmnist")


def _fixed_probabilities(n: int = 30, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities of n samples, and true labels that leave class k − 1 out."""
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(2 * torch.randn(n, k, generator=g, dtype=F64), dim=1)
    labels = torch.arange(n) % (k - 1)
    return probs, labels[torch.randperm(n, generator=g)]


def _reference_glc(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The paper's Ĉ, one class at a time: row i is the mean of the probabilities of the
    samples of true class i, accumulated sample by sample (identity where none)."""
    k = probs.shape[1]
    c = torch.eye(k, dtype=F64)
    for i in range(k):
        rows = [probs[t] for t in range(len(labels)) if int(labels[t]) == i]
        if rows:
            total = torch.zeros(k, dtype=F64)
            for row in rows:
                total = total + row
            c[i] = total / len(rows)
    return c


def test_trusted_estimate_is_the_mean_probability_of_each_true_class():
    probs, labels = _fixed_probabilities()
    got = trusted_set_estimate(probs, labels)
    want = _reference_glc(probs, labels)
    # each entry: a sum of the class's (at most 30) non-negative probabilities, in two
    # orders, then one division: within 2·γ_31 of each other, relative
    torch.testing.assert_close(got, want, rtol=relative_sum_bound(31, F64), atol=0)
    assert torch.equal(got[3], torch.eye(4, dtype=F64)[3])  # no trusted sample of class 3
    torch.testing.assert_close(got.sum(1), torch.ones(4, dtype=F64), rtol=0, atol=gamma(64, F64))
    # planted bugs: C transposed, or its columns normalised instead of its rows
    totals = F.one_hot(labels, 4).to(F64).T @ probs
    for wrong in (want.T, totals / totals.sum(0, keepdim=True)):
        assert float((wrong - got).abs().max()) > 1e-2


def test_confusion_variant_counts_argmax_predictions_and_smooths():
    probs, labels = _fixed_probabilities()
    got = trusted_confusion_estimate(probs, labels)
    want = torch.eye(4, dtype=F64)
    for i in range(3):
        mine = [t for t in range(len(labels)) if int(labels[t]) == i]
        counts = torch.zeros(4, dtype=F64)
        for t in mine:
            counts[int(probs[t].argmax())] += 1
        want[i] = counts / len(mine)
    want = 0.99 * want + 0.01 / 4  # the authors' smoothing towards uniform
    # exact counts, one division, one product and one sum: 3 roundings of each entry
    torch.testing.assert_close(got, want, rtol=relative_sum_bound(3, F64), atol=0)
    assert float((got - trusted_set_estimate(probs, labels)).abs().max()) > 1e-2


def _reference_inverse_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """argmin over β of the trusted set's NLL of softmax(β·logits), by golden-section
    search on log β (function values only, no derivative)."""

    def nll(log_beta: float) -> float:
        return float(F.cross_entropy(math.exp(log_beta) * logits, labels, reduction="sum"))

    lo, hi = math.log(2.0**-6), math.log(2.0**6)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return math.exp((lo + hi) / 2)


def test_calibrated_variant_fits_the_temperature_of_the_trusted_set():
    g = torch.Generator().manual_seed(1)
    truth = 1.5 * torch.randn(200, CLASSES, generator=g, dtype=F64)
    labels = torch.multinomial(torch.softmax(truth, 1), 1, generator=g)[:, 0]
    logits = 3 * truth  # over-confident by a factor 3: β near 1/3
    beta = fit_inverse_temperature(logits, labels)
    # golden section on f values finds the flat minimum to about sqrt(u) ≈ 1e-8 in log β
    # (f'' > 0 here); bisection on f' to the last bits: 1e-6 leaves both far behind
    assert beta == pytest.approx(_reference_inverse_temperature(logits, labels), rel=1e-6)
    assert 0.2 < beta < 0.5

    x = torch.randn(200, 6, generator=g, dtype=F64)
    model = TinyMlp().double()
    with torch.no_grad():  # an over-confident model: its logits scaled by 3
        model.out.weight.mul_(3)
        model.out.bias.mul_(3)
    trusted = FixedPass(x, labels)
    method = GoldLossCorrection(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        iter(()),
        trusted,
        training_size=100,
        epochs=1,
        variant="calibrated",
    )
    got = method.estimate()
    logits = trusted(model, lambda z, y: z.double())
    beta = fit_inverse_temperature(logits, labels)
    assert method.inverse_temperature == beta and beta < 0.9
    want = _reference_glc(torch.softmax(beta * logits, 1), labels)
    # the same probabilities summed in two orders (at most 200 terms, zeros included),
    # then one division; an unfitted temperature moves C by 1e-2 and more
    torch.testing.assert_close(got, want, rtol=relative_sum_bound(201, F64), atol=0)
    assert float((got - _reference_glc(torch.softmax(logits, 1), labels)).abs().max()) > 1e-2


def _row_stochastic(k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(k, k, generator=g, dtype=F64) + 2 * torch.eye(k, dtype=F64)
    c[0, 2] = 0.0  # a (class, label) pair that never happens: log C = −inf there
    return c / c.sum(1, keepdim=True)


def test_forward_corrected_loss_and_its_gradient():
    g = torch.Generator().manual_seed(2)
    k = 4
    z = torch.randn(6, k, generator=g, dtype=F64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 2, 0])
    c = _row_stochastic(k, 3)
    got = forward_corrected_losses(z, y, c.log())
    (grad,) = torch.autograd.grad(got.sum(), z)
    p = torch.softmax(z.detach(), 1)
    q = torch.stack([sum(p[t, i] * c[i, y[t]] for i in range(k)) for t in range(6)])
    want = -q.log()  # −log (softmax(z) C)[y], one sample at a time
    # q: a sum of k non-negative products after a softmax (about 3k roundings), then a log:
    # within γ_{4k} relative of each other, and −log q moves by the relative error of q
    bound = relative_sum_bound(4 * k, F64)
    torch.testing.assert_close(got, want, rtol=bound, atol=bound)
    # by hand: ∂/∂z_k −log q = p_k − p_k C[k, y] / q
    by_hand = p - p * c[:, y].T / q[:, None]
    torch.testing.assert_close(grad, by_hand, rtol=bound, atol=bound)
    # central differences at h = 1e-5: truncation h²/6·|f'''| with |f'''| <= 0.2 (a
    # difference of two log-sum-exps, each's third derivative at most 1/(6√3)), and the
    # rounding of two losses of size < 3 over 2h
    h = 1e-5
    for t, j in itertools.product(range(6), range(k)):
        up, down = z.detach().clone(), z.detach().clone()
        up[t, j] += h
        down[t, j] -= h
        diff = (
            forward_corrected_losses(up, y, c.log())[t]
            - forward_corrected_losses(down, y, c.log())[t]
        ) / (2 * h)
        assert abs(float(diff - grad[t, j])) <= central_difference_error(h, 3.0, 0.2, F64, 64)
    # planted bug: the label's row of C instead of its column
    wrong = -torch.logsumexp(torch.log_softmax(z.detach(), 1) + c.log()[y], 1)
    assert float((wrong - want).abs().max()) > 1e-2


class _Stream:
    """Endless trusted batches, each drawn once and remembered."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)
        self.drawn: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __iter__(self):
        return self

    def __next__(self):
        x = torch.randn(4, 6, generator=self.g, dtype=F64)
        self.drawn.append((x, torch.randint(0, CLASSES, (4,), generator=self.g)))
        return self.drawn[-1]


def test_second_phase_step_weighs_the_two_sets_by_their_sizes():
    torch.manual_seed(0)
    model = TinyMlp().double()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(5)
    trusted = FixedPass(torch.randn(12, 6, generator=g, dtype=F64), torch.arange(12) % CLASSES)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    stream = _Stream(6)
    method = GoldLossCorrection(
        model, optimizer, stream, trusted, training_size=36, epochs=1, trusted_weight=2.0
    )
    assert method.extra_epochs == 1 and not method.restarts_at(0) and method.restarts_at(1)
    x, y = torch.randn(8, 6, generator=g, dtype=F64), torch.randint(0, CLASSES, (8,), generator=g)
    method.step(x, y)  # phase 1: cross-entropy, no trusted batch
    assert not stream.drawn and method.corruption is None
    assert optimizer.state
    method.begin_epoch(1)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in initial.items())
    assert not optimizer.state  # momentum cleared with the reset
    c = method.corruption
    assert c is not None and c.shape == (CLASSES, CLASSES)

    reference = TinyMlp().double()
    reference.load_state_dict(model.state_dict())
    out = method.step(x, y)
    (xg, yg) = stream.drawn[-1]
    p = torch.softmax(reference(x), 1)
    corrected = -torch.stack([(p[t] * c[:, y[t]]).sum() for t in range(8)]).log()
    trusted_ce = F.cross_entropy(reference(xg), yg, reduction="none")
    a, b = 36 / (36 + 2 * 12), 2 * 12 / (36 + 2 * 12)  # N_s and w·N_g of the union
    loss = a * corrected.mean() + b * trusted_ce.mean()
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    # the first step after the reset: momentum's buffer is the gradient, p − lr·g
    for (name, param), grad in zip(reference.named_parameters(), grads, strict=True):
        want = param.detach() - 0.5 * grad
        # a few dozen roundings of terms of size <= 3: 1e-13 leaves room, and the other
        # weighting (the union batch's count, 8 : 4) moves the step by 1e-3 and more
        torch.testing.assert_close(model.state_dict()[name], want, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(out.loss, loss.detach(), rtol=1e-13, atol=0)
    torch.testing.assert_close(out.meta_loss, trusted_ce.detach().mean(), rtol=1e-13, atol=0)
    torch.testing.assert_close(out.losses, F.cross_entropy(p.log(), y, reduction="none"))
    batch_weighted = (corrected.sum() + trusted_ce.sum()) / 12
    assert abs(float(batch_weighted.detach() - loss.detach())) > 1e-3


def test_glc_needs_a_trusted_set_and_a_first_phase():
    model = TinyMlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="trusted set, and this run has none"):
        GoldLossCorrection(
            model, optimizer, iter(()), FixedPass(torch.zeros(0, 6), torch.zeros(0).long()),
            training_size=10, epochs=2,
        )  # fmt: skip
    with pytest.raises(ValueError, match="estimate_epochs >= 1"):
        GoldLossCorrection(model, optimizer, iter(()), None, training_size=10, epochs=0)
    with pytest.raises(ValueError, match="trusted_weight must be > 0"):
        GoldLossCorrection(
            model, optimizer, iter(()), None, training_size=1, epochs=2, trusted_weight=0
        )
    method = build_method(
        "glc",
        model=model,
        optimizer=optimizer,
        meta_batches=iter(()),
        class_counts=torch.ones(CLASSES),
        options={"epochs": 4, "glc": {"estimate_epochs": 3}},
    )
    assert method.extra_epochs == 3
    with pytest.raises(ValueError, match="pass over the trusted set"):
        method.begin_epoch(3)


def test_config_refuses_what_glc_cannot_run(fmnist_root, tmp_path):
    for extra, message in (
        ("data.meta_source=auto", "data.meta_source=auto has none"),
        ("method.glc.trusted_weight=0", "trusted_weight must be > 0"),
        ("method.glc.estimate_epochs=-1", "estimate_epochs must be >= 0"),
        ("method.glc.variant=adjusted", "one of glc, calibrated, confusion"),
    ):
        with pytest.raises(ConfigError, match=message):
            tiny_config(fmnist_root, tmp_path, "glc", extra)


def _probe(trainer: loop.Trainer, estimate_at: int) -> dict:
    """Record what the loop does to the method: the model around the estimate, the
    learning rate of every step, and the probabilities C was estimated from."""
    method, model = trainer.exp.method, trainer.exp.model
    seen: dict = {"lrs": [], "initial": {k: v.clone() for k, v in model.state_dict().items()}}
    begin, step = method.begin_epoch, method.step

    def begin_epoch(epoch: int) -> None:
        if epoch == estimate_at:
            seen["before"] = {k: v.clone() for k, v in model.state_dict().items()}
            seen["probs"] = method.trusted(model, lambda z, y: torch.softmax(z.double(), 1))
        begin(epoch)
        if epoch == estimate_at:
            seen["after"] = {k: v.clone() for k, v in model.state_dict().items()}
            seen["optimizer_state"] = len(trainer.exp.optimizer.state)

    def recorded_step(x, y, index=None):
        seen["lrs"].append(trainer.exp.optimizer.param_groups[0]["lr"])
        return step(x, y, index)

    method.begin_epoch, method.step = begin_epoch, recorded_step
    return seen


def test_through_the_loop_the_model_restarts_and_resumes_exactly(fmnist_root, tmp_path):
    whole, whole_dir = loop.start(tiny_config(fmnist_root, tmp_path, "glc", "name=w"), quiet=True)
    seen = _probe(whole, 2)
    whole.fit()
    method = whole.exp.method
    assert whole.exp.total_epochs == 4  # E = optim.epochs = 2, then 2 corrected epochs
    # at epoch E the model is back at its initial weights, with no momentum left
    assert any(not torch.equal(seen["before"][k], v) for k, v in seen["initial"].items())
    assert all(torch.equal(seen["after"][k], v) for k, v in seen["initial"].items())
    assert seen["optimizer_state"] == 0
    # the schedule runs again from its start: 0.1 then 0.01, twice
    per_epoch = len(seen["lrs"]) // 4
    firsts = [seen["lrs"][i * per_epoch] for i in range(4)]
    assert firsts == pytest.approx([0.1, 0.01, 0.1, 0.01], rel=1e-12)
    # C: the phase-1 model's mean probability per class of the trusted set
    trusted = method.trusted
    assert torch.equal(trusted.labels, whole.exp.data.meta_labels)
    want = _reference_glc(seen["probs"], trusted.labels)
    torch.testing.assert_close(method.corruption, want, rtol=relative_sum_bound(21, F64), atol=0)
    saved = load_checkpoint(whole_dir / "checkpoint.pt")["method"]
    assert torch.equal(saved["corruption"], method.corruption)
    assert saved["initial"] is None  # dropped once the reset is done

    for stop in (2, 3):  # exactly at E (before the estimate), and within the second phase
        cut = tiny_config(fmnist_root, tmp_path, "glc", f"name=cut{stop}")
        trainer, cut_dir = loop.start(cut, quiet=True)
        trainer.fit(stop_after=stop)
        trainer.close()
        if stop == 2:
            state = load_checkpoint(cut_dir / "checkpoint.pt")["method"]
            assert state["corruption"] is None and state["initial"] is not None
        loop.resume(cut_dir, quiet=True).fit()
        assert_same_end(whole_dir, cut_dir)


def test_compare_trains_ce_glc_and_s_model_on_the_same_data(fmnist_root, tmp_path, capsys):
    args = tiny_compare_args(
        fmnist_root,
        tmp_path,
        "ce,glc,s-model",
        "optim.epochs=1",
        "method.glc.estimate_epochs=1",
        "method.s_model.estimate_epochs=1",
    )
    assert main(args) == 0
    out = capsys.readouterr().out
    record = json.loads(next(tmp_path.glob("*/comparison.json")).read_text())
    runs = {r["method"]: r for r in record["runs"]}
    assert set(runs) >= {"ce", "glc", "s-model"}
    for name, epochs in (("ce", 1), ("glc", 2), ("s-model", 2)):
        assert runs[name]["status"] == "trained"
        summary = read_json(Path(runs[name]["run_dir"]) / "summary.json")
        assert summary["last_epoch"] == epochs
        assert f"| {name} | {summary['last_test_acc']:.2f} % |" in out
    for name in ("glc", "s-model"):
        state = load_checkpoint(Path(runs[name]["run_dir"]) / "checkpoint.pt")["method"]
        matrix = state["corruption"] if name == "glc" else state["initial_confusion"]
        assert matrix.shape == (10, 10) and bool(torch.isfinite(matrix).all())
