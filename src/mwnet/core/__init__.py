"""The Meta-Weight-Net step: weighting network, virtual step and hypergradients."""

from mwnet.core.reducer import GradientReducer
from mwnet.core.reweighter import MetaReweighter, StepResult, normalize_weights
from mwnet.core.weight_net import WeightNet

__all__ = ["GradientReducer", "MetaReweighter", "StepResult", "WeightNet", "normalize_weights"]
