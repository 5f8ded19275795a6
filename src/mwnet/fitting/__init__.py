"""``mwnet fit``: train the candidates, find the label issues, ship the model chosen on
validation data (:mod:`mwnet.fitting.pipeline`)."""

from mwnet.fitting.pipeline import FitResult, fit

__all__ = ["FitResult", "fit"]
