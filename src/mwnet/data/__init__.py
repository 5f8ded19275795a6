"""Data layer: dataset sources, label corruption, long tail, meta split, device batching,
and :func:`prepare`, which assembles a run's data from its ``data.*`` config.

Everything here is a pure function of its inputs and a seed, or an iterator whose
randomness is a seeded generator with a resumable state, so that a run can always say
which samples were corrupted and reproduce its batches.
"""

from mwnet.data.annotator_noise import corrupt_annotator
from mwnet.data.batching import (
    CIFAR_AUGMENT,
    CIFAR_NORMALIZE,
    Augment,
    DeviceBatches,
    EndlessBatches,
    Normalize,
    gather_augmented,
    to_float,
)
from mwnet.data.cifar import CIFAR10, CIFAR100, load_cifar, safe_extract
from mwnet.data.corruption import (
    ASYMMETRIC_MAPS,
    ASYMMETRIC_NUM_CLASSES,
    NOISE_TYPES,
    Corruption,
    corrupt_labels,
    transition_matrix,
)
from mwnet.data.dataset import ImageDataset, is_features
from mwnet.data.download import download_file, md5_of
from mwnet.data.errors import DataError, DatasetError
from mwnet.data.idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx
from mwnet.data.image_folder import load_image_folder, load_image_list
from mwnet.data.instance_noise import corrupt_instances
from mwnet.data.long_tail import long_tail_counts, long_tail_indices
from mwnet.data.meta_split import default_meta_per_class, meta_split
from mwnet.data.mnist import FASHION_MNIST, FASHION_MNIST_CLASSES, MNIST, load_idx_dataset
from mwnet.data.noise import IMAGE_NOISE, NOISE_KINDS, corrupt
from mwnet.data.paths import cache_dir, search_dirs
from mwnet.data.preparation import prepare
from mwnet.data.pseudo_meta import PseudoMeta, pseudo_meta_precision, select_pseudo_meta
from mwnet.data.sources import DATASET_NAMES, load_dataset
from mwnet.data.table import TABLE_EXTENSIONS, Table, TableColumns, read_table
from mwnet.data.train_data import TrainData
from mwnet.data.val_split import val_split

__all__ = [
    "ASYMMETRIC_MAPS",
    "ASYMMETRIC_NUM_CLASSES",
    "CIFAR10",
    "CIFAR100",
    "CIFAR_AUGMENT",
    "CIFAR_NORMALIZE",
    "DATASET_NAMES",
    "FASHION_MNIST",
    "FASHION_MNIST_CLASSES",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "IMAGE_NOISE",
    "MNIST",
    "NOISE_KINDS",
    "NOISE_TYPES",
    "TABLE_EXTENSIONS",
    "Augment",
    "Corruption",
    "DataError",
    "DatasetError",
    "DeviceBatches",
    "EndlessBatches",
    "ImageDataset",
    "Normalize",
    "PseudoMeta",
    "Table",
    "TableColumns",
    "TrainData",
    "cache_dir",
    "corrupt",
    "corrupt_annotator",
    "corrupt_instances",
    "corrupt_labels",
    "default_meta_per_class",
    "download_file",
    "gather_augmented",
    "is_features",
    "load_cifar",
    "load_dataset",
    "load_idx_dataset",
    "load_image_folder",
    "load_image_list",
    "long_tail_counts",
    "long_tail_indices",
    "md5_of",
    "meta_split",
    "prepare",
    "pseudo_meta_precision",
    "read_idx",
    "read_table",
    "safe_extract",
    "search_dirs",
    "select_pseudo_meta",
    "to_float",
    "transition_matrix",
    "val_split",
]
