"""What a weighting net reads about each sample: its loss, as in MW-Net, and optionally its
given class and how it has fared in training so far.

MW-Net's net maps a sample's training loss to its weight. On noise made the way annotators
err (an ambiguous image given the label of the class it resembles) a wrong label's loss is
often no higher than a hard clean sample's, and the loss-only curve can end up raising the
wrong labels. How a sample behaves over training separates them better: a mislabelled
sample's given-label logit trails another class's for most of training (a negative area
under the margin, Pleiss et al., NeurIPS 2020), its given label is rarely the prediction,
and its loss stays high relative to its class. These inputs, by name:

* ``loss``: the sample's training loss now, detached (the authors feed ``cost.data``): the
  only input of MW-Net's net, and the default.
* ``class``: the one-hot of the given label (``num_classes`` columns). CMW-Net's
  class-aware net does not read this: it picks one of its heads by the label's size
  cluster; ``class`` gives any net (CMW-Net's too) a column per class instead.
* ``loss_ema``, ``margin``, ``confidence``, ``agreement``: exponential moving averages,
  per training sample, over the sample's visits, of the loss, the logit margin
  ``z_y − max_{k≠y} z_k``, the softmax probability of the given label ``p_y``, and
  ``1[z_y > max_{k≠y} z_k]`` (the given label is the unique top prediction; a tie counts
  as disagreement). Each row starts at the sample's first observation and then moves as
  ``row ← d·row + (1 − d)·value``; the current visit counts (the table is updated with the
  step's own training forward before the weights are computed). They need each sample's
  position in the training set (``index``).
* ``loss_history``: the sample's training losses at its last ``history`` visits (K
  columns, oldest first, the current visit last), after MROLS (Meta Reweighting via Loss
  Sequences, from "Learning to Reweight Samples with Offline Loss Sequence";
  code: Neronjust2017/MROLS). A wrong label's loss stays high epoch after epoch while a
  hard clean sample's falls once the model learns it, so the sequence tells apart what one
  loss value cannot. Each visit shifts the row left by one and writes the visit's loss in
  the last column; a sample's first visit fills every column with its loss (replicate
  padding: until a sample has K visits, its oldest known loss stands for the ones it has
  not had, so a young sample looks like one whose loss never moved, not like one whose
  loss was 0). With ``history=1`` the input is the loss itself. Needs ``index``.
  Departures from the authors' code, which record each sample's loss at every visit
  (training forward, before the update, as here) in separate plain cross-entropy runs,
  average three seeds' sequences and feed the whole fixed sequence (one value per epoch of
  those runs) to a 1-D convolutional net (two 16-channel convolutions of width 5, a
  max-pool, a 16-unit layer): here the sequence is this run's own, online, over the last
  K visits, and it is read by the same MLP as every other input (so it combines with them
  and a net is saved, reused and frozen like any other). The losses stay raw, as the
  authors' averaged sequence is (their script loads the unnormalised file).
* ``loss_rank``: the loss's rank among the batch's samples with the same given label, in
  [0, 1]: (number with a smaller loss + half the others with an equal one) / (m − 1) for a
  class with m samples in the batch; 1/2 for a sample alone in its class. Under data
  parallelism the batch is the global batch.

Scaling: fixed transforms, no running statistics. Every input is already on one of two
scales: the loss, its average, its sequence and the margin in nats or logit units (the
scale of the authors' loss input, which must stay raw for ``inputs=[loss]`` to be MW-Net's
net bit for bit), and the other inputs in [0, 1]. Running statistics would make an input's meaning
drift over training, so the curve learned at one epoch would be applied to differently
scaled inputs at the next, and a net reused frozen would need the source run's statistics
of its last epoch, which describe the end of training, not the start. The transform of
each input is recorded with a saved net (:data:`TRANSFORMS`), so a future change of them
cannot be applied silently to an old net.

Constants in the hypergradient: every input is computed from detached values, exactly as
the authors detach the loss, so the meta gradient differentiates the weights through the
weighting net's parameters only; the inputs enter as given numbers. The weighting net's
hypergradient is then exact *given the inputs*, in every hypergradient mode.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from mwnet.core.reducer import GradientReducer

WeightInput = Literal[
    "loss", "class", "loss_ema", "margin", "confidence", "agreement", "loss_history", "loss_rank"
]
WEIGHT_INPUTS: tuple[str, ...] = typing.get_args(WeightInput)
"""Every input a weighting net may read (see the module docstring)."""
DYNAMIC_INPUTS: tuple[str, ...] = ("loss_ema", "margin", "confidence", "agreement")
"""Averages kept per training sample: they need each sample's position (``index``)."""
HISTORY_INPUTS: tuple[str, ...] = ("loss_history",)
"""Sequences kept per training sample: they need each sample's position (``index``)."""
BATCH_INPUTS: tuple[str, ...] = ("loss_rank",)
"""Computed over the (global) batch."""
LOSS_ONLY: tuple[str, ...] = ("loss",)
"""MW-Net's net: the loss alone."""
DEFAULT_DECAY = 0.9
"""The averages' decay d: each sample is seen once an epoch, so about the last ten epochs."""
DEFAULT_HISTORY = 10
"""K, the visits ``loss_history`` spans: each sample is seen once an epoch, so the last ten
epochs, the horizon of the averages' default decay."""
TRANSFORMS: dict[str, str] = {name: "identity" for name in WEIGHT_INPUTS} | {"class": "one-hot"}
"""How each input reaches the net: as it is, or (``class``) as a one-hot row."""


