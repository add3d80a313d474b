"""The name of a model, from its labels: shared by run names, exports, profiles and the results tables
(plain Python, so that :mod:`crnn.results` can use it without torch or Hydra)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["MODEL_PARTS", "model_name"]

MODEL_PARTS = ("backbone", "rnn", "head")
"""The labels (group choices) that name a model, in name order."""


def model_name(labels: Mapping[str, Any]) -> str:
    """``resnet20-sws_birnn-linear``: the backbone, 2-D layer and head of ``labels`` (a run's group
    choices or the labels of what was built); a missing one reads ``None``."""
    return "-".join(str(labels.get(k)) for k in MODEL_PARTS)
