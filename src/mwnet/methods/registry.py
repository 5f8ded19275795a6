"""Methods by name, built from one flat options mapping, so configs and the CLI stay simple."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from mwnet.core import ClassAwareWeightNet
from mwnet.core.reducer import GradientReducer
from mwnet.methods.base import Method
from mwnet.methods.ce import CrossEntropy
from mwnet.methods.class_balanced import ClassBalanced
from mwnet.methods.finetune import Finetune
from mwnet.methods.focal import Focal
from mwnet.methods.l2rw import L2RW
from mwnet.methods.meta_weight_net import MetaWeightNet

METHODS: tuple[str, ...] = (
    "ce",
    "focal",
    "class-balanced",
    "l2rw",
    "finetune",
    "mwnet",
    "cmwnet",
    "mwnet-sl",
    "cmwnet-sl",
)
LABEL_CORRECTION_METHODS: tuple[str, ...] = ("mwnet-sl", "cmwnet-sl")
"""Weighting methods whose weight mixes the given label with a teacher's (CMW-Net-SL)."""
WEIGHTING_METHODS: tuple[str, ...] = ("mwnet", "cmwnet", *LABEL_CORRECTION_METHODS)
"""Methods that learn a weighting net: MW-Net's, or CMW-Net's class-aware one."""
COMPILABLE: tuple[str, ...] = ("ce", "focal", "class-balanced", *WEIGHTING_METHODS)
"""Methods that accept ``compile``: one forward and one backward per step, or the
weighting methods' ``fast`` mode (see :mod:`mwnet.core.compiled`)."""

_MWNET_OPTIONS: tuple[str, ...] = (
    "hypergrad",
    "head",
    "partial",
    "normalize",
    "virtual_step",
    "meta_interval",
    "meta_interval_schedule",
    "low_memory",
    "compile",
    "weight_hidden",
    "weight_depth",
    "weight_optimizer",
    "weight_lr",
    "weight_momentum",
    "weight_nesterov",
    "weight_decay",
    "weight_clusters",
    "weight_init",
)


def build_method(
    name: str,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    meta_batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    class_counts: torch.Tensor,
    options: Mapping[str, Any],
    reducer: GradientReducer | None = None,
    weight_net: nn.Module | None = None,
    soft_labels: Callable[[torch.Tensor], torch.Tensor] | None = None,
    soft_label_model: nn.Module | None = None,
) -> Method:
    """The training method ``name`` (one of :data:`METHODS`) for ``model`` and ``optimizer``.

    Args:
        meta_batches: endless iterator of clean ``(x_meta, y_meta)`` on the model's device;
            drawn from by ``l2rw`` and ``mwnet`` only.
        class_counts: training-set sample count per class (observed labels), shape (K,);
            used by ``class-balanced`` and ``cmwnet`` (its class clusters).
        options: method hyperparameters, each method reading its own and ignoring the rest
            (the config layer validates names): ``focal_gamma``; ``cb_beta``, ``cb_loss``;
            ``epochs`` (required by ``finetune``), ``finetune_epochs``, ``finetune_lr``;
            ``hypergrad`` (also ``l2rw``); ``head``, ``partial``, ``normalize``,
            ``virtual_step``, ``meta_interval``, ``meta_interval_schedule``,
            ``weight_net_freeze_epoch``, ``weight_net_freeze_tolerance``, ``low_memory``,
            ``weight_hidden``, ``weight_depth``, ``weight_init``,
            ``weight_optimizer``, ``weight_lr``, ``weight_momentum``, ``weight_nesterov``,
            ``weight_decay``, ``meta`` (false: ``weight_net`` frozen), ``mixup`` (-sl only)
            (``mwnet``, ``cmwnet``); ``weight_clusters`` (``cmwnet``); ``checks`` (all;
            default True); ``compile`` (the methods in :data:`COMPILABLE`: run the model
            through ``torch.compile``).
        reducer: data parallelism over a process group (every method); the batches passed
            to ``step`` and drawn from ``meta_batches`` must then be this rank's shards.
        weight_net: ``mwnet``/``cmwnet`` only: start from this weighting net (one learned
            in another run) instead of a fresh one; it must be of the method's kind.
        soft_labels: required by ``mwnet-sl``/``cmwnet-sl`` (label correction): a teacher's
            class probabilities for a batch's inputs.
        soft_label_model: the module ``soft_labels`` runs, if it has state that a step
            moves (an EMA teacher's BatchNorm statistics): restored when a step fails.

    Raises:
        ValueError: for an unknown name (listing the known ones) or a bad option value.
    """
    checks = bool(options.get("checks", True))
    common = {"checks": checks, "reducer": reducer}
    if options.get("compile") and name not in COMPILABLE:
        raise ValueError(
            f"compile is supported by {', '.join(COMPILABLE)}, not {name!r}; drop compile"
        )
    if options.get("compile") and name not in WEIGHTING_METHODS:
        model = torch.compile(model)  # a plain step: model(x), then one backward
    if name == "ce":
        return CrossEntropy(model, optimizer, **common)
    if name == "focal":
        return Focal(model, optimizer, gamma=options.get("focal_gamma", 1.0), **common)
    if name == "class-balanced":
        return ClassBalanced(
            model,
            optimizer,
            class_counts,
            beta=options.get("cb_beta", 0.9999),
            base_loss=options.get("cb_loss", "ce"),
            gamma=options.get("focal_gamma", 1.0),
            **common,
        )
    if name == "l2rw":
        return L2RW(
            model,
            optimizer,
            meta_batches,
            hypergrad=options.get("hypergrad", "fast"),
            **common,
        )
    if name == "finetune":
        return Finetune(
            model,
            optimizer,
            epochs=options.get("epochs"),
            finetune_epochs=options.get("finetune_epochs", 10),
            finetune_lr=options.get("finetune_lr", 1e-3),
            **common,
        )
    if name in WEIGHTING_METHODS:
        chosen = {k: options[k] for k in _MWNET_OPTIONS if k in options}
        class_aware = name.startswith("cmwnet")
        if weight_net is not None and isinstance(weight_net, ClassAwareWeightNet) != class_aware:
            kind = "loss-only (mwnet)" if class_aware else "class-aware (cmwnet)"
            raise ValueError(
                f"method {name} cannot start from a {kind} weighting net; use "
                f"method.name={'mwnet' if class_aware else 'cmwnet'} with it"
            )
        if (name in LABEL_CORRECTION_METHODS) != (soft_labels is not None):
            raise ValueError(
                f"{', '.join(LABEL_CORRECTION_METHODS)} need soft_labels (a teacher) and the "
                f"other methods take none; got method {name} with soft_labels="
                f"{'set' if soft_labels is not None else 'None'}"
            )
        return MetaWeightNet(
            model,
            optimizer,
            meta_batches,
            **chosen,
            class_counts=class_counts if class_aware else None,
            weight_net=weight_net,
            frozen=not options.get("meta", True),
            freeze_epoch=options.get("weight_net_freeze_epoch"),
            freeze_tolerance=options.get("weight_net_freeze_tolerance"),
            soft_labels=soft_labels,
            soft_label_model=soft_label_model,
            mixup=bool(options.get("mixup", False)),
            **common,
        )
    raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