def check_inputs(inputs: Sequence[str] | str, prefix: str = "") -> tuple[str, ...]:
    """The inputs as a tuple of known, distinct names, in the given order.

    Raises:
        ValueError: an empty list, an unknown name (listing the valid ones) or a repeated
            one (``prefix`` goes before ``inputs`` in the message, e.g. ``method.mwnet.``).
    """
    if isinstance(inputs, str):
        inputs = [inputs]
    names = tuple(str(n) for n in inputs)
    if not names:
        raise ValueError(
            f"{prefix}inputs is empty; a weighting net reads at least one of "
            f"{', '.join(WEIGHT_INPUTS)} (MW-Net's: [loss])"
        )
    for name in names:
        if name not in WEIGHT_INPUTS:
            raise ValueError(
                f"{prefix}inputs: unknown input {name!r}; choose from {', '.join(WEIGHT_INPUTS)}"
            )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{prefix}inputs names {', '.join(repeated)} more than once")
    return names


def check_decay(decay: float, prefix: str = "") -> float:
    """d in [0, 1): 1 would never move a row from its first observation."""
    if not 0.0 <= float(decay) < 1.0:
        raise ValueError(f"{prefix}dynamics_decay must lie in [0, 1), got {decay}")
    return float(decay)


def check_history(history: int, prefix: str = "") -> int:
    """K >= 1 visits (a whole number: it is a count of columns)."""
    if isinstance(history, bool) or int(history) != history or int(history) < 1:
        raise ValueError(f"{prefix}history must be a whole number of visits >= 1, got {history!r}")
    return int(history)


def reads_dynamics(inputs: Sequence[str]) -> bool:
    """Whether the inputs include an average kept per training sample (needs ``index``)."""
    return any(n in DYNAMIC_INPUTS for n in inputs)


def reads_history(inputs: Sequence[str]) -> bool:
    """Whether the inputs include a loss sequence kept per training sample."""
    return any(n in HISTORY_INPUTS for n in inputs)


def per_sample(inputs: Sequence[str]) -> bool:
    """Whether the inputs keep a row per training sample (an average or a sequence): such
    a net needs ``num_samples`` and each batch's ``index``."""
    return reads_dynamics(inputs) or reads_history(inputs)


