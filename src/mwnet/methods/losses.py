"""Loss re-weightings of the baselines, as pure functions of per-sample cross-entropies."""

from __future__ import annotations

import torch


def check_focal_gamma(gamma: float) -> float:
    """γ < 0 would weight confident samples *more*, the opposite of a focal loss."""
    if not gamma >= 0:
        raise ValueError(f"focal_gamma must be >= 0, got {gamma}")
    return float(gamma)


def focal_losses(ce: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample focal loss −(1−p_t)^γ log p_t (Lin et al., 2017) from CE = −log p_t.

    Working from the cross-entropy keeps γ = 0 bit-for-bit equal to CE (the factor is
    exactly 1). ``1 − p_t`` is computed as ``−expm1(−CE)`` (accurate for confident samples)
    and kept above the smallest normal number, so that γ < 1 gives a finite gradient even
    when p_t rounds to 1.
    """
    gamma = check_focal_gamma(gamma)
    one_minus_p = (-torch.expm1(-ce)).clamp_min(torch.finfo(ce.dtype).tiny)
    return one_minus_p.pow(gamma) * ce


def class_balanced_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-class weights (1 − β) / (1 − β^{n_c}) from the "effective number" of samples.

    Cui et al. (2019): a class with n_c samples covers about (1 − β^{n_c}) / (1 − β) distinct
    examples, and is weighted by the inverse. β = 0 weighs all classes alike, β → 1 by
    inverse frequency. Weights are normalised to sum to the number of classes that have
    samples, so β = 0 gives exactly 1 everywhere (plain CE); a class without samples gets 0
    (it never appears in a batch, and must not inflate the others through the normalisation).
    Computed in float64; the result is float64.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"cb_beta must lie in [0, 1), got {beta}")
    counts = torch.as_tensor(counts).detach().to("cpu", torch.float64)
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(
            f"class_counts must be a non-empty vector, got shape {tuple(counts.shape)}"
        )
    if bool((counts < 0).any()) or not bool(torch.isfinite(counts).all()):
        raise ValueError(f"class_counts must be finite and >= 0, got {counts.tolist()}")
    present = counts > 0
    if not bool(present.any()):
        raise ValueError("class_counts has no class with samples")
    effective = torch.where(present, 1.0 - torch.pow(beta, counts), torch.ones_like(counts))
    weights = torch.where(present, (1.0 - beta) / effective, torch.zeros_like(counts))
    return weights * (present.sum() / weights.sum())


def forward_corrected_losses(
    logits: torch.Tensor, labels: torch.Tensor, log_transition: torch.Tensor
) -> torch.Tensor:
    """Per-sample −log p(noisy label y | x) = −log Σ_i softmax(logits)_i · T[i, y].

    The forward loss correction of GLC (T = the estimated corruption matrix C) and the
    S-Model's noise adaptation layer (T = the row-softmax of its learned matrix). Taken
    as a log-sum-exp of log softmax(logits)_i + log T[i, y], so that neither a confident
    prediction nor a small entry of T underflows before the log; ``log_transition`` is
    log T (K, K), and may hold −inf where T is 0.
    """
    columns = log_transition.to(logits.dtype).T[labels]  # row t: log T[:, y_t]
    return -torch.logsumexp(torch.log_softmax(logits, dim=1) + columns, dim=1)
