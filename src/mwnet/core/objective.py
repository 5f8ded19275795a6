"""The training objective as the meta step sees it: affine in the per-sample weights.

MW-Net minimises Σ_i c_i L_i. Label correction (CMW-Net-SL) minimises
Σ_i c_i L_i(y_i) + (1/n − c_i) L_i(p_i), with p_i a teacher's soft label: the weight moves
each sample between its given label and the teacher's. Both are

    J(θ; c) = Σ_i c_i A_i(θ) + mean_i B_i(θ),

affine in the coefficients c, so the meta step's identity ∂L_meta/∂c_i =
⟨∇L_meta(θ̂), −s ∇A_i⟩ holds with A_i in place of L_i, and one code path serves every such
objective: a loss function returns a :class:`WeightedLoss` instead of a tensor. The
weighting net still sees a per-sample loss of its own choosing (``weigh_by``: for label
correction, the loss on the given label).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mwnet.core.checks import check_per_sample


@dataclass(frozen=True)
class WeightedLoss:
    """J = Σ_i c_i · ``weighted``_i + mean_i ``unweighted``_i, over the terms of one batch.

    ``weigh_by`` is what the weighting net is fed (detached); None means ``weighted``.
    Usually there is one term per sample; an objective may have more (mixup: one per
    sample and label), and then says which label each term's weight is for
    (``weigh_labels``, for class-aware weighting nets). Under data parallelism the mean of
    ``unweighted`` is over the global batch's terms.
    """

    weighted: torch.Tensor
    """A_i, shape (n,): the part each sample's coefficient multiplies."""
    unweighted: torch.Tensor | None = None
    """B_i, shape (n,) or None: a part every sample contributes equally, averaged."""
    weigh_by: torch.Tensor | None = None
    """The per-sample loss the weighting net maps to a weight, shape (n,); None: A_i."""
    weigh_labels: torch.Tensor | None = None
    """The label of each term, for a weighting net that takes labels; None: the batch's."""

    @property
    def losses(self) -> torch.Tensor:
        """The per-sample losses the weights are computed from (and reported)."""
        return self.weighted if self.weigh_by is None else self.weigh_by

    def value(self, coefficients: torch.Tensor, unweighted_mean: torch.Tensor | None):
        """J for these coefficients, given the (possibly global) mean of ``unweighted``."""
        value = torch.dot(coefficients, self.weighted)
        return value if unweighted_mean is None else value + unweighted_mean


def label_correction_loss(
    logits: torch.Tensor, labels: torch.Tensor, soft_labels: torch.Tensor
) -> WeightedLoss:
    """v_i CE(f(x_i), y_i) + (1 − v_i) CE(f(x_i), p_i), as a :class:`WeightedLoss`.

    With ``normalize="mean"`` (c_i = v_i / n) the objective is the authors' batch mean of
    that mix; the weighting net sees CE on the given label. ``soft_labels`` (the teacher's
    probabilities, shape (n, K)) carry no gradient.
    """
    log_probs = torch.log_softmax(logits, dim=-1)
    given = -log_probs.gather(-1, labels.reshape(-1, 1)).squeeze(-1)
    teacher = -(soft_labels.detach() * log_probs).sum(-1)
    return WeightedLoss(weighted=given - teacher, unweighted=teacher, weigh_by=given)


def label_correction_mixup_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    soft_labels: torch.Tensor,
    partner: torch.Tensor,
    lam: float,
) -> WeightedLoss:
    """Label correction on a mixup batch, as the CMW-Net-SL authors train: the input
    λ x_i + (1 − λ) x_j (j = ``partner[i]``) is trained on
    λ [v CE(y_i) + (1 − v) CE(p_i)] + (1 − λ) [v' CE(y_j) + (1 − v') CE(p_j)],
    with a weight for each of its two labels, from that label's own loss.

    Two terms per sample, so 2n in all; the factor 2 makes ``normalize="mean"`` (c = v / 2n)
    give the authors' batch mean of that objective.
    """
    log_probs = torch.log_softmax(logits, dim=-1)
    soft = soft_labels.detach()
    parts = []
    for share, y, p in ((lam, labels, soft), (1.0 - lam, labels[partner], soft[partner])):
        given = -log_probs.gather(-1, y.reshape(-1, 1)).squeeze(-1)
        teacher = -(p * log_probs).sum(-1)
        parts.append((2 * share * (given - teacher), 2 * share * teacher, given, y))
    weighted, unweighted, given, ys = (torch.cat(column) for column in zip(*parts, strict=True))
    return WeightedLoss(weighted, unweighted, weigh_by=given, weigh_labels=ys)


def as_weighted_loss(out: torch.Tensor | WeightedLoss, n: int, which: str) -> WeightedLoss:
    """A loss function's output as a :class:`WeightedLoss`, every part checked to hold
    one value per term (per sample unless ``weigh_labels`` says otherwise; a reduced scalar
    is the usual mistake)."""
    if not isinstance(out, WeightedLoss):
        check_per_sample(out, n, which)
        return WeightedLoss(weighted=out)
    terms = n if out.weigh_labels is None else out.weigh_labels.shape[0]
    for name in ("weighted", "unweighted", "weigh_by", "weigh_labels"):
        part = getattr(out, name)
        if part is None and name != "weighted":
            continue
        if not isinstance(part, torch.Tensor) or tuple(part.shape) != (terms,):
            shape = tuple(part.shape) if isinstance(part, torch.Tensor) else type(part)
            per = "sample" if terms == n else "term (weigh_labels)"
            raise ValueError(
                f"loss_fn's WeightedLoss.{name} must hold one value per {per}, shape "
                f"({terms},) for this {which} batch, got {shape}"
            )
    return out
