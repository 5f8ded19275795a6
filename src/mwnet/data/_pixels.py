"""Read images as rows of float64 pixels, a chunk at a time, for the image-aware noise models.

The noise models that look at the images (``instance``, ``annotator``) project every
training image; 50,000 CIFAR images are 1.2 GB as float64, so they read the ``uint8``
images in chunks of rows and never hold the whole set as floats.
"""

from __future__ import annotations

import numpy as np
import torch

from mwnet.data.errors import DataError

ImagesLike = torch.Tensor | np.ndarray


def as_image_array(
    images: ImagesLike, num_samples: int, index: torch.Tensor | np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``images`` as a numpy array (a view of a CPU tensor, not a copy) and ``index`` as
    int64, checked to give one image per label: ``images[index]`` (or ``images`` itself
    when ``index`` is None) are the ``num_samples`` samples, in label order."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.ndim < 2:
        raise DataError(f"images must have a sample axis and pixels, got shape {images.shape}")
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise DataError(f"images must be uint8 or floating point, got dtype {images.dtype}")
    if index is not None:
        if isinstance(index, torch.Tensor):
            index = index.detach().cpu().numpy()
        index = np.asarray(index, dtype=np.int64)
        if index.ndim != 1 or (index.size and (index.min() < 0 or index.max() >= len(images))):
            raise DataError(f"index must be 1-d positions into the {len(images)} images")
    count = len(images) if index is None else len(index)
    if count != num_samples:
        raise DataError(f"{count} images for {num_samples} labels; give one image per label")
    return images, index


def pixel_rows(images: np.ndarray, index: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
    """The flattened images of samples ``rows`` as float64, ``uint8`` pixels divided by 255
    (the scale of torchvision's ``ToTensor``), floating-point pixels as given."""
    chosen = images[rows if index is None else index[rows]]
    flat = chosen.reshape(len(rows), -1).astype(np.float64)
    if images.dtype == np.uint8:
        flat /= 255.0
    return flat
