"""MentorNet's mentor (Jiang et al., ICML 2018): a small network that reads what the student
knows of a sample (its loss, how far the loss lies above a moving percentile of the batch
losses, its label, how far training is) and says how much the sample should count.

The data-driven mentor is fitted to samples whose labels are known to be clean or wrong,
so its weight is its estimate of the chance that a label is clean. This module holds the
network, the one function that builds its input features (so that the features it is
trained on and the features it later weighs are the same by construction), the synthetic
corruption of a trusted set's labels, and the fit.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

EPOCH_ROWS = 100
"""Rows of the epoch embedding: training progress in percent, 0 .. 99."""

MAX_GRAD_NORM = 5.0
"""The fit clips the gradient to this global norm, as the authors' mentor training does."""


@dataclass(frozen=True)
class MentorShape:
    """The mentor's sizes; the defaults are the authors' (``utils.mentornet_nn``)."""

    label_rows: int = 2
    """rows of the label embedding (the authors': 2, for a label that is 0 or 1)"""
    label_dim: int = 2
    epoch_dim: int = 5
    lstm_hidden: int = 1
    """units of each direction of the bidirectional LSTM"""
    fc_hidden: int = 20


def mentor_features(
    losses: torch.Tensor, threshold: float, labels: torch.Tensor, percent: int
) -> torch.Tensor:
    """The mentor's input, one row per sample: (loss, loss − λ, label, percent of
    training), float64 on the CPU, no gradient.

    λ is the moving average of the batch losses' percentile; ``percent`` an integer in
    0 .. 99. Every place that feeds the mentor (its fit and the steps it weighs) builds its
    rows here.
    """
    losses = losses.detach().to("cpu", torch.float64).reshape(-1)
    labels = labels.detach().to("cpu", torch.float64).reshape(-1)
    if labels.shape != losses.shape:
        raise ValueError(f"mentor features: {len(losses)} losses but {len(labels)} labels")
    epoch = torch.full_like(losses, float(percent))
    return torch.stack([losses, losses - float(threshold), labels, epoch], dim=1)


