"""A picture of the most suspicious training images, each captioned given -> likely label.

Each caption also says why the image is there, in the units of the signal that ranked it
(:func:`caption`): the agreement count over the run's evaluation passes, the mean weight,
or the probability of the given label, with enough digits to tell apart the small values
at the top of the ranking (which all read 0.00 at two decimals).

Looking at the images is how a person decides whether a flagged label is wrong, so the
report draws the top of its ranking. The images are read back from where the run read
them: the files themselves for image-folder and list datasets, the dataset's training split
(by the samples' training-split indices) otherwise. matplotlib is imported only here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mwnet.label_issues.report import LabelIssues
from mwnet.run.atomic import atomic_write

MONTAGE_FILE = "label_issues.png"


def suspicious_images(issues: LabelIssues, cfg: Any, count: int) -> tuple[np.ndarray, torch.Tensor]:
    """The ``count`` most suspicious samples' positions and their images, uint8 (N, C, H, W).

    Raises:
        DataError / FileNotFoundError: the images can no longer be read.
    """
    top = issues.ranked()[:count]
    if issues.paths is not None:
        from mwnet.data.image_folder import decode_image

        size = int(cfg.data.image_size)
        images = torch.stack([decode_image(Path(issues.paths[i]), size) for i in top.tolist()])
        return top, images
    from mwnet.data import load_dataset

    d = cfg.data
    train = load_dataset(d.dataset, "train", root=d.root, download=False)
    return top, train.images[torch.from_numpy(issues.index[top])]


_VALUE_NAMES = {
    "weight": "weight",
    "confidence": "p(given)",
    "loss": "p(given)",
    "margin": "score",
}
"""What a non-agreement score is, named in the caption."""


def _significant(value: float) -> str:
    """Two significant digits, without the exponent form of small values."""
    return np.format_float_positional(value, precision=2, fractional=False, trim="-")


def caption_value(issues: LabelIssues, position: int) -> str:
    """Why the sample at ``position`` ranks where it does: ``agreed k/p`` and its mean
    probability of the given label for the agreement score, else the signal's value."""
    scores, i = issues.scores, position
    if scores.agree is not None and scores.confidence is not None:
        confidence = float(scores.confidence[i])
        p = "?" if np.isnan(confidence) else _significant(confidence)
        return f"agreed {int(scores.agree[i])}/{scores.passes}, p {p}"
    name = _VALUE_NAMES.get(scores.signal, scores.signal)
    return f"{name} {_significant(float(issues.score[i]))}"


def caption(issues: LabelIssues, position: int) -> str:
    """The caption of the sample at ``position``: its index, :func:`caption_value`, and its
    given and likely class."""
    i = position
    given = issues.class_name(int(issues.given[i]))
    likely = issues.class_name(int(issues.likely[i]))
    return f"#{int(issues.index[i])} {caption_value(issues, i)}\ngiven: {given}\nlikely: {likely}"


def write_montage(
    path: str | os.PathLike[str],
    issues: LabelIssues,
    positions: np.ndarray,
    images: torch.Tensor,
    columns: int = 6,
) -> Path:
    """Draw ``images`` (the samples at ``positions``) in a grid, captioned (:func:`caption`)
    with each sample's index, the value that ranked it, given and likely label."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(positions)
    columns = max(1, min(columns, n))
    rows = max(1, math.ceil(n / columns))
    figure = Figure(figsize=(1.9 * columns, 2.2 * rows + 0.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, i, image in zip(axes, positions.tolist(), images, strict=False):
        picture = image.permute(1, 2, 0).numpy()
        if picture.shape[2] == 1:
            ax.imshow(picture[:, :, 0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(picture)
        ax.set_title(caption(issues, i), fontsize=7)
    figure.suptitle("Most suspicious training labels (why, given -> likely)", fontsize=9)
    path = Path(path)
    with atomic_write(path, "wb") as f:
        figure.savefig(f, format="png", dpi=110)
    return path
