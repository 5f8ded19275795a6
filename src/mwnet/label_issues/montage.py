"""A picture of the most suspicious training images, each captioned given -> likely label.

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


def write_montage(
    path: str | os.PathLike[str],
    issues: LabelIssues,
    positions: np.ndarray,
    images: torch.Tensor,
    columns: int = 6,
) -> Path:
    """Draw ``images`` (the samples at ``positions``) in a grid, captioned with each
    sample's index, given label, likely label and score."""
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
        given = issues.class_name(int(issues.given[i]))
        likely = issues.class_name(int(issues.likely[i]))
        ax.set_title(
            f"#{int(issues.index[i])} ({issues.score[i]:.2f})\ngiven: {given}\nlikely: {likely}",
            fontsize=7,
        )
    figure.suptitle("Most suspicious training labels (score, given -> likely)", fontsize=9)
    path = Path(path)
    with atomic_write(path, "wb") as f:
        figure.savefig(f, format="png", dpi=110)
    return path
