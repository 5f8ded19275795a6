"""Using a trained model: :func:`load_model` reads a run's model file (or its checkpoint)
into a :class:`LoadedModel`, which reads images as training did and predicts classes;
``mwnet predict`` applies it to a folder, a list file or a dataset split."""

from mwnet.predict.model import InputSpec, LoadedModel, load_model

__all__ = ["InputSpec", "LoadedModel", "load_model"]
