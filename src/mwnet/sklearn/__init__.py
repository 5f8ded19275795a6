"""Meta-Weight-Net as a scikit-learn classifier: :class:`MetaWeightClassifier`, usable in
pipelines, grid searches, ``cross_val_predict`` and cleanlab's ``CleanLearning``. Needs the
``sklearn`` extra; ``import mwnet`` never imports scikit-learn."""

try:
    import sklearn  # noqa: F401
except ImportError as missing:  # name the extra, not only the missing module
    raise ImportError(
        "mwnet.sklearn needs scikit-learn, which is not installed: pip install 'mwnet[sklearn]'"
    ) from missing

from mwnet.sklearn.classifier import MetaWeightClassifier
from mwnet.sklearn.training import METHODS

__all__ = ["METHODS", "MetaWeightClassifier"]
