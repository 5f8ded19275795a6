"""mwnet: Meta-Weight-Net (Shu et al., NeurIPS 2019) for any PyTorch model.

A tiny network learns to map each training sample's loss to a weight, trained by
meta-learning on a small clean set while the classifier trains.
"""

from mwnet.core import MetaReweighter, StepResult, WeightNet, normalize_weights

__version__ = "0.1.0"
__all__ = ["MetaReweighter", "StepResult", "WeightNet", "__version__", "normalize_weights"]
