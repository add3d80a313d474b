"""Errors caused by the user's config or files, shared by every entry point.

An entry point reports any of :data:`USER_ERRORS` as one message (no traceback) and exit code 2.
"""

from __future__ import annotations

from crnn.checkpoints import CheckpointError
from crnn.data.errors import CorruptDatasetError, DatasetNotFoundError

__all__ = ["USER_ERRORS", "ConfigError"]


class ConfigError(ValueError):
    """A composed configuration that cannot be built; the message names the config keys."""


USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    DatasetNotFoundError,
    CorruptDatasetError,
    CheckpointError,
)
"""Errors caused by the user's config or files: reported as one message, without a traceback."""
