"""CIFAR-100 files: fetch, check and decode ``<root>/cifar-100-python/{train,test,meta}``.

torchvision does the work: file names, URL and md5s (``torchvision.datasets.CIFAR100``), md5
computation (``calculate_md5``), download and extraction (``download_and_extract_archive``,
``extract_archive``) and decoding (``CIFAR100``'s own reader). crnn adds the checks and their
messages (which file, which setting), a scan of each pickle's opcodes before torchvision unpickles
it (so a foreign pickle cannot run code), and fetching that leaves no partial file behind.
"""

from __future__ import annotations

import contextlib
import os
import pickletools
import shutil
import socket
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR100 as _TVCIFAR100
from torchvision.datasets import utils as _tv_utils

from crnn.data.errors import (
    ChecksumMismatchError,
    ChecksumMismatchWarning,
    CorruptDatasetError,
    DatasetNotFoundError,
)

__all__ = [
    "CIFAR100_FILES",
    "CIFAR100_FOLDER",
    "CIFAR100_TARBALL",
    "CIFAR100_TGZ_MD5",
    "CIFAR100_URL",
    "CIFAR100Files",
    "read_cifar100",
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
_NUM_CLASSES = 100


# ----------------------------------------------------------------------------------------------
# Decoding: torchvision's reader, behind crnn's checks
# ----------------------------------------------------------------------------------------------
#: The only globals an official CIFAR pickle names (``pickletools`` writes them "module name").
_PICKLE_GLOBALS = frozenset(
    {
        "numpy.core.multiarray _reconstruct",
        "numpy._core.multiarray _reconstruct",
        "numpy ndarray",
        "numpy dtype",
        "_codecs encode",  # bytes pickled by Python 3
    }
)
#: Opcodes that name a callable without spelling it out: never in a CIFAR pickle.
_INDIRECT_GLOBALS = frozenset({"STACK_GLOBAL", "EXT1", "EXT2", "EXT4"})


def _check_pickle(path: Path) -> None:
    """Walk the pickle's opcodes without running them: the file is complete, and it names only the
    numpy globals of a CIFAR pickle, so that torchvision's ``pickle.load`` cannot run foreign code.

    Raises:
        CorruptDatasetError: truncated or garbage file, or a foreign global; the message names the file.
    """
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                named = op.name in ("GLOBAL", "INST")
                if op.name in _INDIRECT_GLOBALS or (named and arg not in _PICKLE_GLOBALS):
                    raise CorruptDatasetError(
                        f"{path}: {f'global {arg!r}' if named else f'an indirect global ({op.name})'} is not "
                        "allowed in a CIFAR-100 pickle; "
                        "this is not an official file: delete it and download the data set again"
                    )
    except CorruptDatasetError:
        raise
    except OSError as e:
        raise CorruptDatasetError(f"{path}: cannot read the file ({e})") from e
    except Exception as e:  # truncated / garbage pickles raise ValueError and friends
        raise CorruptDatasetError(
            f"{path}: not a readable CIFAR-100 pickle ({type(e).__name__}: {e}); the file is truncated "
            "or corrupt: delete it and download the data set again"
        ) from e


class _TorchvisionReader(_TVCIFAR100):
    """torchvision's ``CIFAR100`` with its md5 checks off (``None``: existence only): crnn checks the
    md5s itself, with its messages and the ``data.verify_checksums`` switch."""

    train_list = [[name, None] for name, _ in _TVCIFAR100.train_list]
    test_list = [[name, None] for name, _ in _TVCIFAR100.test_list]
    meta = {**_TVCIFAR100.meta, "md5": None}


def read_cifar100(root: str | os.PathLike, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode ``<root>/cifar-100-python/{split}`` (``train`` or ``test``) and ``meta`` with torchvision.

    Each pickle is scanned first (:func:`_check_pickle`); md5s are the caller's business.

    Returns:
        ``images`` ``uint8 (N, 3, 32, 32)`` (channels R, G, B), ``labels`` ``int64 (N,)`` fine labels,
        the 100 fine label names.

    Raises:
        CorruptDatasetError: unreadable pickle, missing keys, wrong ``data`` dtype/shape, label count
            or range, not 100 names; the message names the file.
    """
    folder = Path(root) / CIFAR100_FOLDER
    path, meta_path = folder / split, folder / _TVCIFAR100.meta["filename"]
    for p in (path, meta_path):
        _check_pickle(p)
    try:
        tv = _TorchvisionReader(str(root), train=split == "train")
    except KeyError as e:
        key = e.args[0] if e.args else "?"
        where = meta_path if key == _TVCIFAR100.meta["key"] else path
        raise CorruptDatasetError(f"{where}: the CIFAR-100 pickle lacks key {key!r}") from e
    except (TypeError, ValueError, AttributeError, IndexError) as e:
        raise CorruptDatasetError(
            f"{path}: not a CIFAR-100 '{split}' pickle: 'data' must be a uint8 array of shape (N, 3072) "
            f"with N 'fine_labels' ({type(e).__name__}: {e})"
        ) from e
    data = tv.data  # (N, 32, 32, 3): torchvision's HWC view of the file's (N, 3, 32, 32)
    if data.dtype != np.uint8:
        raise CorruptDatasetError(f"{path}: 'data' must be a uint8 array of shape (N, 3072) ({data.dtype})")
    n = data.shape[0]
    labels = np.asarray(tv.targets, dtype=np.int64)
    if labels.shape != (n,):
        raise CorruptDatasetError(f"{path}: {labels.shape[0]} 'fine_labels' for {n} images in 'data'")
    if n and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
        raise CorruptDatasetError(
            f"{path}: 'fine_labels' outside [0, {_NUM_CLASSES}) (min {labels.min()}, max {labels.max()})"
        )
    if len(tv.classes) != _NUM_CLASSES:
        raise CorruptDatasetError(f"{meta_path}: {len(tv.classes)} fine_label_names, expected {_NUM_CLASSES}")
    images = np.ascontiguousarray(data.transpose(0, 3, 1, 2))  # back to the file's layout: no copy
    return torch.from_numpy(images), torch.from_numpy(labels), [str(c) for c in tv.classes]


class CIFAR100Files:
    """The three files under ``<root>/cifar-100-python``: fetch the missing ones, check the present ones.

    Args:
        root: folder that contains (or will contain) ``cifar-100-python/``.
        download: fetch the official tarball when files are missing.
        verify_checksums: ``False`` accepts files whose md5 differs (with a warning).
        download_timeout: socket timeout (s) while downloading.
    """

    def __init__(self, root: Path, download: bool, verify_checksums: bool, download_timeout: float):
        self.root, self.download = root, download
        self.verify_checksums, self.download_timeout = verify_checksums, download_timeout

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

    def fetch(self) -> None:
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
        actual = _tv_utils.calculate_md5(tarball)
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

    def checked_path(self, name: str) -> Path:
        """Path of ``name`` after existence and checksum checks."""
        path = self.folder / name
        if not path.is_file():
            reason = (
                "prepare_data() did not fetch them (call it before setup())"
                if self.download
                else "download is off (data.download=false)"
            )
            raise self._not_found(reason)
        actual, expected = _tv_utils.calculate_md5(path), CIFAR100_FILES[name]
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
        return path
