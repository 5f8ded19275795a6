"""The Meta-Weight-Net step: weighting networks, virtual step and hypergradients."""

from mwnet.core.class_aware import ClassAwareWeightNet, cluster_by_count
from mwnet.core.reducer import GradientReducer
from mwnet.core.reweighter import MetaReweighter, StepResult, normalize_weights
from mwnet.core.weight_net import WEIGHT_INITS, WeightNet, start_flat

__all__ = [
    "WEIGHT_INITS",
    "ClassAwareWeightNet",
    "GradientReducer",
    "MetaReweighter",
    "StepResult",
    "WeightNet",
    "cluster_by_count",
    "normalize_weights",
    "start_flat",
]
