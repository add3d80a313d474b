"""Errors and warnings shared by the dataset loaders (CIFAR-100, COCO).

- :class:`DatasetNotFoundError` (a :class:`FileNotFoundError`): the data set's files are absent and
  could not be downloaded. The message names the folder and the files it needs, and how to get them.
- :class:`CorruptDatasetError` (a :class:`ValueError`): a file is present but cannot be used
  (truncated, not the expected format, wrong keys or shapes). The message names the file.
- :class:`ChecksumMismatchError` (a :class:`CorruptDatasetError`): a file's checksum differs from the
  official one while checksum verification is on; the message names the file and the setting that
  accepts such copies.
- :class:`ChecksumMismatchWarning` (a :class:`UserWarning`): the same mismatch, when verification is
  off; the file is used anyway.
"""

from __future__ import annotations

__all__ = [
    "ChecksumMismatchError",
    "ChecksumMismatchWarning",
    "CorruptDatasetError",
    "DatasetNotFoundError",
]


class DatasetNotFoundError(FileNotFoundError):
    """The data set's files are absent (and downloading is off or failed)."""


class CorruptDatasetError(ValueError):
    """A data set file exists but is unreadable or malformed; the message names the file."""


class ChecksumMismatchError(CorruptDatasetError):
    """A data set file does not match its official checksum (and verification is on)."""


class ChecksumMismatchWarning(UserWarning):
    """A data set file does not match its official checksum; it is used because verification is off."""
