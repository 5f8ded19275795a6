"""Per-sample training signals: what a run saw of every training sample, epoch after epoch.

A run already computes, for free, each sample's loss on its given label and (weighting
methods) its weight at every step, and once per epoch the model's prediction for it (the
evaluation pass over the training set). Kept as running sums per sample, these are what
tells a wrong label from a right one (:mod:`mwnet.label_issues`): a sample whose given
label the model rarely agrees with, over the whole run, is likely mislabelled. Running
sums keep the record O(n) whatever the number of epochs, so it scales to millions of
samples; the state goes into every checkpoint (a resumed run continues the same sums)
and into ``signals.npz`` next to it, which the label-issue report reads without torch.
The training loop saves beside the sums which run and epoch the file is a record of, so
the report can refuse a file copied from another run or left from an earlier epoch
(:mod:`mwnet.label_issues.provenance`).

The "likely" label is the class the model preferred over the given one in most epochs,
found with the Boyer-Moore majority vote (one candidate and one counter per sample): it
is exact whenever one class won more than half of the epochs, and needs no n x K table.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mwnet.run.atomic import atomic_write

SIGNALS_FILE = "signals.npz"
SIGNALS_FORMAT = "mwnet-signals-1"

_FLOAT_SUMS = ("loss_sum", "weight_sum", "confidence_sum", "margin_sum")
_INT_COUNTS = ("loss_count", "weight_count", "agree_count", "likely_votes")
_LAST = ("last_loss", "last_weight")


@dataclass(frozen=True)
class EpochPredictions:
    """The model's view of every training sample in one evaluation pass (eval mode).

    All tensors have one entry per training sample, in the run's training-set order.
    """

    pred: torch.Tensor
    """Predicted class (int64)."""
    confidence: torch.Tensor
    """Softmax probability of the given label (float)."""
    margin: torch.Tensor
    """Logit of the given label minus the largest other logit (float; the "AUM" margin)."""
    runner_up: torch.Tensor
    """The highest-scoring class other than the given label (int64)."""

    @staticmethod
    def from_logits(logits: torch.Tensor, labels: torch.Tensor) -> EpochPredictions:
        """Every field from the logits (n, K) and the given labels (n,) of a batch."""
        logits = logits.float()
        given = logits.gather(1, labels[:, None])[:, 0]
        others = logits.scatter(1, labels[:, None], float("-inf"))
        top_other, runner_up = others.max(1)
        return EpochPredictions(
            pred=logits.argmax(1),
            confidence=(given - logits.logsumexp(1)).exp(),
            margin=given - top_other,
            runner_up=runner_up,
        )

    def stacked(self) -> torch.Tensor:
        """The four fields as one float64 (n, 4) tensor, to gather across ranks at once."""
        fields = (self.pred, self.confidence, self.margin, self.runner_up)
        return torch.stack([f.double() for f in fields], 1)

    @staticmethod
    def unstacked(table: torch.Tensor) -> EpochPredictions:
        return EpochPredictions(
            pred=table[:, 0].long(),
            confidence=table[:, 1].float(),
            margin=table[:, 2].float(),
            runner_up=table[:, 3].long(),
        )


class SampleSignals:
    """Running per-sample sums of a run's training signals (see the module docstring).

    Args:
        labels: the given (observed) label of every training sample, shape (n,); the
            signals are about these labels.
        num_classes: number of classes.
    """

    def __init__(self, labels: torch.Tensor, num_classes: int) -> None:
        self.labels = labels.detach().cpu().long().clone()
        self.num_classes = int(num_classes)
        n = len(self.labels)
        self.epochs = 0
        """Evaluation passes recorded (the prediction counters' denominator)."""
        for name in _FLOAT_SUMS:
            setattr(self, name, torch.zeros(n, dtype=torch.float64))
        for name in _INT_COUNTS:
            setattr(self, name, torch.zeros(n, dtype=torch.int64))
        for name in _LAST:
            setattr(self, name, torch.full((n,), float("nan")))
        self.last_pred = torch.full((n,), -1, dtype=torch.int64)
        self.likely = torch.full((n,), -1, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    # -- recording -----------------------------------------------------------------
    def record_step(
        self, index: torch.Tensor, losses: torch.Tensor, weights: torch.Tensor | None = None
    ) -> None:
        """One training step's per-sample losses on the given labels (and weights).

        ``index`` holds the samples' positions in the training set; a sample seen twice in
        one call counts twice.
        """
        index = index.detach().cpu().long()
        losses = losses.detach().float().cpu()
        self.loss_sum.index_add_(0, index, losses.double())
        self.loss_count.index_add_(0, index, torch.ones_like(index))
        self.last_loss[index] = losses
        if weights is not None:
            weights = weights.detach().float().cpu()
            self.weight_sum.index_add_(0, index, weights.double())
            self.weight_count.index_add_(0, index, torch.ones_like(index))
            self.last_weight[index] = weights

    def record_epoch(self, predictions: EpochPredictions) -> None:
        """One evaluation pass over the whole training set, in training-set order."""
        p = predictions
        if len(p.pred) != len(self):
            raise ValueError(
                f"an epoch's predictions must cover all {len(self)} training samples, got "
                f"{len(p.pred)}"
            )
        self.epochs += 1
        self.agree_count += (p.pred.cpu() == self.labels).long()
        self.confidence_sum += p.confidence.cpu().double()
        self.margin_sum += p.margin.cpu().double()
        self.last_pred = p.pred.cpu().long().clone()
        # Boyer-Moore majority vote over the epochs' preferred other class.
        vote = p.runner_up.cpu().long()
        empty = self.likely_votes == 0
        self.likely = torch.where(empty, vote, self.likely)
        same = vote == self.likely
        self.likely_votes = torch.where(same, self.likely_votes + 1, self.likely_votes - 1)

    # -- derived -------------------------------------------------------------------
    def mean(self, name: str) -> np.ndarray:
        """Per-sample mean of a signal: ``loss``, ``weight``, ``confidence``, ``margin`` or
        ``agreement`` (the share of evaluation passes whose prediction was the given label);
        NaN where nothing was recorded."""
        if name == "agreement":
            total, count = self.agree_count.double(), torch.full_like(self.loss_sum, self.epochs)
        elif name in ("confidence", "margin"):
            total = getattr(self, f"{name}_sum")
            count = torch.full_like(total, self.epochs)
        elif name in ("loss", "weight"):
            total, count = getattr(self, f"{name}_sum"), getattr(self, f"{name}_count").double()
        else:
            raise ValueError(
                f"unknown signal {name!r}; choose loss, weight, confidence, margin or agreement"
            )
        with np.errstate(invalid="ignore", divide="ignore"):
            return (total / count).numpy()

    @property
    def has_weights(self) -> bool:
        return bool((self.weight_count > 0).any())

    # -- state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"epochs": self.epochs, "labels": self.labels}
        for name in (*_FLOAT_SUMS, *_INT_COUNTS, *_LAST, "last_pred", "likely"):
            state[name] = getattr(self, name)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["labels"]) != len(self) or not torch.equal(state["labels"], self.labels):
            raise ValueError(
                "the saved signals are about other labels than this run's training set; the "
                "run's data changed since they were recorded"
            )
        self.epochs = int(state["epochs"])
        for name in (*_FLOAT_SUMS, *_INT_COUNTS, *_LAST, "last_pred", "likely"):
            setattr(self, name, state[name].clone())

    def save(
        self, path: str | os.PathLike[str], extra: dict[str, np.ndarray] | None = None
    ) -> None:
        """Atomically write the signals (plus ``extra`` per-sample columns) as ``.npz``."""
        arrays = {k: (v.numpy() if torch.is_tensor(v) else v) for k, v in self.state_dict().items()}
        arrays["format"] = np.array(SIGNALS_FORMAT)
        arrays["num_classes"] = np.array(self.num_classes)
        for key, value in (extra or {}).items():
            arrays[key] = np.asarray(value)
        with atomic_write(path, "wb") as f:
            np.savez(f, **arrays)

    @staticmethod
    def load(
        path: str | os.PathLike[str], data: bytes | None = None
    ) -> tuple[SampleSignals, dict[str, np.ndarray]]:
        """Read :meth:`save` output: the signals and the extra columns saved with them.

        ``data``: the file's bytes, already read (to parse exactly the bytes a caller
        fingerprinted, while a run may replace the file); ``path`` then only names it.

        Raises:
            FileNotFoundError: no such file (names what writes it).
            ValueError: the file is not an mwnet signals file, or is damaged.
        """
        path = Path(path)
        if data is None and not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: every mwnet run writes {SIGNALS_FILE} after each "
                "epoch; train (or resume) the run for at least one epoch first"
            )
        try:
            with np.load(path if data is None else io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path} is damaged or not a signals file ({err})") from None
        if str(arrays.get("format", "")) != SIGNALS_FORMAT:
            raise ValueError(f"{path} is not an mwnet signals file ({SIGNALS_FORMAT})")
        try:
            signals = SampleSignals(torch.from_numpy(arrays["labels"]), int(arrays["num_classes"]))
            state = {k: torch.from_numpy(np.asarray(arrays[k])) for k in signals.state_dict()}
            state["epochs"] = int(arrays["epochs"])
            signals.load_state_dict(state)
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"{path} is damaged: {err}") from None
        known = {*signals.state_dict(), "format", "num_classes"}
        return signals, {k: v for k, v in arrays.items() if k not in known}
