"""crnn.data: data sets as Lightning DataModules, with the errors and batch transforms they share.

- :class:`CIFAR100DataModule`: CIFAR-100 as in-memory uint8 tensors, augmented per batch on device;
  :mod:`crnn.data.cifar100_files` fetches, checks and decodes its files with torchvision's code.
- :class:`COCODataModule` (and :class:`SyntheticShapesDataModule`): COCO-layout detection data,
  checked at set-up.
- :mod:`crnn.data.errors`: :class:`DatasetNotFoundError`, :class:`CorruptDatasetError`,
  :class:`ChecksumMismatchError`, :class:`ChecksumMismatchWarning`.
- :mod:`crnn.data.augment`: vectorised batch crop/flip and normalisation.
- :mod:`crnn.data.sampling`: batch order and random draws from ``(seed, epoch, batch)``, exact resume.
"""

from crnn.data.augment import BatchAugment, crop_flip, random_crop_flip, to_float_normalized
from crnn.data.cifar100 import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    CIFAR100DataModule,
    TensorBatchDataset,
)
from crnn.data.cifar100_files import read_cifar100
from crnn.data.errors import (
    ChecksumMismatchError,
    ChecksumMismatchWarning,
    CorruptDatasetError,
    DatasetNotFoundError,
)
from crnn.data.sampling import EpochBatchSampler, EpochLoader, EpochShuffleSampler

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "BatchAugment",
    "CIFAR100DataModule",
    "ChecksumMismatchError",
    "ChecksumMismatchWarning",
    "CorruptDatasetError",
    "DatasetNotFoundError",
    "EpochBatchSampler",
    "EpochLoader",
    "EpochShuffleSampler",
    "TensorBatchDataset",
    "crop_flip",
    "read_cifar100",
    "random_crop_flip",
    "to_float_normalized",
]

# detection (COCO layout)
from crnn.data.coco import COCODataModule, CocoDetectionDataset, collate, load_coco_json  # noqa: E402
from crnn.data.coco_categories import COCO_CATEGORIES, select_categories  # noqa: E402
from crnn.data.synthetic_shapes import (  # noqa: E402
    SHAPE_CATEGORIES,
    SyntheticShapesDataModule,
    generate_synthetic_shapes,
)

__all__ += [
    "COCO_CATEGORIES",
    "COCODataModule",
    "CocoDetectionDataset",
    "SHAPE_CATEGORIES",
    "SyntheticShapesDataModule",
    "collate",
    "generate_synthetic_shapes",
    "load_coco_json",
    "select_categories",
]
