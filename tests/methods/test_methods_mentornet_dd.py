"""MentorNet-DD: the mentor network against the authors' architecture, the features it is
fitted on and fed, its fit, a step, and the run through the training loop (resume across
the end of the burn-in, ``mwnet compare``)."""

from __future__ import annotations

import copy
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
from method_nets import CLASSES, batch
from plain_checks import LR, assert_step_matches, batch64, model64, reference_update

from mwnet.cli import main
from mwnet.methods import MentorNetDD, build_method
from mwnet.methods.mentor import (
    Mentor,
    MentorShape,
    corrupt_for_mentor,
    fit_mentor,
    mentor_features,
    new_mentor,
)
from mwnet.methods.mentornet_dd import MentorNetDDOptions
from mwnet.run import load_checkpoint, read_json, read_jsonl
from mwnet.train import loop
from mwnet.train.config import ConfigError

F64 = torch.float64
TRUSTED = 40


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return write_fmnist(tmp_path_factory.mktemp("data") / "fmnist")


# -- independent references, from the authors' code (utils.mentornet_nn, BasicLSTMCell) --
def reference_mentor(mentor: Mentor, features: torch.Tensor, *, use_output: bool = False):
    """The authors' mentor in float64, one sample at a time, from its parameters.

    BasicLSTMCell, one step from c = h = 0: the gates are [x, h]·kernel + bias, split
    into i, j (the candidate), f, o; c' = c·σ(f + forget_bias) + σ(i)·tanh(j) and
    h' = tanh(c')·σ(o). PyTorch keeps the kernel as W_ih (rows i, f, g, o) and W_hh, and
    two biases. The authors keep the cell state c' of both directions (``out_state[0]``);
    ``use_output`` takes h' instead (a plausible misreading). Then [label embedding,
    epoch embedding (epoch clipped to 99), c_fw, c_bw] → tanh(W1·+b1) → w2·, no bias.
    """
    p = {k: v.detach().to(F64) for k, v in mentor.state_dict().items()}
    h = mentor.shape.lstm_hidden
    rows = []
    for row in features.to(F64):  # differentiable in the losses
        x, label, epoch = row[:2], int(row[2]), int(row[3])
        states = []
        for suffix in ("", "_reverse"):
            h0, c0 = torch.zeros(h, dtype=F64), torch.zeros(h, dtype=F64)
            gates = (
                p[f"lstm.weight_ih_l0{suffix}"] @ x
                + p[f"lstm.weight_hh_l0{suffix}"] @ h0
                + p[f"lstm.bias_ih_l0{suffix}"]
                + p[f"lstm.bias_hh_l0{suffix}"]
            )
            i, f, g, o = gates[:h], gates[h : 2 * h], gates[2 * h : 3 * h], gates[3 * h :]
            c = c0 * torch.sigmoid(f + 0.0) + torch.sigmoid(i) * torch.tanh(g)
            states.append(torch.tanh(c) * torch.sigmoid(o) if use_output else c)
        joint = torch.cat(
            [
                p["label_embedding.weight"][label],
                p["epoch_embedding"][min(epoch, 99)],
                *states,
            ]
        )
        hidden = torch.tanh(p["hidden.weight"] @ joint + p["hidden.bias"])
        rows.append(p["out.weight"][0] @ hidden)
    return torch.stack(rows)


def tf_percentile(values: list[float], p: float) -> float:
    """tf.contrib.distributions.percentile(x, 100p), "nearest": sorted from the largest,
    index round((n − 1)(1 − p)), half to even."""
    return sorted(values, reverse=True)[round((len(values) - 1) * (1 - p))]


def _busy_mentor(shape: MentorShape | None = None, seed: int = 3, gain: float = 1.0) -> Mentor:
    """A seeded mentor with every parameter nonzero (its zero LSTM biases would hide a
    mix-up of the biases), scaled so that no tanh or sigmoid saturates; ``gain`` scales
    the LSTM's input weights and the output's (how much the loss moves the weight)."""
    mentor = new_mentor(shape or MentorShape(), seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*mentor.parameters(), mentor.epoch_embedding]:
            t.copy_(0.5 * torch.randn(t.shape, generator=g, dtype=F64))
        for name, t in mentor.lstm.named_parameters():
            if name.startswith("weight_ih"):
                t.mul_(gain)
        mentor.out.weight.mul_(gain)
    return mentor