def input_width(inputs: Sequence[str], num_classes: int | None, history: int | None = None) -> int:
    """Columns of the net's input: one per input, ``num_classes`` for ``class``, ``history``
    for ``loss_history``."""
    if "class" in inputs and (num_classes is None or int(num_classes) < 1):
        raise ValueError(
            "the input 'class' is a one-hot row of the given label: the net needs num_classes"
        )
    if reads_history(inputs) and history is None:
        raise ValueError(
            "the input 'loss_history' is a sequence of losses: the net needs history (its length)"
        )
    widths = {"class": num_classes, "loss_history": history}
    return sum(int(widths.get(n) or 1) for n in inputs)


def describe(inputs: Sequence[str], num_classes: int | None, history: int | None = None) -> str:
    """The inputs in words, e.g. ``loss, margin, class (10 columns)``."""
    words = {
        "class": f"class ({num_classes} columns)",
        "loss_history": f"loss_history ({history} visits)",
    }
    return ", ".join(words.get(n, n) for n in inputs)


def input_matrix(x: torch.Tensor, inputs: Sequence[str], width: int, net: str) -> torch.Tensor:
    """A net's input as an ``(n, width)`` matrix: per-sample losses of shape (n,) or (n, 1)
    for a loss-only net, else the feature matrix itself."""
    if width == 1 and x.dim() == 1:
        return x.unsqueeze(1)
    if x.dim() == 2 and x.shape[1] == width:
        return x
    if tuple(inputs) == LOSS_ONLY:
        raise ValueError(
            f"{net} takes per-sample losses of shape (n,) or (n, 1), got {tuple(x.shape)}"
        )
    raise ValueError(
        f"{net} reads {width} columns per sample ({', '.join(inputs)}): shape (n, {width}), "
        f"got {tuple(x.shape)}"
    )


