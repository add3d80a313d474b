"""Run bookkeeping shared by the entry points: names, metrics.json, W&B mode, config printing."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("crnn")

CONFIG_KEY = "crnn_config"
"""Checkpoint key holding the resolved config of the run that wrote it (see :class:`StoreConfig`)."""


def project_root() -> Path:
    """The folder holding ``conf/`` (the repository root for an editable install)."""
    return Path(__file__).resolve().parents[1]


def choices(cfg: DictConfig) -> dict[str, str | None]:
    """The group choices of this run (``backbone``, ``rnn``, ``head``, ``data``, ...) and ``cell``."""
    from hydra.core.hydra_config import HydraConfig

    picked = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    out = {g: picked.get(g) for g in ("data", "task", "backbone", "rnn", "head", "experiment")}
    out["cell"] = cfg.get("rnn", {}).get("cell")
    return out


def run_name(picked: Mapping[str, Any], seed: int | None) -> str:
    """``resnet20-sws_birnn-linear-s0``."""
    return f"{picked.get('backbone')}-{picked.get('rnn')}-{picked.get('head')}-s{seed}"


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=project_root(),
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=project_root(),
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_json_atomic(path: Path, data: Any, indent: int | None = 2) -> None:
    """Write JSON so that a reader never sees a half-written file (temp file + rename);
    ``indent=None`` for large machine-read files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=indent, sort_keys=indent is not None, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class MetricsFile:
    """``metrics.json`` of a run folder: one dict, updated and rewritten atomically."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def update(self, **values: Any) -> None:
        self.data.update(values)
        write_json_atomic(self.path, self.data)


def wandb_mode(requested: str | None) -> str:
    """``requested`` if set; else ``WANDB_MODE``; else online with credentials, offline without.

    Credentials are ``WANDB_API_KEY`` or a ``~/.netrc`` entry for the W&B host, which is what
    ``wandb login`` writes; without them W&B would prompt, so we go offline instead.
    """
    if requested:
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "online" if "api.wandb.ai" in netrc.read_text() else "offline"
    except OSError:
        return "offline"


def progress_bar_enabled(requested: bool | None) -> bool:
    """Bars on an interactive terminal only: not in a log file, a pipe or CI."""
    if requested is not None:
        return bool(requested)
    return sys.stderr.isatty() and not os.environ.get("CI")


def print_config(cfg: DictConfig, path: Path | None = None) -> None:
    """Print the composed config as a tree (rank 0) and save it resolved to ``path``."""
    from lightning.pytorch.utilities import rank_zero_only

    if path is not None and rank_zero_only.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, path, resolve=True)
    if rank_zero_only.rank != 0:
        return
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("config", guide_style="dim")
    for key, value in cfg.items():
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(str(key)).add(
            rich.syntax.Syntax(text, "yaml", theme="ansi_dark", background_color="default")
        )
    rich.print(tree)


class StoreConfig(L.Callback):
    """Put the run's resolved config and group choices into every checkpoint so that one file
    is enough to rebuild the task and its data (``crnn-eval ckpt_path=...``)."""

    def __init__(self, cfg: DictConfig, picked: Mapping[str, Any]):
        self.stored = {"config": OmegaConf.to_container(cfg, resolve=True), "choices": dict(picked)}

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        checkpoint[CONFIG_KEY] = self.stored