def _features(n: int, labels: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    losses = 3 * torch.rand(n, generator=g, dtype=F64)
    label = torch.randint(0, labels, (n,), generator=g)
    epochs = torch.randint(0, 130, (n,), generator=g)  # beyond 99 too: clipped
    return torch.stack([losses, losses - 1.1, label.to(F64), epochs.to(F64)], dim=1)


# -- the mentor network ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape", [MentorShape(), MentorShape(label_rows=CLASSES, lstm_hidden=2, fc_hidden=7)]
)
def test_the_mentor_is_the_authors_network(shape):
    mentor = _busy_mentor(shape)
    features = _features(24, shape.label_rows)
    got = mentor(features)
    want = reference_mentor(mentor, features)
    # float64: each logit is a few hundred roundings apart in order (LSTM gates, a 20-term
    # dot product, tanh): within 1e-13 of each other; a wrong gate or row moves it by 1e-2
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
    assert float(want.std()) > 0.1  # the inputs move the output
    # planted: the LSTM's output h instead of its cell state c
    wrong = reference_mentor(mentor, features, use_output=True)
    assert float((wrong - want).abs().max()) > 1e-3
    assert float(features[:, 3].max()) > 99  # late epochs read the last row, as clipped


def test_a_new_mentor_is_drawn_from_the_seed_alone():
    before = torch.random.get_rng_state()
    a, b, c = (
        new_mentor(MentorShape(), 1),
        new_mentor(MentorShape(), 1),
        new_mentor(MentorShape(), 2),
    )
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.hidden.weight, c.hidden.weight)
    assert all(p.dtype == F64 for p in a.state_dict().values())
    # the authors' initialisers: zero LSTM biases, Glorot bounds, standard normal fc layers
    biases = [p.detach() for n, p in a.lstm.named_parameters() if "bias" in n]
    assert all(float(b.abs().max()) == 0 for b in biases)
    assert float(a.epoch_embedding.abs().max()) <= math.sqrt(6 / 105)
    assert float(a.label_embedding.weight.detach().abs().max()) <= math.sqrt(6 / 4)
    assert 0.6 < float(a.hidden.weight.detach().std()) < 1.4
    assert "epoch_embedding" not in dict(a.named_parameters())  # fixed, as the authors'


# -- the synthetic noise and the fit ------------------------------------------------------
def test_the_synthetic_noise_replaces_a_share_of_labels_by_other_classes():
    labels = torch.arange(50) % CLASSES
    before = torch.random.get_rng_state()
    given, clean = corrupt_for_mentor(labels, CLASSES, 0.3, seed=4)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert int((~clean).sum()) == 15  # round(0.3 · 50)
    assert torch.equal(clean, given == labels)  # a corrupted label is always another class
    again, _ = corrupt_for_mentor(labels, CLASSES, 0.3, seed=4)
    other, _ = corrupt_for_mentor(labels, CLASSES, 0.3, seed=5)
    assert torch.equal(again, given) and not torch.equal(other, given)
    # every other class is reachable: over many draws each (class, new class) pair appears
    big = torch.arange(5000) % CLASSES
    new, moved = corrupt_for_mentor(big, CLASSES, 0.5, seed=0)
    pairs = {(int(a), int(b)) for a, b in zip(big[~moved], new[~moved], strict=True)}
    assert pairs == {(a, b) for a in range(CLASSES) for b in range(CLASSES) if a != b}


