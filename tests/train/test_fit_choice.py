"""``mwnet fit``'s choice: the paired margin rule, the candidate lists, and which runs may
not be chosen or serve as the label-issue source."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mwnet.fitting.candidates import WITH_TRUSTED_SET, WITHOUT_TRUSTED_SET, select
from mwnet.fitting.choice import choose, paired_error, rule
from mwnet.fitting.pipeline import _excluded, issue_source
from mwnet.suite.selection import sampling_error
from mwnet.train.compare import Compared


def test_paired_error_by_hand() -> None:
    # d = b - a = [0, -1, 1, 1]: mean 1/4, sample variance (3 - 4/16) / 3, error sqrt(var / 4)
    a = np.array([1, 1, 0, 0], dtype=bool)
    b = np.array([1, 0, 1, 1], dtype=bool)
    expected = 100 * math.sqrt((3 - 4 * 0.25**2) / 3 / 4)
    assert paired_error(a, b) == pytest.approx(expected, rel=1e-12)
    assert paired_error(a, a) == 0.0
    assert paired_error(a[:1], b[:1]) == 0.0
    with pytest.raises(ValueError, match="equal 1-D"):
        paired_error(a, b[:3])


def _pair(n: int, agree_right: int, only_b: int, only_a: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.zeros(n, bool), np.zeros(n, bool)
    a[:agree_right] = b[:agree_right] = True
    b[agree_right : agree_right + only_b] = True
    a[agree_right + only_b : agree_right + only_b + only_a] = True
    return a, b


def test_a_real_gain_between_models_that_mostly_agree_switches() -> None:
    # 1,000 images, both right on 800, b alone on 8 more, a alone on 2: b is 0.6 points ahead
    a, b = _pair(1000, 800, 8, 2)
    decision = choose([a, b])
    assert decision.margin == pytest.approx(0.6)
    assert decision.threshold < 0.6 and decision.switched and decision.chosen == 1
    # the unpaired error of the same two accuracies would have kept the default: the
    # paired rule is what lets half a point count
    assert sampling_error(80.2, 80.8, 1000) > 1.5


def test_a_near_tie_keeps_the_default() -> None:
    # b ahead by 3 images of 1,000 while 60 images are answered differently: noise
    a, b = _pair(1000, 750, 32, 29)
    decision = choose([a, b])
    assert decision.best == 1 and not decision.switched and decision.chosen == 0
    assert "within the split's paired sampling error" in rule(decision, ["A", "B"])


def test_unusable_candidates_are_skipped_and_none_is_none() -> None:
    a, b = _pair(100, 50, 10, 0)
    decision = choose([None, a, b])
    assert decision.default == 1 and decision.chosen == 2
    assert choose([None, None]) is None


def test_candidate_lists() -> None:
    assert select(None, True) == WITH_TRUSTED_SET
    assert select(None, False) == WITHOUT_TRUSTED_SET
    assert all(c.method != "finetune" for c in WITHOUT_TRUSTED_SET)  # needs a trusted set
    picked = select(["ce", "retrain", "gce"], True)
    assert [c.name for c in picked] == ["ce", "retrain", "gce"]
    assert picked[2].overrides == ("method.name=gce",)  # any method, with its defaults
    with pytest.raises(ValueError, match="unknown candidate 'magic'"):
        select(["ce", "magic"], True)
    with pytest.raises(ValueError, match="twice"):
        select(["ce", "ce"], True)
    with pytest.raises(ValueError, match="only continuations"):
        select(["retrain", "finetune-best"], True)


def _compared(method: str, val: float, *, flagged: bool = False, status: str = "trained"):
    summary = {"last_val_acc": val, "val_samples": 100}
    if flagged:
        summary["weight_check"] = {"favours_suspect_labels": True}
    return Compared(method, Path(method), summary, status, None)


def test_flagged_weights_are_neither_chosen_nor_the_issue_source() -> None:
    mwnet = _compared("mwnet", 90.0, flagged=True)
    cmwnet = _compared("cmwnet", 80.0)
    ce = _compared("ce", 85.0)
    assert "favour the labels" in _excluded(mwnet)
    assert _excluded(cmwnet) is None
    assert issue_source([mwnet, cmwnet, ce]) is cmwnet  # the weighting run not flagged
    # no weighting run left: the best other usable run
    assert issue_source([mwnet, ce]) is ce
    failed = Compared("glc", Path("glc"), {}, "failed", None, error="boom")
    assert _excluded(failed) == "failed: boom"
