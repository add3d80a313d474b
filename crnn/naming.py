"""Names: of a model (from its labels: shared by run names, exports, profiles and the results
tables), of a run and its tags, of its W&B group; and the group choices a run was launched with.
No torch here, and Hydra only inside the functions that read this job's facts, so that
:mod:`crnn.results` can use :func:`model_name` cheaply."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crnn.runtime import hydra_job

__all__ = ["MODEL_PARTS", "choices", "model_name", "run_name", "run_name_and_tags", "sweep_group"]

MODEL_PARTS = ("backbone", "rnn", "head")
"""The labels (group choices) that name a model, in name order."""


def model_name(labels: Mapping[str, Any]) -> str:
    """``resnet20-sws_birnn-linear``: the backbone, 2-D layer and head of ``labels`` (a run's group
    choices or the labels of what was built); a missing one reads ``None``."""
    return "-".join(str(labels.get(k)) for k in MODEL_PARTS)


def choices(cfg: Mapping[str, Any]) -> dict[str, str | None]:
    """The group choices of this run (``backbone``, ``rnn``, ``head``, ``data``, ...) and ``cell``:
    what was asked for. ``crnn-train`` labels its runs with what was built instead
    (``crnn.builders.run_labels``), keeping ``data`` and ``experiment`` from here."""
    from hydra.core.hydra_config import HydraConfig

    picked = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    out = {g: picked.get(g) for g in ("data", "task", "backbone", "rnn", "head", "experiment")}
    out["cell"] = cfg.get("rnn", {}).get("cell")
    return out


def run_name(picked: Mapping[str, Any], seed: int | None, swept: Mapping[str, Any] | None = None) -> str:
    """``resnet20-sws_birnn-linear-s0``, plus ``-key=value`` for each swept setting that the group
    choices do not already name (so that every job of a sweep has its own name)."""
    name = f"{model_name(picked)}-s{seed}"
    extra = [f"{k.split('.')[-1]}={v}" for k, v in (swept or {}).items() if k not in picked and k != "seed"]
    return "-".join([name, *extra])


def run_name_and_tags(cfg: Mapping[str, Any], labels: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The run's name and tags: the labels of what was built (``crnn.builders.run_labels`` plus
    ``data`` and ``experiment``), the seed and each swept setting, so that every job of a sweep is
    told apart (``-rf_layer=conv3``)."""
    swept = {k.split("/")[-1]: v for k, v in hydra_job().get("swept", {}).items()}
    swept = {k: v for k, v in swept.items() if v not in labels.values()}
    name = run_name(labels, cfg.get("seed"), swept)
    tags = [v for k, v in labels.items() if v and k != "task"] + [f"{k}={v}" for k, v in swept.items()]
    return name, tags + list(cfg.get("tags") or [])


def sweep_group(picked: Mapping[str, Any]) -> str | None:
    """W&B group: a sweep's is the experiment's name (or ``sweep``) plus a short id of its folder (a
    re-launched sweep keeps its group, two launches of one preset are two groups); a single run's is
    its experiment's name."""
    job = hydra_job()
    if not job.get("multirun"):
        return picked.get("experiment")
    sweep_id = hashlib.sha1(str(Path(job["sweep_dir"]).resolve()).encode()).hexdigest()[:6]
    return f"{picked.get('experiment') or 'sweep'}-{sweep_id}"