def _separable(m: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses of clean labels in [0, 1.5), of corrupted ones in [1, 5): larger, overlapping."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(m, generator=g) >= 0.4
    u = torch.rand(m, generator=g, dtype=F64)
    losses = torch.where(clean, 1.5 * u, 1.0 + 4 * u)
    return mentor_features(losses, 1.2, torch.zeros(m), 30), clean


def test_the_fit_is_deterministic_and_separates_clean_from_corrupted():
    features, clean = _separable()
    fits, mentors = [], []
    for seed in (0, 0, 1):
        mentor = new_mentor(MentorShape(), seed)
        embedding = mentor.epoch_embedding.clone()
        fits.append(fit_mentor(mentor, features, clean, steps=150, lr=0.1))
        mentors.append(mentor)
        assert torch.equal(mentor.epoch_embedding, embedding)  # not trained
    a, b, c = (m.state_dict() for m in mentors)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same seed and data: bit-identical
    assert fits[0] == fits[1]
    assert any(not torch.equal(a[k], c[k]) for k in a)
    with torch.no_grad():
        v = torch.sigmoid(mentors[0](features))
    # the best constant's cross-entropy is the prior's entropy, H(0.6) = 0.67; the classes
    # overlap only on [1, 1.5), which holds 0.6/3 + 0.4/8 = 25% of the samples, so a fit
    # that separates them ends far below it
    assert fits[0].loss < 0.3
    assert fits[0].clean_weight > 0.8 and fits[0].corrupted_weight < 0.2
    torch.testing.assert_close(fits[0].clean_weight, float(v[clean].mean()))
    # ranking: almost every (clean, corrupted) pair is ordered by the weight (AUC)
    auc = (v[clean][:, None] > v[~clean][None, :]).double().mean()
    assert float(auc) > 0.95
    grid = mentor_features(torch.tensor([0.2, 0.8, 3.0, 4.5], dtype=F64), 1.2, torch.zeros(4), 30)
    with torch.no_grad():
        w = torch.sigmoid(mentors[0](grid))
    assert float(w[:2].min()) > 0.8 and float(w[2:].max()) < 0.2
    # planted: targets "corrupted" instead of "clean" turn the ordering around
    flipped = new_mentor(MentorShape(), 0)
    fit_mentor(flipped, features, ~clean, steps=150, lr=0.1)
    with torch.no_grad():
        assert float(torch.sigmoid(flipped(grid))[2:].min()) > 0.8


# -- the method: features at the fit and at the steps -----------------------------------------
EPOCHS, BURN_IN = 10, 2
PERCENT = 100 * BURN_IN // EPOCHS
"""The percent of training at the first epoch after the burn-in: the mentor's epoch input."""


def _trusted() -> FixedPass:
    return FixedPass(*batch("mlp", 700, n=TRUSTED, dtype=F64))


def _method(model, *, label_feature="zero", steps=40, percentile=0.6, trusted=True, seed=5, lr=LR):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    options = {
        "epochs": EPOCHS,
        "mentornet": {"percentile": percentile, "ema_decay": 0.5, "burn_in_epochs": BURN_IN},
        "mentornet_dd": {"mentor_steps": steps, "label_feature": label_feature},
    }
    method = build_method(
        "mentornet-dd",
        model=model,
        optimizer=optimizer,
        meta_batches=iter(()),
        class_counts=torch.ones(CLASSES),
        options=options,
        meta_set=_trusted() if trusted else None,
        seed=seed,
    )
    assert isinstance(method, MentorNetDD)
    return optimizer, method


class MentorInputs:
    """Every input a :class:`Mentor` is called with, via a global forward pre-hook."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def __enter__(self) -> MentorInputs:
        def hook(module, args):
            if isinstance(module, Mentor):
                self.seen.append(args[0].detach().clone())

        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@pytest.mark.parametrize("label_feature", ["zero", "observed"])
def test_the_fit_and_the_steps_build_the_features_alike(label_feature):
    model = model64()
    _, method = _method(model, label_feature=label_feature)
    for epoch, seed in ((0, 1), (1, 2)):  # the burn-in: the moving average moves
        method.begin_epoch(epoch)
        method.step(*batch64(seed))
    assert method.mentor is None
    threshold = method.threshold
    trusted = _trusted()
    with torch.no_grad():
        log_p = torch.log_softmax(model(trusted.x), dim=1)
    given, clean = corrupt_for_mentor(trusted.labels, CLASSES, 0.4, seed=5)
    assert int((~clean).sum()) == 16  # round(0.4 · 40)

    with MentorInputs() as inputs:
        method.begin_epoch(BURN_IN)  # the first epoch after the burn-in fits the mentor
    fitted = inputs.seen[0]
    assert all(torch.equal(s, fitted) for s in inputs.seen)  # full batch, every step
    losses = -log_p[torch.arange(TRUSTED), given]
    label = given if label_feature == "observed" else torch.zeros(TRUSTED, dtype=torch.long)
    # float64 CE through the same MLP in another order (log_softmax here, the pass's own
    # there): a few dozen roundings, ~1e-15; a wrong label or sign moves a loss by 1e-2
    torch.testing.assert_close(fitted[:, 0], losses, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fitted[:, 1], losses - threshold, rtol=1e-12, atol=1e-14)
    assert torch.equal(fitted[:, 2], label.to(F64))
    assert torch.equal(fitted[:, 3], torch.full((TRUSTED,), float(PERCENT), dtype=F64))
    assert method.mentor_percent == PERCENT
    # the planted variants differ from what was fed by far more than the tolerance
    assert float((fitted[:, 1] - (threshold - losses)).abs().max()) > 0.1  # sign
    assert PERCENT != 100 * (BURN_IN - 1) // EPOCHS  # the epoch before the fit

    for epoch, seed in ((BURN_IN, 3), (7, 4)):  # the epoch input stays P, later too
        method.begin_epoch(epoch)
        before = method.threshold
        x, y = batch64(seed)
        with MentorInputs() as inputs:
            out = method.step(x, y)
        (fed,) = inputs.seen
        ce = out.losses
        after = 0.5 * before + 0.5 * tf_percentile(ce.tolist(), 0.6)
        assert method.threshold == after
        label = y if label_feature == "observed" else torch.zeros_like(y)
        assert torch.equal(fed[:, 0], ce)
        assert torch.equal(fed[:, 1], ce - after)  # the same float64 subtraction
        assert torch.equal(fed[:, 2], label.to(F64))
        assert torch.equal(fed[:, 3], torch.full((len(y),), float(PERCENT), dtype=F64))
        with torch.no_grad():
            v = torch.sigmoid(reference_mentor(method.mentor, fed))
        torch.testing.assert_close(out.weights, v, rtol=1e-12, atol=1e-14)


def test_the_noise_rate_and_seed_decide_the_fit():
    features = {}
    for key, rate, seed in (("a", 0.4, 5), ("b", 0.4, 5), ("c", 0.2, 5), ("d", 0.4, 6)):
        model = model64()
        _, method = _method(model, label_feature="observed", steps=5, seed=seed)
        method.options.mentor_noise_rate = rate
        method.begin_epoch(BURN_IN)
        features[key] = method.mentor_training_set()
    assert torch.equal(features["a"][0], features["b"][0])
    assert int((~features["c"][1]).sum()) == 8  # round(0.2 · 40)
    assert not torch.equal(features["d"][0][:, 2], features["a"][0][:, 2])


# -- one step with the fitted mentor ------------------------------------------------------
def test_one_step_with_a_fixed_mentor_equals_the_reference():
    model = model64()
    _, method = _method(model)
    mentor = _busy_mentor(gain=6.0)  # its weights span 0.78 .. 0.95 on this batch
    method.load_state_dict(
        {
            "steps_done": 0,
            "epoch": 4,
            "threshold": 1.3,
            "mentor": mentor.state_dict(),
            "mentor_percent": 35,
            "mentor_fit": None,
        }
    )
    method.begin_epoch(4)  # fitted already: nothing is refitted
    assert torch.equal(method.mentor.hidden.weight, mentor.hidden.weight)
    x, y = batch64(9)

    def weights(ce: torch.Tensor) -> torch.Tensor:
        threshold = 0.5 * 1.3 + 0.5 * tf_percentile(ce.tolist(), 0.6)
        rows = torch.stack(
            [ce, ce - threshold, torch.zeros_like(ce), torch.full_like(ce, 35.0)], dim=1
        )
        return torch.sigmoid(reference_mentor(mentor, rows))

    def loss_of(logits, labels):
        ce = F.cross_entropy(logits, labels, reduction="none")
        v = weights(ce.detach())  # no gradient through the weights
        assert float(v.max() - v.min()) > 0.05  # the weights differ between samples
        return (v * ce).mean()  # over the batch size, as the authors

    def over_selected(logits, labels):  # planted: divided by Σv, not the batch size
        v = weights(F.cross_entropy(logits, labels, reduction="none").detach())
        return loss_of(logits, labels) * len(labels) / v.sum()

    def through_weights(logits, labels):  # planted: the gradient flows into v
        ce = F.cross_entropy(logits, labels, reduction="none")
        return (weights(ce) * ce).mean()

    wrong = [reference_update(model, x, y, f) for f in (over_selected, through_weights)]
    assert_step_matches(model, method, x, y, loss_of)
    got = {k: v.detach() for k, v in model.named_parameters()}
    for other in wrong:
        assert max(float((got[k] - other[k]).abs().max()) for k in got) > 1e-4


def test_a_failed_step_keeps_the_moving_average_and_the_mentor():
    _, method = _method(model64(), steps=5)
    method.begin_epoch(BURN_IN)
    method.step(*batch64(0))
    before = copy.deepcopy(method.state_dict())
    x, y = batch64(1)
    x[0, 0] = float("nan")
    with pytest.raises(FloatingPointError):
        method.step(x, y)
    after = method.state_dict()
    assert after["threshold"] == before["threshold"] and after["epoch"] == before["epoch"]
    assert all(torch.equal(after["mentor"][k], v) for k, v in before["mentor"].items())


def test_steps_after_the_burn_in_need_the_fit_and_the_fit_needs_a_trusted_set():
    _, method = _method(model64(), trusted=False)
    method.begin_epoch(1)
    method.step(*batch64(0))  # the burn-in needs no mentor
    with pytest.raises(ValueError, match=r"needs the pass over the trusted set"):
        method.begin_epoch(BURN_IN)
    with pytest.raises(RuntimeError, match=r"call begin_epoch\(2\) before its steps"):
        method.step(*batch64(1))
    with pytest.raises(ValueError, match="has none"):
        MentorNetDD(
            model64(), None, FixedPass(torch.zeros(0, 6), torch.zeros(0)), epochs=4, classes=5
        )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("mentor_noise_rate", 0.0, r"mentor_noise_rate must lie in \(0, 1\)"),
        ("mentor_noise_rate", 1.0, r"mentor_noise_rate must lie in \(0, 1\)"),
        ("mentor_steps", 0, "mentor_steps must be an integer >= 1"),
        ("mentor_lr", 0.0, "mentor_lr must be > 0"),
        ("fc_hidden", 0, "fc_hidden must be an integer >= 1"),
        ("label_feature", "class", "label_feature must be one of zero, observed"),
    ],
)
def test_bad_options_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        MentorNetDDOptions(**{field: value})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.mentornet_dd.mentor_noise_rate=1.5"], "mentor_noise_rate must lie"),
        (["method.mentornet.ema_decay=1"], "ema_decay must lie"),
        (["data.meta_source=auto"], "data.meta_source=auto has none"),
    ],
)
def test_the_config_refuses_bad_values_before_reading_data(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path, tmp_path, "mentornet-dd", *overrides)
    with pytest.raises(ConfigError, match=r"read by mentornet-dd, not by method\.name=gce"):
        tiny_config(tmp_path, tmp_path, "gce", "method.mentornet_dd.mentor_steps=5")


# -- through the training loop ------------------------------------------------------------
RUN = ("optim.epochs=3", "method.mentornet.burn_in_epochs=1", "method.mentornet_dd.mentor_steps=30")


@pytest.fixture(scope="module")
def whole_dir(fmnist_root, tmp_path_factory) -> Path:
    """A run of :data:`RUN` never stopped."""
    out = tmp_path_factory.mktemp("whole")
    whole, run_dir = loop.start(
        tiny_config(fmnist_root, out, "mentornet-dd", *RUN, "name=whole"), quiet=True
    )
    whole.fit()
    whole.close()
    return run_dir


@pytest.mark.parametrize("stop", [1, 2])
def test_a_run_resumes_bit_for_bit_across_the_end_of_the_burn_in(
    stop, fmnist_root, whole_dir, tmp_path
):
    """Stopped at the burn-in's end (before the fit) or after the fit, then resumed: the
    metrics, the model, the optimizer and the mentor end as in a run never stopped."""
    cut, cut_dir = loop.start(
        tiny_config(fmnist_root, tmp_path, "mentornet-dd", *RUN, "name=cut"), quiet=True
    )
    cut.fit(stop_after=stop)
    cut.close()
    saved = load_checkpoint(cut_dir / "checkpoint.pt")["method"]
    assert (saved["mentor"] is None) == (stop == 1)
    loop.resume(cut_dir, quiet=True).fit()
    end = assert_same_end(whole_dir, cut_dir)["method"]
    assert end["mentor_percent"] == 33 and end["mentor"] is not None  # ⌊100 · 1/3⌋
    rows = read_jsonl(whole_dir / "metrics.jsonl")
    assert rows[0]["mean_weight"] == 1.0 and rows[1]["mean_weight"] < 1.0


def test_compare_trains_ce_and_both_mentornets_on_the_same_data(fmnist_root, tmp_path, capsys):
    args = tiny_compare_args(
        fmnist_root,
        tmp_path,
        "ce,mentornet-pd,mentornet-dd",
        "optim.epochs=2",
        "method.mentornet.burn_in_epochs=1",
        "method.mentornet_dd.mentor_steps=20",
    )
    assert main(args) == 0
    out = capsys.readouterr().out
    record = json.loads(next(tmp_path.glob("*/comparison.json")).read_text())
    runs = {r["method"]: r for r in record["runs"]}
    assert set(runs) >= {"ce", "mentornet-pd", "mentornet-dd"}
    for name in ("ce", "mentornet-pd", "mentornet-dd"):
        assert runs[name]["status"] == "trained"
        summary = read_json(Path(runs[name]["run_dir"]) / "summary.json")
        assert summary["last_epoch"] == 2
        assert f"| {name} | {summary['last_test_acc']:.2f} % |" in out
    run_dir = Path(runs["mentornet-dd"]["run_dir"])
    state = load_checkpoint(run_dir / "checkpoint.pt")["method"]
    assert state["mentor_percent"] == 50 and state["mentor_fit"]["loss"] >= 0
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert rows[0]["mean_weight"] == 1.0  # the burn-in
    assert 0 < rows[1]["mean_weight"] < 1  # the mentor's weights, strictly in (0, 1)
