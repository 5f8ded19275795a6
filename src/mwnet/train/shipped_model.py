"""The model file of a run (:mod:`mwnet.run.model_file`): what the run's model needs to
be used without the run, taken from the experiment that trained it.

How an image becomes the model's input is the training pipeline's own: the channels and
size of the training images, the normalisation the batches applied (``data.normalize``:
the training set's statistics, CIFAR's or ImageNet's constants, or none), and whether
image files were resized (``data.dataset=folder`` and ``list`` decode every file scaled
to cover ``data.image_size`` and centre-cropped; the named datasets are used at their own
size, so an image of another size is refused rather than resized).
"""

from __future__ import annotations

from typing import Any

from mwnet._version import __version__ as MWNET_VERSION
from mwnet.run.model_file import COLORS, FEATURES
from mwnet.train.experiment import Experiment, model_options

RESIZED_DATASETS = ("folder", "list")
"""The datasets whose images are files resized to ``data.image_size`` when read."""

NOT_RECORDED_OPTIONS = ("weights_path",)
"""Model options that only say where the starting weights came from: the model file
holds the trained weights, and the path may not exist where the file is used."""


def model_fields(exp: Experiment, epochs: int, test_acc: float | None) -> dict[str, Any]:
    """The model file's fields for ``exp.model`` after ``epochs`` epochs, whose last test
    accuracy (percent) was ``test_acc``."""
    cfg, data = exp.cfg, exp.data
    channels, height, width = (int(v) for v in data.train_images.shape[1:])
    options = {k: v for k, v in model_options(cfg, data).items() if k not in NOT_RECORDED_OPTIONS}
    normalize = exp.normalize
    return {
        "mwnet_version": MWNET_VERSION,
        "model": {
            "name": str(cfg.model.name),
            "options": options,
            "num_classes": data.num_classes,
            "in_channels": channels,
        },
        "state_dict": {k: v.detach().cpu() for k, v in exp.model.state_dict().items()},
        "classes": [str(c) for c in data.classes],
        "input": {
            "channels": channels,
            "height": height,
            "width": width,
            "color": FEATURES if data.feature_names is not None else COLORS[channels],
            "resize": "cover-crop" if cfg.data.dataset in RESIZED_DATASETS else "none",
            "normalize": None
            if normalize is None
            else {"mean": list(normalize.mean), "std": list(normalize.std)},
            **table_fields(cfg, data),
        },
        "training": {
            "dataset": str(cfg.data.dataset),
            "method": str(cfg.method.name),
            "seed": int(cfg.seed),
            "epochs": int(epochs),
            "test_acc": None if test_acc is None else float(test_acc),
        },
    }


def table_fields(cfg: Any, data: Any) -> dict[str, Any]:
    """For a model trained on a table: how ``mwnet predict`` reads a table file into its
    input, the columns as the run read them (an empty dict for images)."""
    if data.feature_names is None:
        return {}
    t = cfg.data.table
    columns = None if t.feature_columns is None else [str(c) for c in t.feature_columns]
    return {
        "table": {
            "feature_names": list(data.feature_names),
            "label_column": str(t.label_column),
            "feature_columns": columns,
            "embedding_column": t.embedding_column,
            "id_column": t.id_column,
            "trusted_column": t.trusted_column,
        }
    }
