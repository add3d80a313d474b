"""Reading crnn checkpoints: safe loading (tensors and plain values only), the key of the run config
they carry, and one clear error when their weights do not fit a model."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "CONFIG_KEY",
    "RENAMED_PARAMETERS",
    "CheckpointError",
    "check_state_fits",
    "current_names",
    "current_settings",
    "load_checkpoint",
]


CONFIG_KEY = "crnn_config"
"""Checkpoint key holding the resolved config of the run that wrote it (see
:class:`crnn.callbacks.StoreConfig`)."""


RENAMED_PARAMETERS = {
    ".head.classification_head.conv.": ".head.classification_tower.",
    ".head.regression_head.conv.": ".head.regression_tower.",
}
"""Parts of parameter names that changed (old -> new), so that older checkpoints load: the FCOS
towers moved out of torchvision's heads when they began to run over all pyramid levels at once."""


def current_names(state: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``state_dict`` under today's parameter names (:data:`RENAMED_PARAMETERS`)."""
    renamed = {}
    for key, value in state.items():
        for old, new in RENAMED_PARAMETERS.items():
            key = key.replace(old, new)
        renamed[key] = value
    return renamed


def current_settings(nodes: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's stored model nodes (``hyper_parameters``) under today's settings: detection's
    ``task.evaluation`` mapping became ``task.save_detections`` (its image-logging keys moved to
    ``callbacks.detection_media``)."""
    task = dict(nodes.get("task") or {})
    evaluation = task.pop("evaluation", None)
    if isinstance(evaluation, Mapping) and "save_detections" in evaluation:
        task["save_detections"] = evaluation["save_detections"]
    return {**nodes, "task": task} if "task" in nodes else dict(nodes)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely, or that does not fit the model."""


def load_checkpoint(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """``torch.load`` of a crnn checkpoint: tensors and plain Python values only
    (``weights_only=True``), unless ``trust`` (``trust_checkpoint=true``: your own older files,
    which may run code when unpickled); its ``state_dict`` under today's names (:func:`current_names`)."""
    import pickle

    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f"it needs {found.group(1)}" if found else (str(err).strip().splitlines() or ["?"])[0][:200]
        raise CheckpointError(
            f"{path}: holds more than tensors and plain values, so it is not loaded ({what}). "
            "If you wrote it yourself, pass trust_checkpoint=true."
        ) from None
    except (OSError, RuntimeError, EOFError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({err})") from None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint["state_dict"] = current_names(checkpoint["state_dict"])
    return checkpoint


def check_state_fits(own: Mapping[str, Any], state: Mapping[str, Any], source: str) -> None:
    """One :class:`CheckpointError` naming the parameters whose names or shapes differ between a
    model's ``state_dict`` (``own``) and a checkpoint's (``state``); ``source`` says where the
    model's config came from."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(own[k].shape) != tuple(state[k].shape)
    ]
    parts = [
        f"{label} {', '.join(keys[:3])}{f' (+{len(keys) - 3} more)' if len(keys) > 3 else ''}"
        for label, keys in (("shape differs:", shapes), ("missing:", missing), ("unexpected:", unexpected))
        if keys
    ]
    if parts:
        raise CheckpointError(
            f"the checkpoint does not fit the model built from {source}: {'; '.join(parts)}"
        )