class Mentor(nn.Module):
    """The authors' mentor network, returning the logit of each sample's weight.

    * The loss and the loss difference, a history of one step, go through a bidirectional
      LSTM from a zero state; its final *cell* states of both directions (the authors take
      ``out_state[0]``, the cell state c, not the output h) are the loss features. With
      one step and a zero state, c = σ(i)·tanh(g) of the input gates: the forget and
      output gates play no part.
    * The label indexes a trainable embedding; the percent of training, clipped to 99,
      indexes a fixed random one (not trained, as the authors'), a buffer here.
    * Their concatenation (label, epoch, LSTM) goes through a tanh layer and a linear
      output without bias: the authors' output layer adds its bias to the weight matrix
      (``matmul(fc_1, W + b)``), which is another weight matrix, so their function has
      no output bias either.
    """

    def __init__(self, shape: MentorShape = MentorShape()) -> None:
        super().__init__()
        self.shape = shape
        self.label_embedding = nn.Embedding(shape.label_rows, shape.label_dim)
        self.register_buffer("epoch_embedding", torch.zeros(EPOCH_ROWS, shape.epoch_dim))
        self.lstm = nn.LSTM(2, shape.lstm_hidden, batch_first=True, bidirectional=True)
        width = shape.label_dim + shape.epoch_dim + 2 * shape.lstm_hidden
        self.hidden = nn.Linear(width, shape.fc_hidden)
        self.out = nn.Linear(shape.fc_hidden, 1, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits, shape (n,), of the rows of :func:`mentor_features`."""
        sequence = features[:, None, 0:2]  # (n, 1 step, loss and loss difference)
        labels = features[:, 2].long()
        epochs = features[:, 3].long().clamp(0, EPOCH_ROWS - 1)
        _, (_, cell) = self.lstm(sequence)  # cell: (2 directions, n, hidden)
        lstm = torch.cat([cell[0], cell[1]], dim=1)
        joint = torch.cat([self.label_embedding(labels), self.epoch_embedding[epochs], lstm], 1)
        return self.out(torch.tanh(self.hidden(joint)))[:, 0]


def _glorot(tensor: torch.Tensor, fan_in: int, fan_out: int, g: torch.Generator) -> None:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    tensor.uniform_(-limit, limit, generator=g)


def new_mentor(shape: MentorShape, seed: int) -> Mentor:
    """A mentor in float64 on the CPU, initialised as the authors' from ``seed`` alone
    (the global random state does not move): Glorot-uniform embeddings and LSTM kernels
    (the kernel's fans those of TensorFlow's one matrix of input and state by four gates),
    zero LSTM biases, standard normal fully connected weights and biases."""
    with torch.random.fork_rng(devices=[]):  # the layers' own initialisation draws
        mentor = Mentor(shape).double()
    g = torch.Generator().manual_seed(zlib.crc32(f"mentornet-dd/mentor/{seed}".encode()))
    h = shape.lstm_hidden
    with torch.no_grad():
        _glorot(mentor.label_embedding.weight, shape.label_rows, shape.label_dim, g)
        _glorot(mentor.epoch_embedding, EPOCH_ROWS, shape.epoch_dim, g)
        for name, p in mentor.lstm.named_parameters():
            if name.startswith("weight"):
                _glorot(p, 2 + h, 4 * h, g)
            else:
                p.zero_()
        mentor.hidden.weight.normal_(0.0, 1.0, generator=g)
        mentor.hidden.bias.normal_(0.0, 1.0, generator=g)
        mentor.out.weight.normal_(0.0, 1.0, generator=g)
    return mentor


def corrupt_for_mentor(
    labels: torch.Tensor, classes: int, rate: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The trusted labels with round(rate·m) of them (m = their number) replaced by another
    class drawn uniformly, and which labels stayed clean. Drawn from ``seed`` alone.

    Returns:
        (labels as the mentor sees them, int64; clean, bool), both of shape (m,).
    """
    if classes < 2:
        raise ValueError(f"the mentor's synthetic noise needs at least 2 classes, got {classes}")
    labels = labels.detach().to("cpu", torch.long).reshape(-1)
    m = len(labels)
    g = torch.Generator().manual_seed(zlib.crc32(f"mentornet-dd/noise/{seed}".encode()))
    count = min(m, math.floor(rate * m + 0.5))
    chosen = torch.randperm(m, generator=g)[:count]
    shift = torch.randint(1, classes, (count,), generator=g)  # never 0: another class
    given = labels.clone()
    given[chosen] = (labels[chosen] + shift) % classes
    return given, given == labels


@dataclass(frozen=True)
class MentorFit:
    """How the fit ended, on its own training samples."""

    loss: float
    """the binary cross-entropy after the last step"""
    clean_weight: float
    """the mean weight of the samples whose label is clean"""
    corrupted_weight: float
    """the mean weight of those whose label was corrupted (NaN if none was)"""


def fit_mentor(
    mentor: Mentor, features: torch.Tensor, clean: torch.Tensor, *, steps: int, lr: float
) -> MentorFit:
    """Fit ``mentor`` to say whether a label is clean: ``steps`` full-batch Adam steps on
    the binary cross-entropy between sigmoid(mentor(features)) and ``clean``, the gradient
    clipped to :data:`MAX_GRAD_NORM`. Deterministic: the same inputs give the same weights.
    """
    target = clean.to(features.dtype)
    parameters = [p for p in mentor.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=lr)
    mentor.train()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(mentor(features), target)
        loss.backward()
        nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
        optimizer.step()
    with torch.no_grad():
        logits = mentor(features)
        v = torch.sigmoid(logits)
        loss = F.binary_cross_entropy_with_logits(logits, target)
    wrong = ~clean
    return MentorFit(
        loss=float(loss),
        clean_weight=float(v[clean].mean()) if bool(clean.any()) else math.nan,
        corrupted_weight=float(v[wrong].mean()) if bool(wrong.any()) else math.nan,
    )
