"""The one map from the flat method keys of mwnet before option groups to the grouped ones.

Configs saved by earlier runs (``method.normalize``, ``method.focal_gamma``, ...) and
options given to :func:`mwnet.methods.build_method` in that form are read through it. A
flat key with several places (``focal_gamma`` was read by focal and class-balanced) goes
to the group of the chosen method.
"""

from __future__ import annotations

FLAT_KEYS: dict[str, tuple[str, ...]] = {
    "hypergrad": ("mwnet.hypergrad", "l2rw.hypergrad"),
    "head": ("mwnet.head",),
    "partial": ("mwnet.partial",),
    "low_memory": ("mwnet.low_memory",),
    "normalize": ("mwnet.normalize",),
    "virtual_step": ("mwnet.virtual_step",),
    "meta_interval": ("mwnet.meta_interval",),
    "meta_interval_schedule": ("mwnet.meta_interval_schedule",),
    "weight_net_freeze_epoch": ("mwnet.freeze_epoch",),
    "weight_net_freeze_tolerance": ("mwnet.freeze_tolerance",),
    "weight_hidden": ("mwnet.net_hidden",),
    "weight_depth": ("mwnet.net_depth",),
    "weight_init": ("mwnet.net_init",),
    "weight_optimizer": ("mwnet.net_optimizer",),
    "weight_lr": ("mwnet.net_lr",),
    "weight_momentum": ("mwnet.net_momentum",),
    "weight_nesterov": ("mwnet.net_nesterov",),
    "weight_decay": ("mwnet.net_decay",),
    "weight_net_from": ("mwnet.net_from",),
    "meta": ("mwnet.meta",),
    "weight_clusters": ("cmwnet.clusters",),
    "mixup": ("label_correction.mixup",),
    "teacher_decay": ("teacher.decay",),
    "teacher_freeze_epoch": ("teacher.freeze_epoch",),
    "focal_gamma": ("focal.gamma", "class_balanced.gamma"),
    "cb_beta": ("class_balanced.beta",),
    "cb_loss": ("class_balanced.loss",),
    "finetune_epochs": ("finetune.epochs",),
    "finetune_lr": ("finetune.lr",),
}
"""Old ``method.<key>`` -> the new ``method.<group>.<field>`` it may be (``method.name``,
``method.compile`` and ``method.warmup_epochs`` keep their names)."""
