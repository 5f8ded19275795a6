"""Training methods behind one interface: the paper's baselines and Meta-Weight-Net.

The training loop builds one with :func:`build_method` and calls ``method.step(x, y)`` per
batch, asking ``method.source(epoch)`` which batches each epoch uses; everything a method
needs beyond the model and optimizer (a meta-batch stream, class counts, its own
hyperparameters) is handed over once, at construction. Each method is registered with a
:class:`MethodDescriptor` (its option groups, what it reads), which is all the rest of
mwnet knows of it.
"""

from mwnet.methods.base import Method, StepOutput
from mwnet.methods.bootstrap import BootstrapHard, BootstrapSoft
from mwnet.methods.ce import CrossEntropy
from mwnet.methods.class_balanced import ClassBalanced
from mwnet.methods.co_teaching import CoTeaching
from mwnet.methods.d2l import D2L
from mwnet.methods.descriptor import Knob, MethodContext, MethodDescriptor, SamplePass
from mwnet.methods.dividemix import DivideMix, DivideMixOptions
from mwnet.methods.elr import ELR
from mwnet.methods.finetune import Finetune
from mwnet.methods.focal import Focal
from mwnet.methods.gce import GeneralizedCrossEntropy
from mwnet.methods.glc import GoldLossCorrection
from mwnet.methods.l2rw import L2RW
from mwnet.methods.mentornet import MentorNetPD
from mwnet.methods.mentornet_dd import MentorNetDD
from mwnet.methods.meta_weight_net import MetaWeightNet
from mwnet.methods.mlc import MetaLabelCorrection, MlcOptions
from mwnet.methods.registry import (
    LABEL_CORRECTION_METHODS,
    METHODS,
    WEIGHTING_METHODS,
    build_method,
    method_descriptor,
    method_names,
    register_method,
)
from mwnet.methods.s_model import SModel
from mwnet.methods.sce import SymmetricCrossEntropy
from mwnet.methods.self_paced import SelfPaced

__all__ = [
    "D2L",
    "ELR",
    "L2RW",
    "LABEL_CORRECTION_METHODS",
    "METHODS",
    "WEIGHTING_METHODS",
    "BootstrapHard",
    "BootstrapSoft",
    "ClassBalanced",
    "CoTeaching",
    "CrossEntropy",
    "DivideMix",
    "DivideMixOptions",
    "Finetune",
    "Focal",
    "GeneralizedCrossEntropy",
    "GoldLossCorrection",
    "Knob",
    "MentorNetDD",
    "MentorNetPD",
    "MetaLabelCorrection",
    "MetaWeightNet",
    "Method",
    "MethodContext",
    "MethodDescriptor",
    "MlcOptions",
    "SModel",
    "SamplePass",
    "SelfPaced",
    "StepOutput",
    "SymmetricCrossEntropy",
    "build_method",
    "method_descriptor",
    "method_names",
    "register_method",
]
