"""mwnet: Meta-Weight-Net (Shu et al., NeurIPS 2019) for any PyTorch model.

A tiny network learns to map each training sample's loss to a weight, trained by
meta-learning on a small clean set while the classifier trains.
"""

from collections.abc import Sequence
from typing import Any

from mwnet._version import __version__  # the installed package's, recorded in every run
from mwnet.core import (
    ClassAwareWeightNet,
    MetaReweighter,
    StepResult,
    WeightNet,
    cluster_by_count,
    normalize_weights,
    start_flat,
)
from mwnet.label_issues import LabelIssues, find_label_issues
from mwnet.methods import MethodContext, MethodDescriptor, register_method
from mwnet.predict import LoadedModel, load_model
from mwnet.run.signals import EpochPredictions, SampleSignals
from mwnet.run.weight_net_file import SavedWeightNet, load_weight_net, save_weight_net


def fit(preset: str | None = None, overrides: Sequence[str] = (), **options: Any) -> Any:
    """Train the candidate methods, find the label issues, and ship the model chosen on a
    validation split of the noisy data: :func:`mwnet.fitting.pipeline.fit` (imported on
    first use: it needs the training extras, ``pip install 'mwnet[train]'``)."""
    from mwnet.fitting.pipeline import fit as run

    return run(preset, overrides, **options)


__all__ = [
    "ClassAwareWeightNet",
    "EpochPredictions",
    "LabelIssues",
    "LoadedModel",
    "MetaReweighter",
    "MethodContext",
    "MethodDescriptor",
    "SampleSignals",
    "SavedWeightNet",
    "StepResult",
    "WeightNet",
    "__version__",
    "cluster_by_count",
    "find_label_issues",
    "fit",
    "load_model",
    "load_weight_net",
    "normalize_weights",
    "register_method",
    "save_weight_net",
    "start_flat",
]