def rank_within_class(losses: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each loss's rank among the losses with the same label, in [0, 1] (ties share the
    mean rank; 1/2 for a label that occurs once). O(n²) comparisons: a batch is small."""
    same = labels[:, None] == labels[None, :]
    below = ((losses[None, :] < losses[:, None]) & same).sum(1)
    equal = ((losses[None, :] == losses[:, None]) & same).sum(1) - 1  # less the sample itself
    others = same.sum(1) - 1
    rank = (below.to(losses.dtype) + 0.5 * equal.to(losses.dtype)) / others.clamp_min(1)
    return torch.where(others > 0, rank, torch.full_like(rank, 0.5))


def observe(
    output: Any, labels: torch.Tensor, losses: torch.Tensor, names: Sequence[str]
) -> torch.Tensor:
    """This visit's value of each average in ``names``, shape (n, len(names)), detached:
    the loss, and from the logits the margin, the given label's probability and whether it
    is the unique top prediction."""
    n = labels.shape[0]
    dtype = losses.dtype
    columns: dict[str, torch.Tensor] = {"loss_ema": losses.detach()}
    if any(name != "loss_ema" for name in names):
        if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != n:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            raise ValueError(
                "the inputs margin, confidence and agreement read the model's logits, shape "
                f"({n}, classes), but the model returned {got}; use loss_ema and loss_rank"
            )
        z = output.detach().to(dtype)
        given = z.gather(1, labels[:, None]).squeeze(1)
        others = z.scatter(1, labels[:, None], float("-inf")).amax(1)
        columns["margin"] = given - others
        columns["confidence"] = F.softmax(z, dim=1).gather(1, labels[:, None]).squeeze(1)
        columns["agreement"] = (given > others).to(dtype)
    return torch.stack([columns[name] for name in names], 1)


def push_loss(old: torch.Tensor, loss: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """The loss sequences after this visit, shape (n, K): each seen row shifted left by one
    with ``loss`` written last; an unseen sample's row is its loss in every column.

    ``old``: the rows before the visit (n, K); ``loss``: the visit's losses (n,), detached;
    ``seen``: whether each sample had a visit before (n,).
    """
    now = loss[:, None]
    shifted = torch.cat([old[:, 1:], now], 1)
    return torch.where(seen[:, None], shifted, now.expand(-1, old.shape[1]))


@dataclass
class PendingRows:
    """New rows of the averages, written once the step that computed them succeeded."""

    index: torch.Tensor
    rows: torch.Tensor


class WeightInputs:
    """The inputs of one weighting net for each training batch, and the per-sample table
    of the averages and the loss sequence among them.

    Args:
        inputs: names from :data:`WEIGHT_INPUTS`, in the order of the net's columns.
        num_classes: the one-hot width of ``class``.
        num_samples: rows of the table (the training set's size); needed by
            :data:`DYNAMIC_INPUTS` and :data:`HISTORY_INPUTS`.
        decay: the averages' d.
        history: K, the visits of ``loss_history``.
        dtype, device: of the table and of the inputs built.
        reducer: data parallelism: the table rows of every rank's samples are gathered
            and written on every rank (so the ranks keep identical tables), and
            ``loss_rank`` ranks within the global batch; one all-gather a step.
        checks: validate ``index`` (one host sync).
    """

    def __init__(
        self,
        inputs: Sequence[str],
        *,
        num_classes: int | None = None,
        num_samples: int | None = None,
        decay: float = DEFAULT_DECAY,
        history: int = DEFAULT_HISTORY,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        reducer: GradientReducer | None = None,
        checks: bool = True,
    ) -> None:
        self.names = check_inputs(inputs)
        self.num_classes = num_classes
        self.dynamic = tuple(n for n in self.names if n in DYNAMIC_INPUTS)
        self.decay = check_decay(decay)
        self.history = check_history(history) if reads_history(self.names) else 0
        """K, the columns of the loss sequence (0 without ``loss_history``)."""
        input_width(self.names, num_classes, self.history or None)  # class needs num_classes
        self.dtype = dtype
        self.reducer = reducer
        self.checks = checks
        self.kept = self.dynamic + tuple(n for n in self.names if n in HISTORY_INPUTS)
        """The inputs kept per training sample, in the order of the table's columns."""
        self.table: torch.Tensor | None = None
        """One row per training sample in training-set order: one column per average, then
        the K losses of the sequence, oldest first."""
        self.seen: torch.Tensor | None = None
        """Whether each sample has been observed (its row holds its averages and sequence)."""
        if self.kept:
            if num_samples is None or int(num_samples) < 1:
                raise ValueError(
                    f"the inputs {', '.join(self.kept)} are kept per training sample: "
                    "pass num_samples (the training set's size)"
                )
            columns = len(self.dynamic) + self.history
            self.table = torch.zeros((int(num_samples), columns), dtype=dtype)
            self.table = self.table.to(device)
            self.seen = torch.zeros(int(num_samples), dtype=torch.bool, device=device)

    @property
    def loss_only(self) -> bool:
        return self.names == LOSS_ONLY

    @property
    def needs_index(self) -> bool:
        return bool(self.kept)

    def batch(
        self,
        output: Any,
        losses: torch.Tensor,
        labels: torch.Tensor,
        index: torch.Tensor | None,
    ) -> tuple[torch.Tensor, PendingRows | None]:
        """The net's input for a batch, detached, and the table rows to write after the step.

        ``losses`` are what the ``loss`` input is (the per-sample training losses);
        ``labels`` the given labels. A loss-only net gets ``losses.detach()`` itself, of
        shape (n,), as MW-Net's always did; any other an ``(n, width)`` matrix.
        """
        losses = losses.detach()
        if self.loss_only:
            return losses, None
        n = labels.shape[0]
        if losses.shape != (n,):
            raise ValueError(
                f"the inputs {', '.join(self.names)} read one loss per sample, but the "
                f"objective has {losses.shape[0]} terms for {n} samples (mixup gives two); "
                "use inputs=[loss] or [loss, class] there"
            )
        values = losses.to(self.dtype)
        pending, rows = None, None
        averages = len(self.dynamic)
        if self.kept:
            index = self._index(index, n, values.device)
            assert self.table is not None and self.seen is not None
            old, seen = self.table[index], self.seen[index]
            parts = []
            if self.dynamic:
                observed = observe(output, labels, values, self.dynamic)
                moved = self.decay * old[:, :averages] + (1.0 - self.decay) * observed
                parts.append(torch.where(seen[:, None], moved, observed))
            if self.history:
                parts.append(push_loss(old[:, averages:], values, seen))
            rows = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
            pending = PendingRows(index, rows)
        ranks = None
        if "loss_rank" in self.names:
            everyone_losses, everyone_labels, offset = values, labels, 0
            if self.reducer is not None:
                everyone_losses, everyone_labels, offset, pending = self._gather(
                    values, labels, pending
                )
            ranks = rank_within_class(everyone_losses, everyone_labels)[offset : offset + n]
        elif self.reducer is not None and pending is not None:
            _, _, _, pending = self._gather(values, labels, pending)
        columns = []
        for name in self.names:
            if name == "loss":
                columns.append(values[:, None])
            elif name == "class":
                assert self.num_classes is not None
                columns.append(F.one_hot(labels, self.num_classes).to(self.dtype))
            elif name == "loss_rank":
                assert ranks is not None
                columns.append(ranks[:, None])
            elif name == "loss_history":
                assert rows is not None
                columns.append(rows[:, averages:])
            else:
                assert rows is not None
                columns.append(rows[:, self.dynamic.index(name), None])
        return torch.cat(columns, 1), pending

    def _index(self, index: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
        if index is None:
            raise ValueError(
                f"the inputs {', '.join(self.kept)} are kept per training sample: "
                "pass index= (each sample's position in the training set) to step"
            )
        index = torch.as_tensor(index, device=device)
        if self.checks:
            assert self.table is not None
            if index.dtype.is_floating_point or index.dtype == torch.bool or index.shape != (n,):
                raise ValueError(
                    f"index must hold one integer position per sample, shape ({n},); got "
                    f"{index.dtype} of shape {tuple(index.shape)}"
                )
            size = self.table.shape[0]
            bad = (index < 0) | (index >= size)
            if bool(bad.any()):
                at = int(bad.nonzero()[0])
                raise ValueError(
                    f"index {int(index[at])} at position {at} lies outside the training set "
                    f"of {size} samples"
                )
            if len(torch.unique(index)) != n:
                raise ValueError("index repeats a sample; each sample may appear once a batch")
        return index.long()

    def _gather(
        self, losses: torch.Tensor, labels: torch.Tensor, pending: PendingRows | None
    ) -> tuple[torch.Tensor, torch.Tensor, int, PendingRows | None]:
        """Every rank's losses, labels and new rows, in rank order, in one float64
        all-gather (positions, labels and the rows' values are exact there)."""
        assert self.reducer is not None
        parts = [labels.to(torch.float64)[:, None], losses.to(torch.float64)[:, None]]
        if pending is not None:
            parts += [pending.index.to(torch.float64)[:, None], pending.rows.to(torch.float64)]
        every, sizes = self.reducer.gather(torch.cat(parts, 1), "weight_inputs")
        offset = sum(sizes[: self.reducer.rank])
        if pending is not None:
            pending = PendingRows(every[:, 2].long(), every[:, 3:].to(self.dtype))
        return every[:, 1].to(losses.dtype), every[:, 0].long(), offset, pending

    def commit(self, pending: PendingRows | None) -> None:
        """Write the rows of a step that succeeded."""
        if pending is None:
            return
        assert self.table is not None and self.seen is not None
        self.table[pending.index] = pending.rows.to(self.table.dtype)
        self.seen[pending.index] = True

    def state_dict(self) -> dict[str, Any]:
        """The table (empty when no input is kept per sample)."""
        if self.table is None or self.seen is None:
            return {}
        return {"table": self.table.clone(), "seen": self.seen.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.table is None or self.seen is None:
            return
        table = state.get("table")
        if table is None or tuple(table.shape) != tuple(self.table.shape):
            got = "none" if table is None else f"{tuple(table.shape)}"
            columns = [*self.dynamic] + ([f"{self.history} losses"] if self.history else [])
            raise ValueError(
                f"the saved per-sample averages are {got}, but this run keeps "
                f"{tuple(self.table.shape)} (samples x {', '.join(columns)}): the run "
                "was saved with other inputs, another history or another training set"
            )
        self.table.copy_(table)
        self.seen.copy_(state["seen"])
