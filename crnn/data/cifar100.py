"""CIFAR-100 as uint8 tensors with whole-batch augmentation on the training device.

On disk: torchvision's layout, ``<root>/cifar-100-python/{train,test,meta}`` (the official python
pickles from https://www.cs.toronto.edu/~kriz/cifar.html). Each of ``train``/``test`` is a dict with
``data`` (uint8 ``(N, 3072)``: R, G, B planes of 32x32 pixels, row-major), ``fine_labels`` (N ints in
``[0, 100)``), ``coarse_labels``, ``filenames`` and ``batch_label``; ``meta`` has
``fine_label_names`` (100) and ``coarse_label_names`` (20).

Files are fetched, checked and decoded by torchvision's code (:mod:`crnn.data.cifar100_files`);
crnn's own part is the training pipeline:

1. :meth:`CIFAR100DataModule.prepare_data` fetches missing files (tarball in ``root``, else the
   official URL); offline, one :class:`~crnn.data.errors.DatasetNotFoundError` says which file to
   put where.
2. :meth:`~CIFAR100DataModule.setup` checks and decodes **all** files (``meta``, ``train``, ``test``)
   whatever the stage, so a corrupt test file stops the run before its first training step; the
   validation split is carved from train.
3. The loaders yield ``(uint8 (B, 3, 32, 32), int64 (B,))``, one indexing op per batch
   (:class:`TensorBatchDataset`); training batches add the batch's seed: ``(images, labels, seed)``.
   Batch ``i`` of epoch ``e`` and its seed are pure functions of ``(seed, e, i)``
   (:mod:`crnn.data.sampling`), also when a run resumes mid-epoch under Lightning.
4. :meth:`~CIFAR100DataModule.on_after_batch_transfer` runs on the training device: batches with a
   seed get random crop (4-pixel zero padding) + horizontal flip per sample, drawn from that seed;
   all get conversion to float and per-channel normalisation. Batches reaching the model are
   ``(float32 (B, 3, 32, 32), int64 (B,))``. Torch's global generator is never used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import Dataset

from crnn.data.augment import BatchAugment
from crnn.data.cifar100_files import CIFAR100_FILES, CIFAR100Files, read_cifar100
from crnn.data.sampling import EpochLoader, SeededBatch, epoch_loader

__all__ = ["CIFAR100_MEAN", "CIFAR100_STD", "CIFAR100DataModule", "TensorBatchDataset", "collate_batch"]

#: Per-channel statistics of the 50,000 training images (pixel values scaled to [0, 1]).
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)

_NUM_CLASSES = 100
_INPUT_SHAPE = (3, 32, 32)


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------
class TensorBatchDataset(Dataset):
    """In-memory ``(images, labels)`` whose batches are one indexing op.

    ``dataset[i]`` -> ``(images[i] (C, H, W), labels[i] ())``. ``dataset.__getitems__(batch)`` (what
    :class:`~torch.utils.data.DataLoader` calls with a batch sampler) -> ``(images[idx] (B, C, H, W),
    labels[idx] (B,))`` for a list of indices or an unseeded :class:`~crnn.data.sampling.SeededBatch`,
    and ``(images[idx], labels[idx], seed)`` for a seeded one. Use :func:`collate_batch` as ``collate_fn``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, batch: Sequence[int] | SeededBatch) -> tuple:
        indices, seed = batch if isinstance(batch, SeededBatch) else (batch, None)
        idx = torch.as_tensor(indices, dtype=torch.long)
        images, labels = self.images.index_select(0, idx), self.labels.index_select(0, idx)
        return (images, labels) if seed is None else (images, labels, seed)


def collate_batch(batch: tuple) -> tuple:
    """``collate_fn`` for :class:`TensorBatchDataset`: the batch is already stacked (identity)."""
    return batch


