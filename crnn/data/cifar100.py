"""CIFAR-100 as uint8 tensors with whole-batch augmentation on the training device.

On disk: torchvision's layout, ``<root>/cifar-100-python/{train,test,meta}`` (the official python
pickles from https://www.cs.toronto.edu/~kriz/cifar.html). Each of ``train``/``test`` is a dict with
``data`` (uint8 ``(N, 3072)``: R, G, B planes of 32x32 pixels, row-major), ``fine_labels`` (N ints in
``[0, 100)``), ``coarse_labels``, ``filenames`` and ``batch_label``; ``meta`` has
``fine_label_names`` (100) and ``coarse_label_names`` (20).

Pipeline (no PIL, no per-sample transform):

1. :meth:`CIFAR100DataModule.prepare_data` downloads and extracts the official tarball with
   torchvision's code when files are missing (or extracts a tarball already in ``root``); offline,
   one :class:`~crnn.data.errors.DatasetNotFoundError` names the folder and the files.
2. :meth:`~CIFAR100DataModule.setup` decodes each pickle once into ``uint8 (N, 3, 32, 32)`` +
   ``int64 (N,)`` tensors (checksums verified first), and carves the validation split from train.
3. The loaders yield ``(uint8 (B, 3, 32, 32), int64 (B,))``, one indexing op per batch
   (:class:`TensorBatchDataset` implements ``__getitems__``).
4. :meth:`~CIFAR100DataModule.on_after_batch_transfer` runs on the training device: while the trainer
   is training, random crop (4-pixel zero padding) + horizontal flip per sample, vectorised; always
   conversion to float and per-channel normalisation. Batches reaching the model are
   ``(float32 (B, 3, 32, 32), int64 (B,))``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import shutil
import socket
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.datasets import CIFAR100 as _TVCIFAR100
from torchvision.datasets import utils as _tv_utils

from crnn.data.augment import BatchAugment
from crnn.data.errors import (
    ChecksumMismatchError,
    ChecksumMismatchWarning,
    CorruptDatasetError,
    DatasetNotFoundError,
)

__all__ = [
    "CIFAR100_FILES",
    "CIFAR100_FOLDER",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR100_TARBALL",
    "CIFAR100_TGZ_MD5",
    "CIFAR100_URL",
    "CIFAR100DataModule",
    "EpochShuffleSampler",
    "TensorBatchDataset",
    "load_cifar100_meta",
    "load_cifar100_split",
]

#: Folder under ``root`` (torchvision's ``CIFAR100.base_folder``).
CIFAR100_FOLDER: str = _TVCIFAR100.base_folder
CIFAR100_URL: str = _TVCIFAR100.url
CIFAR100_TARBALL: str = _TVCIFAR100.filename
CIFAR100_TGZ_MD5: str = _TVCIFAR100.tgz_md5
#: Official md5 of each file, from torchvision's ``CIFAR100.train_list``/``test_list``/``meta``.
CIFAR100_FILES: dict[str, str] = {
    **{name: md5 for name, md5 in _TVCIFAR100.train_list},
    **{name: md5 for name, md5 in _TVCIFAR100.test_list},
    _TVCIFAR100.meta["filename"]: _TVCIFAR100.meta["md5"],
}
#: Per-channel statistics of the 50,000 training images (pixel values scaled to [0, 1]).
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)

_NUM_CLASSES = 100
_INPUT_SHAPE = (3, 32, 32)


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------
def _numpy_reconstruct():
    core = getattr(np, "_core", None) or np.core  # numpy >= 2 renamed numpy.core to numpy._core
    return core.multiarray._reconstruct


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the globals a CIFAR pickle needs (numpy arrays, dtypes).

    The official files are Python 2 pickles that reference ``numpy.core.multiarray._reconstruct``; it
    is mapped to the running numpy's function (no deprecation warning on numpy 2). Anything else
    (arbitrary callables) is refused, so a hostile or foreign pickle cannot run code.
    """

    _ALLOWED = {
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("_codecs", "encode"): lambda: __import__("codecs").encode,  # bytes pickled by Python 3
    }

    def find_class(self, module: str, name: str) -> Any:
        factory = self._ALLOWED.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR pickle")
        return factory()


def _unpickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise CorruptDatasetError(f"{path}: cannot read the file ({e})") from e
    except Exception as e:  # truncated / garbage pickles raise many types
        raise CorruptDatasetError(
            f"{path}: not a readable CIFAR-100 pickle ({type(e).__name__}: {e}); the file is truncated "
            "or corrupt: delete it and download the data set again"
        ) from e


