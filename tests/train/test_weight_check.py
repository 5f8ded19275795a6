"""The run's check of its weights against its own label score (no true label used)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import write_idx

import mwnet
from mwnet.label_issues.weight_check import (
    ADVICE,
    WeightCheck,
    check_weights,
    curve_trend,
    spearman,
)
from mwnet.methods import MethodDescriptor
from mwnet.methods.plain import PlainMethod
from mwnet.methods.registry import unregister_method
from mwnet.run import read_jsonl
from mwnet.run.signals import EpochPredictions, SampleSignals
from mwnet.train import loop
from mwnet.train.config import load_config


def _reference_spearman(a, b) -> float:
    """Pearson's correlation of average ranks, ranks counted pair by pair."""

    def ranks(x):
        return [sum(1 for y in x if y < v) + (sum(1 for y in x if y == v) + 1) / 2 for v in x]

    ra, rb = ranks(list(a)), ranks(list(b))
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    den = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return num / den


def test_spearman_equals_a_pairwise_reference_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 5, 30).astype(float)  # many ties
        b = a + rng.normal(0, 2, 30)
        # both are the same sums of at most 30 integer-and-half ranks: equal to a few ulps
        assert spearman(a, b) == pytest.approx(_reference_spearman(a, b), abs=1e-12)
    assert spearman(np.arange(5.0), -np.arange(5.0)) == pytest.approx(-1.0, abs=1e-15)
    assert spearman(np.ones(5), np.arange(5.0)) is None
    assert spearman(np.arange(2.0), np.arange(2.0)) is None


def test_the_bound_is_three_null_deviations_and_at_least_a_tenth():
    assert WeightCheck(-0.2, 5, 101).bound == pytest.approx(-0.3)
    assert WeightCheck(-0.2, 5, 1_000_001).bound == -0.1


def _signals(agreeing: np.ndarray, passes: int) -> SampleSignals:
    """Signals whose model predicted the given label in every pass where ``agreeing``,
    and another class in every pass elsewhere."""
    n = len(agreeing)
    labels = torch.zeros(n, dtype=torch.long)
    signals = SampleSignals(labels, 3)
    logits = torch.where(
        torch.from_numpy(agreeing)[:, None], torch.tensor([3.0, 0, 0]), torch.tensor([0, 3.0, 0])
    )
    for _ in range(passes):
        signals.record_epoch(EpochPredictions.from_logits(logits, labels))
    return signals


def test_weights_that_favour_the_suspects_are_flagged_and_others_are_not():
    rng = np.random.default_rng(1)
    agreeing = rng.random(400) < 0.6
    signals = _signals(agreeing, passes=5)
    noise = rng.normal(0, 0.1, 400)
    bad = check_weights(signals, np.where(agreeing, 0.3, 0.7) + noise)
    good = check_weights(signals, np.where(agreeing, 0.7, 0.3) + noise)
    flat = check_weights(signals, rng.random(400))
    assert bad.favours_suspects and bad.correlation < -0.5
    assert not good.favours_suspects and good.correlation > 0.5
    assert not flat.favours_suspects  # chance correlation stays inside the bound
    early = check_weights(_signals(agreeing, passes=2), np.where(agreeing, 0.3, 0.7) + noise)
    assert early.correlation < -0.5 and not early.judged and not early.favours_suspects
    unseen = np.full(400, np.nan)
    assert check_weights(signals, unseen).correlation is None


def test_curve_trend_reads_the_direction_of_a_curve():
    losses = np.linspace(0, 4, 50)
    assert curve_trend(losses, np.exp(-losses)) == pytest.approx(-1.0)
    assert curve_trend(losses, np.stack([losses, 2 * losses], 1)) == pytest.approx(1.0)


@dataclass
class LossPowerOptions:
    power: float = 1.0


class LossPowerWeights(PlainMethod):
    """Weights proportional to loss**power, detached: power > 0 up-weights the samples the
    model cannot fit (under label noise: the wrong labels), power < 0 the others."""

    name = "loss-power"

    def __init__(self, model, optimizer, power, **common):
        super().__init__(model, optimizer, **common)
        self.power = power

    def objective(self, logits, losses, y):
        w = (losses.detach() + 1e-3) ** self.power
        w = w / w.mean()
        return (w * losses).mean(), w

    def weighting_function(self, losses):
        return (losses + 1e-3) ** self.power


@pytest.fixture
def loss_power():
    def build(ctx):
        o = ctx.options["loss_power"]
        return LossPowerWeights(ctx.model, ctx.optimizer, o.power, **ctx.common())

    mwnet.register_method(MethodDescriptor("loss-power", build, {"loss_power": LossPowerOptions}))
    yield
    unregister_method("loss-power")


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=30)


def test_a_run_says_when_its_weights_favour_its_suspect_labels(
    loss_power, fmnist_root, tmp_path, capsys
):
    def run(power: float, name: str):
        cfg = load_config(
            None,
            [
                f"data.root={fmnist_root}",
                "data.download=false",
                "data.subset=300",
                "data.meta_per_class=2",
                "data.batch_size=50",
                "data.augment=false",
                "data.noise=uniform-exclusive",
                "data.noise_rate=0.4",
                "model.name=mlp",
                "model.options.hidden=[32]",
                "optim.lr=0.1",
                "optim.epochs=6",
                "method.name=loss-power",
                f"method.loss_power.power={power}",
                "threads=1",
                "device=cpu",
                f"out_dir={tmp_path}",
                f"name={name}",
            ],
        )
        trainer, run_dir = loop.start(cfg)
        summary = trainer.fit()
        return summary, read_jsonl(run_dir / "metrics.jsonl")

    summary, records = run(2.0, "hard-first")
    assert [r["weights_favour_suspects"] for r in records[:4]] == [None] * 4  # < 5 passes
    assert records[-1]["weights_favour_suspects"] is True
    assert records[-1]["curve_trend"] == pytest.approx(1.0)
    assert summary["weight_check"]["favours_suspect_labels"] is True
    assert summary["weight_check"]["advice"] == ADVICE
    assert "WARNING: the weights favour the labels" in capsys.readouterr().err

    summary, records = run(-1.0, "easy-first")
    assert records[-1]["weight_score_corr"] > 0
    assert records[-1]["weights_favour_suspects"] is False
    assert records[-1]["curve_trend"] == pytest.approx(-1.0)
    assert "advice" not in summary["weight_check"]