# ----------------------------------------------------------------------------------------------
# DataModule
# ----------------------------------------------------------------------------------------------
class CIFAR100DataModule(LightningDataModule):
    """CIFAR-100 (fine labels) for Lightning: uint8 tensors in memory, batch augmentation on device.

    Args:
        root: folder that contains (or will contain) ``cifar-100-python/{train,test,meta}``.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (default: ``batch_size``).
        val_size: validation images carved from the official train file: an int count or a float
            fraction in ``[0, 1)``; 0 disables validation. The test set is the official test file.
        split_seed: seed of the train/val split (fixed across training seeds by default).
        shuffle_seed: seed of the per-epoch order and of the augmentation; ``None``:
            ``torch.initial_seed()`` when the train loader is built (``lightning.seed_everything(s)``
            makes that ``s``). Batch ``i`` of epoch ``e``, order and crops and flips, depends only on
            ``(shuffle_seed, e, i)``: a run resumed mid-epoch (Lightning restarts the epoch's loader and
            numbers batches from the checkpoint's count) sees the batches of the uninterrupted run.
        num_workers, pin_memory: DataLoader settings (``pin_memory=None``: on when CUDA is available).
            Batches are a single indexing op, so ``num_workers=0`` is normally fastest.
        drop_last: drop the last incomplete training batch (only when there is at least one full
            batch, so tiny data sets still train). Validation/test never drop.
        download: fetch the official tarball with torchvision when files are missing.
        verify_checksums: compare files with the official md5s. ``False`` accepts partial or re-packed
            copies with a :class:`~crnn.data.errors.ChecksumMismatchWarning`.
        download_timeout: socket timeout (s) while downloading, so an offline machine fails fast.
        random_crop, crop_padding, horizontal_flip: training augmentation (per sample, on device).
        normalize, mean, std: per-channel normalisation of ``x / 255`` (off: floats in ``[0, 1]``).
        num_classes, input_shape: accepted from the config for the model's benefit; must be 100 and
            ``(3, 32, 32)``.

    Attributes:
        num_classes (int): 100.
        input_shape (tuple): ``(3, 32, 32)``.
        class_names (list[str] | None): the 100 fine label names from ``meta`` (after :meth:`setup`).
        train_set, val_set, test_set (TensorBatchDataset | None): after :meth:`setup`.
        train_indices, val_indices (Tensor | None): indices into the official train file.

    Exact resume: Lightning resumes a mid-epoch checkpoint by iterating the epoch's train loader
    afresh while numbering batches from the checkpoint's count; the train loader starts at that
    batch, and batch ``i`` of epoch ``e`` (order, crops, flips) depends only on ``(seed, e, i)``, so
    the resumed run trains on the uninterrupted run's batches (:mod:`crnn.data.sampling`).

    The constructor checks the settings only (no disk access); problems are reported together in one
    :class:`ValueError` naming the ``data.*`` keys.
    """

    num_classes: int = _NUM_CLASSES
    input_shape: tuple[int, int, int] = _INPUT_SHAPE

    def __init__(
        self,
        root: str | os.PathLike = "data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_size: int | float = 0.1,
        split_seed: int = 0,
        shuffle_seed: int | None = None,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        drop_last: bool = True,
        download: bool = True,
        verify_checksums: bool = True,
        download_timeout: float = 10.0,
        random_crop: bool = True,
        crop_padding: int = 4,
        horizontal_flip: bool = True,
        normalize: bool = True,
        mean: Sequence[float] = CIFAR100_MEAN,
        std: Sequence[float] = CIFAR100_STD,
        num_classes: int = _NUM_CLASSES,
        input_shape: Sequence[int] = _INPUT_SHAPE,
    ):
        super().__init__()
        problems: list[str] = []

        def is_int(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        if root is None or str(root) == "":
            problems.append("data.root must be a folder path")
        if not is_int(batch_size) or batch_size < 1:
            problems.append(f"data.batch_size must be a positive int (got {batch_size!r})")
        if eval_batch_size is not None and (not is_int(eval_batch_size) or eval_batch_size < 1):
            problems.append(f"data.eval_batch_size must be a positive int or null (got {eval_batch_size!r})")
        if is_int(val_size):
            if val_size < 0:
                problems.append(f"data.val_size must be >= 0 (got {val_size!r})")
        elif isinstance(val_size, float):
            if not 0.0 <= val_size < 1.0:
                problems.append(f"data.val_size as a fraction must be in [0, 1) (got {val_size!r})")
        else:
            problems.append(f"data.val_size must be an int count or a float fraction (got {val_size!r})")
        if not is_int(split_seed):
            problems.append(f"data.split_seed must be an int (got {split_seed!r})")
        if shuffle_seed is not None and not is_int(shuffle_seed):
            problems.append(f"data.shuffle_seed must be an int or null (got {shuffle_seed!r})")
        if not is_int(num_workers) or num_workers < 0:
            problems.append(f"data.num_workers must be an int >= 0 (got {num_workers!r})")
        if not isinstance(download_timeout, (int, float)) or download_timeout <= 0:
            problems.append(f"data.download_timeout must be > 0 seconds (got {download_timeout!r})")
        if not is_int(crop_padding) or crop_padding < 0:
            problems.append(f"data.crop_padding must be an int >= 0 (got {crop_padding!r})")
        for key, val in (("mean", mean), ("std", std)):
            try:
                vals = [float(v) for v in val]
            except (TypeError, ValueError):
                vals = []
            if len(vals) != 3 or (key == "std" and min(vals) <= 0):
                problems.append(f"data.{key} must be 3 numbers{' > 0' if key == 'std' else ''} (got {val!r})")
        if num_classes != _NUM_CLASSES:
            problems.append(f"data.num_classes must be {_NUM_CLASSES} for CIFAR-100 (got {num_classes!r})")
        try:
            shape_ok = tuple(int(v) for v in input_shape) == _INPUT_SHAPE
        except (TypeError, ValueError):
            shape_ok = False
        if not shape_ok:
            problems.append(
                f"data.input_shape must be {list(_INPUT_SHAPE)} for CIFAR-100 (got {input_shape!r})"
            )
        if problems:
            raise ValueError("invalid CIFAR-100 data config: " + "; ".join(problems))

        self.root = Path(os.path.expanduser(os.fspath(root)))
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size) if eval_batch_size is not None else self.batch_size
        self.val_size = val_size if isinstance(val_size, float) else int(val_size)
        self.split_seed = int(split_seed)
        self.shuffle_seed = int(shuffle_seed) if shuffle_seed is not None else None
        self.num_workers = int(num_workers)
        self.pin_memory = pin_memory
        self.drop_last = bool(drop_last)
        self.verify_checksums = bool(verify_checksums)
        self.files = CIFAR100Files(self.root, bool(download), self.verify_checksums, float(download_timeout))
        self.augment = BatchAugment(
            random_crop=random_crop,
            crop_padding=int(crop_padding),
            horizontal_flip=horizontal_flip,
            normalize=normalize,
            mean=[float(v) for v in mean],
            std=[float(v) for v in std],
        )

        self.class_names: list[str] | None = None
        self.train_set: TensorBatchDataset | None = None
        self.val_set: TensorBatchDataset | None = None
        self.test_set: TensorBatchDataset | None = None
        self.train_indices: torch.Tensor | None = None
        self.val_indices: torch.Tensor | None = None

    # ------------------------------------------------------------------ files
    @property
    def folder(self) -> Path:
        """``<root>/cifar-100-python``."""
        return self.files.folder

    def prepare_data(self) -> None:
        """Fetch missing files: :meth:`crnn.data.cifar100_files.CIFAR100Files.fetch`."""
        self.files.fetch()

    # ------------------------------------------------------------------ setup
    def _split_sizes(self, n: int) -> int:
        n_val = round(self.val_size * n) if isinstance(self.val_size, float) else self.val_size
        if n_val >= n:
            raise ValueError(
                f"data.val_size={self.val_size} leaves no training images: the train file has {n} records"
            )
        return n_val

    def setup(self, stage: str | None = None) -> None:
        """Check and decode all three files (once, whatever ``stage``), then split train/val.

        Every file is checked before any is decoded (presence, md5, readable pickle), so a bad
        ``test`` file stops ``fit`` at set-up rather than after training. Sets :attr:`class_names`,
        :attr:`train_set`, :attr:`val_set`, :attr:`test_set`.
        """
        if self.train_set is not None:
            return
        for name in CIFAR100_FILES:
            self.files.checked_path(name)
        images, labels, self.class_names = read_cifar100(self.root, "train")
        n_val = self._split_sizes(images.shape[0])
        perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(self.split_seed))
        self.val_indices = perm[:n_val].sort().values
        self.train_indices = perm[n_val:].sort().values
        self.train_set = TensorBatchDataset(images[self.train_indices], labels[self.train_indices])
        self.val_set = TensorBatchDataset(images[self.val_indices], labels[self.val_indices])
        test_images, test_labels, _ = read_cifar100(self.root, "test")
        self.test_set = TensorBatchDataset(test_images, test_labels)

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: TensorBatchDataset | None, what: str, train: bool = False) -> EpochLoader:
        if dataset is None:
            raise RuntimeError(f"call setup() before {what}_dataloader()")
        return epoch_loader(
            dataset,
            self.batch_size if train else self.eval_batch_size,
            train=train,
            trainer=self.trainer,
            shuffle_seed=self.shuffle_seed,
            num_workers=self.num_workers,
            drop_last=self.drop_last,
            collate_fn=collate_batch,
            pin_memory=torch.cuda.is_available() if self.pin_memory is None else bool(self.pin_memory),
        )

    def train_dataloader(self) -> EpochLoader:
        """Shuffled ``(uint8 (B, 3, 32, 32), int64 (B,), seed)`` batches; see :mod:`crnn.data.sampling`."""
        return self._loader(self.train_set, "train", train=True)

    def val_dataloader(self) -> EpochLoader | list:
        """Validation batches in file order (``[]`` when ``val_size`` is 0: no validation)."""
        if self.val_set is not None and len(self.val_set) == 0:
            return []
        return self._loader(self.val_set, "val")

    def test_dataloader(self) -> EpochLoader:
        """The official test file, in order."""
        return self._loader(self.test_set, "test")

    # ------------------------------------------------------------------ device-side transform
    def transform_batch(self, images: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """``uint8 (B, 3, 32, 32)`` -> ``float32 (B, 3, 32, 32)``: augment from ``seed``, normalise."""
        return self.augment(images, seed=seed)

    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Lightning hook, on the training device: augment training batches (they carry a seed), normalise.

        ``(uint8 (B, 3, 32, 32), int64 (B,)[, seed])`` -> ``(float32 (B, 3, 32, 32), int64 (B,))``.
        (Do not also override this hook in the LightningModule: Lightning would use only this one.)
        """
        images, labels, *seed = batch
        return self.transform_batch(images, seed=seed[0] if seed else None), labels

    def __repr__(self) -> str:
        return (
            f"CIFAR100DataModule(root='{self.root}', batch_size={self.batch_size}, val_size={self.val_size}, "
            f"split_seed={self.split_seed}, verify_checksums={self.verify_checksums}, {self.augment})"
        )
