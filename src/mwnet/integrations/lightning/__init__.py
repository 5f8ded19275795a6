"""Meta-Weight-Net and CMW-Net for PyTorch Lightning: a Trainer callback, no change to the
LightningModule (see :class:`MetaWeighting`). Needs the ``lightning`` extra."""

try:
    import lightning.pytorch  # noqa: F401
except ImportError as missing:  # name the extra, not only the missing module
    raise ImportError(
        "mwnet.integrations.lightning needs PyTorch Lightning, which is not installed: pip "
        "install 'mwnet[lightning]'"
    ) from missing

from mwnet.integrations.lightning.callback import OPTIONS, PRECISIONS, MetaWeighting
from mwnet.integrations.lightning.trusted import TrustedBatches, inputs_and_labels

__all__ = ["OPTIONS", "PRECISIONS", "MetaWeighting", "TrustedBatches", "inputs_and_labels"]