def _md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_cifar100_split(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one official CIFAR-100 pickle (``train`` or ``test``).

    Returns:
        ``images``: ``uint8 (N, 3, 32, 32)`` (channels R, G, B), ``labels``: ``int64 (N,)`` fine labels.

    Raises:
        CorruptDatasetError: unreadable pickle, missing keys, wrong ``data`` dtype/shape, label count
            or range; the message names the file.
    """
    path = Path(path)
    entry = _unpickle(path)
    if not isinstance(entry, dict):
        raise CorruptDatasetError(
            f"{path}: expected a dict in the CIFAR-100 pickle, got {type(entry).__name__}"
        )
    missing = [k for k in ("data", "fine_labels") if k not in entry]
    if missing:
        raise CorruptDatasetError(
            f"{path}: CIFAR-100 pickle lacks key(s) {missing} (has {sorted(map(str, entry))})"
        )
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CorruptDatasetError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {desc}")
    n = data.shape[0]
    try:
        labels = np.asarray(entry["fine_labels"], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise CorruptDatasetError(f"{path}: 'fine_labels' is not a list of integers ({e})") from e
    if labels.shape != (n,):
        raise CorruptDatasetError(f"{path}: {labels.shape} 'fine_labels' for {n} images in 'data'")
    if n and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
        raise CorruptDatasetError(
            f"{path}: 'fine_labels' outside [0, {_NUM_CLASSES}) (min {labels.min()}, max {labels.max()})"
        )
    images = np.ascontiguousarray(data).reshape(n, *_INPUT_SHAPE)
    if not images.flags.writeable:
        images = images.copy()
    return torch.from_numpy(images), torch.from_numpy(labels)


def load_cifar100_meta(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Decode the official ``meta`` pickle: ``(fine_label_names (100), coarse_label_names (20))``."""
    path = Path(path)
    meta = _unpickle(path)
    if not isinstance(meta, dict) or "fine_label_names" not in meta:
        keys = sorted(map(str, meta)) if isinstance(meta, dict) else type(meta).__name__
        raise CorruptDatasetError(f"{path}: CIFAR-100 meta lacks 'fine_label_names' (has {keys})")
    fine = [str(x) for x in meta["fine_label_names"]]
    coarse = [str(x) for x in meta.get("coarse_label_names", [])]
    if len(fine) != _NUM_CLASSES:
        raise CorruptDatasetError(f"{path}: {len(fine)} fine_label_names, expected {_NUM_CLASSES}")
    return fine, coarse


# ----------------------------------------------------------------------------------------------
# Dataset and sampler
# ----------------------------------------------------------------------------------------------
class TensorBatchDataset(Dataset):
    """In-memory ``(images, labels)`` whose batches are one indexing op.

    ``dataset[i]`` -> ``(images[i] (C, H, W), labels[i] ())``; ``dataset.__getitems__(indices)`` (what
    :class:`~torch.utils.data.DataLoader` calls with automatic batching) ->
    ``(images[idx] (B, C, H, W), labels[idx] (B,))``. Use :func:`collate_batch` as ``collate_fn``.
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

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images.index_select(0, idx), self.labels.index_select(0, idx)


def collate_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``collate_fn`` for :class:`TensorBatchDataset`: the batch is already stacked (identity)."""
    return batch


class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(n)`` that is a pure function of ``(seed, epoch)``.

    ``set_epoch(e)`` (Lightning calls it at the start of every training epoch, also after resuming)
    selects epoch ``e``; without it, each ``iter()`` moves to the next epoch. ``shuffle=False`` gives
    ``0..n-1``. The same seed gives the same order sequence on any machine, independent of what
    else consumed the global RNG.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n = int(n)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self._explicit_epochs = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._explicit_epochs = True

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of epoch ``epoch``: ``int64 (n,)``."""
        if not self.shuffle:
            return torch.arange(self.n)
        # SeedSequence mixes (seed, epoch) so that (s, e + 1) and (s + 1, e) give unrelated orders.
        state = np.random.SeedSequence([self.seed % 2**64, epoch]).generate_state(2, dtype=np.uint32)
        g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[int]:
        order = self.permutation(self.epoch)
        if not self._explicit_epochs:
            self.epoch += 1
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.n


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
        shuffle_seed: seed of the per-epoch shuffle; ``None``: ``torch.initial_seed()`` when the train
            loader is built (``lightning.seed_everything(s)`` makes that ``s``). Epoch ``e``'s order
            depends only on ``(shuffle_seed, e)``.
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
        self.download = bool(download)
        self.verify_checksums = bool(verify_checksums)
        self.download_timeout = float(download_timeout)
        self.augment = BatchAugment(
            random_crop=random_crop,
            crop_padding=int(crop_padding),
            horizontal_flip=horizontal_flip,
            normalize=normalize,
            mean=[float(v) for v in mean],
            std=[float(v) for v in std],
        )

        self.class_names: list[str] | None = None
        self.coarse_class_names: list[str] | None = None
        self.train_set: TensorBatchDataset | None = None
        self.val_set: TensorBatchDataset | None = None
        self.test_set: TensorBatchDataset | None = None
        self.train_indices: torch.Tensor | None = None
        self.val_indices: torch.Tensor | None = None
        self._checked: set[str] = set()

    # ------------------------------------------------------------------ files
    @property
    def folder(self) -> Path:
        """``<root>/cifar-100-python``."""
        return self.root / CIFAR100_FOLDER

    def missing_files(self) -> list[str]:
        """Names among ``train``, ``test``, ``meta`` absent from :attr:`folder`."""
        return [name for name in CIFAR100_FILES if not (self.folder / name).is_file()]

    def _not_found(self, reason: str) -> DatasetNotFoundError:
        missing = self.missing_files()
        return DatasetNotFoundError(
            f"CIFAR-100 not found: {reason}. The loader needs the folder '{self.folder}' with the files "
            f"{', '.join(repr(n) for n in CIFAR100_FILES)} (missing: {', '.join(missing) or 'none'}). "
            f"To get them by hand, download {CIFAR100_URL} (md5 {CIFAR100_TGZ_MD5}) and extract it "
            f"into '{self.root}' (tar -xzf {CIFAR100_TARBALL} -C '{self.root}'), or put the "
            f"{CIFAR100_TARBALL} file itself in '{self.root}'; or set data.root to the folder that "
            f"already contains {CIFAR100_FOLDER}/."
        )

    def prepare_data(self) -> None:
        """Make sure ``train``, ``test`` and ``meta`` exist under :attr:`folder`.

        Missing files come from ``<root>/cifar-100-python.tar.gz`` when it is there, else (with
        ``download=True``) from the official URL via torchvision's ``download_and_extract_archive``,
        into a temporary folder under ``root`` that is always removed (no partial tarball is left).

        Raises:
            DatasetNotFoundError: files missing and download off or failing (offline), one message
                naming the folder, the files and where to get them.
        """
        if not self.missing_files():
            return
        tarball = self.root / CIFAR100_TARBALL
        if tarball.is_file():
            self._install_from_tarball(tarball)
            return
        if not self.download:
            raise self._not_found("download is off (data.download=false)")
        self._download()

    def _install_from_tarball(self, tarball: Path) -> None:
        actual = _md5(tarball)
        if actual != CIFAR100_TGZ_MD5:
            if self.verify_checksums:
                raise ChecksumMismatchError(
                    f"{tarball}: md5 {actual} differs from the official {CIFAR100_TGZ_MD5}; delete it to "
                    "download again, or set data.verify_checksums=false to use it anyway"
                )
            warnings.warn(
                f"{tarball}: md5 {actual} differs from the official {CIFAR100_TGZ_MD5}; extracting it anyway "
                "because data.verify_checksums=false",
                ChecksumMismatchWarning,
                stacklevel=3,
            )
        tmp = Path(tempfile.mkdtemp(prefix=".cifar-100-extract-", dir=self.root))
        try:
            try:
                _tv_utils.extract_archive(str(tarball), str(tmp))
            except Exception as e:
                raise CorruptDatasetError(f"{tarball}: cannot extract the archive ({e})") from e
            self._move_extracted(tmp / CIFAR100_FOLDER, source=tarball)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _move_extracted(self, extracted: Path, source: Path | str) -> None:
        absent = [n for n in CIFAR100_FILES if not (extracted / n).is_file()]
        if absent:
            raise CorruptDatasetError(
                f"{source}: the archive has no {CIFAR100_FOLDER}/{{{','.join(absent)}}}"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in self.missing_files():
            os.replace(extracted / name, self.folder / name)  # same file system: atomic

    def _download(self) -> None:
        created_root = not self.root.exists()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._not_found(f"cannot create data.root ({e})") from e
        tmp = Path(tempfile.mkdtemp(prefix=".cifar-100-download-", dir=self.root))
        old_timeout = socket.getdefaulttimeout()
        ok = False
        try:
            socket.setdefaulttimeout(self.download_timeout)
            try:
                # torchvision's own download code (also checks the tarball's md5).
                _tv_utils.download_and_extract_archive(
                    CIFAR100_URL, download_root=str(tmp), filename=CIFAR100_TARBALL, md5=CIFAR100_TGZ_MD5
                )
            except Exception as e:
                raise self._not_found(
                    f"downloading {CIFAR100_URL} failed ({type(e).__name__}: {e}); the machine may be offline"
                ) from e
            finally:
                socket.setdefaulttimeout(old_timeout)
            self._move_extracted(tmp / CIFAR100_FOLDER, source=CIFAR100_URL)
            ok = True
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if not ok and created_root:
                with contextlib.suppress(OSError):
                    self.root.rmdir()  # only if still empty: leave no trace of a failed attempt

    def _checked_path(self, name: str) -> Path:
        """Path of ``name`` after existence and (once per file) checksum checks."""
        path = self.folder / name
        if not path.is_file():
            reason = (
                "prepare_data() did not fetch them (call it before setup())"
                if self.download
                else "download is off (data.download=false)"
            )
            raise self._not_found(reason)
        if name not in self._checked:
            actual, expected = _md5(path), CIFAR100_FILES[name]
            if actual != expected:
                if self.verify_checksums:
                    raise ChecksumMismatchError(
                        f"{path}: md5 {actual} differs from the official {expected} (a partial, re-packed or "
                        "corrupt copy). Set data.verify_checksums=false to use it anyway, or delete "
                        f"'{self.folder}' to download the official files again."
                    )
                warnings.warn(
                    f"{path}: md5 {actual} differs from the official {expected}; using it anyway because "
                    "data.verify_checksums=false (partial or re-packed copy)",
                    ChecksumMismatchWarning,
                    stacklevel=3,
                )
            self._checked.add(name)
        return path

    # ------------------------------------------------------------------ setup
    def _split_sizes(self, n: int) -> int:
        n_val = round(self.val_size * n) if isinstance(self.val_size, float) else self.val_size
        if n_val >= n:
            raise ValueError(
                f"data.val_size={self.val_size} leaves no training images: the train file has {n} records"
            )
        return n_val

    def setup(self, stage: str | None = None) -> None:
        """Decode the pickles needed by ``stage`` (once) and split train/val.

        ``fit``/``validate``: ``train`` -> :attr:`train_set`, :attr:`val_set`; ``test``/``predict``:
        ``test`` -> :attr:`test_set`; ``None``: all. Always reads ``meta`` -> :attr:`class_names`.
        """
        if self.class_names is None:
            self.class_names, self.coarse_class_names = load_cifar100_meta(self._checked_path("meta"))
        if stage in (None, "fit", "validate") and self.train_set is None:
            images, labels = load_cifar100_split(self._checked_path("train"))
            n = images.shape[0]
            n_val = self._split_sizes(n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
            self.val_indices = perm[:n_val].sort().values
            self.train_indices = perm[n_val:].sort().values
            self.train_set = TensorBatchDataset(images[self.train_indices], labels[self.train_indices])
            self.val_set = TensorBatchDataset(images[self.val_indices], labels[self.val_indices])
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = TensorBatchDataset(*load_cifar100_split(self._checked_path("test")))

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: TensorBatchDataset | None, what: str, train: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"call setup() before {what}_dataloader()")
        batch_size = self.batch_size if train else self.eval_batch_size
        sampler = None
        if train:
            seed = self.shuffle_seed if self.shuffle_seed is not None else torch.initial_seed()
            sampler = EpochShuffleSampler(len(dataset), seed=seed)
        pin = torch.cuda.is_available() if self.pin_memory is None else bool(self.pin_memory)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=train and self.drop_last and len(dataset) >= batch_size,
            collate_fn=collate_batch,
            num_workers=self.num_workers,
            pin_memory=pin,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled (:class:`EpochShuffleSampler`) ``(uint8 (B, 3, 32, 32), int64 (B,))`` batches."""
        return self._loader(self.train_set, "train", train=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in file order (``[]`` when ``val_size`` is 0: no validation)."""
        if self.val_set is not None and len(self.val_set) == 0:
            return []
        return self._loader(self.val_set, "val")

    def test_dataloader(self) -> DataLoader:
        """The official test file, in order."""
        return self._loader(self.test_set, "test")

    def predict_dataloader(self) -> DataLoader:
        """Same as :meth:`test_dataloader`."""
        return self._loader(self.test_set, "predict")

    # ------------------------------------------------------------------ device-side transform
    def transform_batch(
        self, images: torch.Tensor, train: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``uint8 (B, 3, 32, 32)`` -> ``float32 (B, 3, 32, 32)``: augment (if ``train``) + normalise."""
        return self.augment(images, train=train, generator=generator)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Lightning hook, on the training device: augment while ``trainer.training``, normalise always.

        Takes ``(uint8 (B, 3, 32, 32), int64 (B,))``, returns ``(float32 (B, 3, 32, 32), int64 (B,))``.
        (Do not also override this hook in the LightningModule: Lightning would use only this one.)
        """
        images, labels = batch
        trainer = self.trainer
        training = bool(trainer is not None and trainer.training)
        return self.transform_batch(images, train=training), labels

    def __repr__(self) -> str:
        return (
            f"CIFAR100DataModule(root='{self.root}', batch_size={self.batch_size}, val_size={self.val_size}, "
            f"split_seed={self.split_seed}, verify_checksums={self.verify_checksums}, {self.augment})"
        )
