"""The run-folder rule: which folder a launch writes to, what it resumes, and when it refuses.

- A fresh launch writes to the folder Hydra made for it.
- ``resume=true`` (default) and a folder holding ``checkpoints/last.ckpt`` (``hydra.run.dir=<run>``,
  a re-launched sweep): the run continues there, from ``last.ckpt``, appending to its ``train.log``.
- ``ckpt_path=<run>/checkpoints/<x>.ckpt`` with the same config (``trainer.*`` may differ, e.g. more
  epochs): that run continues in its own folder. With another config: one error naming the
  differing keys; ``finetune=true`` starts a new run (its own folder) from the checkpoint's weights
  and never touches the other run's files.
- A folder whose run is completed: the same config (same ``config_hash``) is skipped; another
  config is refused with the differing keys (the completed record is never relabelled: Hydra's
  rewritten ``.hydra/`` files are put back).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from crnn.checkpoints import CONFIG_KEY, load_checkpoint
from crnn.errors import ConfigError
from crnn.run_config import RUN_LOCATION_KEYS, config_diff

log = logging.getLogger("crnn.train")

RESUMABLE_DIFFERENCES = ("trainer", "logger", "callbacks", "test_after_fit", "debug")
"""Top-level keys a resumed run may change (more epochs, another logger)."""


@dataclass
class Launch:
    run_dir: Path
    resume_from: Path | None = None  # full training state of this same run
    weights_from: Path | None = None  # finetune: weights only, into a new run
    previous_config: dict[str, Any] | None = None  # of the run in run_dir, when still to compare


def _stored_config(ckpt: Path, trust: bool) -> dict[str, Any] | None:
    stored = load_checkpoint(ckpt, trust=trust).get(CONFIG_KEY)
    return None if stored is None else stored["config"]


def plan_launch(cfg: DictConfig, output_dir: Path) -> Launch:
    """Where this launch writes and what it starts from (see the module docstring)."""
    trust = bool(cfg.get("trust_checkpoint"))
    if cfg.get("ckpt_path"):
        ckpt = Path(cfg.ckpt_path).expanduser().resolve()
        if not ckpt.is_file():
            raise ConfigError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
        if cfg.get("finetune"):
            return Launch(output_dir, weights_from=ckpt)
        stored = _stored_config(ckpt, trust)
        if stored is None:
            raise ConfigError(f"ckpt_path={ckpt}: holds no crnn config; finetune=true loads its weights")
        diff = config_diff(stored, cfg, RUN_LOCATION_KEYS + RESUMABLE_DIFFERENCES)
        if diff:
            raise ConfigError(
                f"ckpt_path={ckpt} was trained with another config ({'; '.join(diff[:8])}"
                f"{'; ...' if len(diff) > 8 else ''}): give the same settings to resume that run, or "
                "finetune=true to start a new run from its weights"
            )
        run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else output_dir
        return Launch(run_dir, resume_from=ckpt)  # compared here, before anything moves into run_dir
    last = output_dir / "checkpoints" / "last.ckpt"
    previous = _previous_config(output_dir, last, trust)
    return Launch(
        output_dir,
        resume_from=last if cfg.get("resume") and last.is_file() else None,
        previous_config=previous,
    )


def _previous_config(run_dir: Path, last: Path, trust: bool) -> dict[str, Any] | None:
    saved = run_dir / "config.yaml"
    if saved.is_file():
        return OmegaConf.to_container(OmegaConf.load(saved), resolve=False)  # type: ignore[return-value]
    return _stored_config(last, trust) if last.is_file() else None


def check_relaunch(cfg: DictConfig, launch: Launch, completed: bool) -> list[str]:
    """The differences that forbid continuing in ``launch.run_dir`` (empty: fine). Re-launching into
    a completed run compares every setting; resuming an unfinished run may change
    :data:`RESUMABLE_DIFFERENCES`. Continuing a run by ``ckpt_path`` (e.g. more epochs, the same
    differences allowed) was compared by :func:`plan_launch`; a finetune starts a new run."""
    if launch.previous_config is None:
        return []
    ignore = RUN_LOCATION_KEYS + (() if completed else RESUMABLE_DIFFERENCES)
    current = OmegaConf.to_container(cfg, resolve=True)
    return config_diff(launch.previous_config, current, ignore)  # type: ignore[arg-type]


def hydra_files(run_dir: Path) -> Path:
    return run_dir / ".hydra"


def keep_hydra_files(run_dir: Path) -> None:
    """Copy the first launch's ``.hydra/*.yaml`` to ``.hydra/recorded/`` (what the record was made with)."""
    src, dst = hydra_files(run_dir), hydra_files(run_dir) / "recorded"
    if src.is_dir() and not dst.exists():
        dst.mkdir()
        for f in src.glob("*.yaml"):
            shutil.copy2(f, dst / f.name)


def restore_hydra_files(run_dir: Path) -> None:
    """Put back the ``.hydra/*.yaml`` of the launch that made the record (Hydra rewrote them)."""
    kept = hydra_files(run_dir) / "recorded"
    for f in kept.glob("*.yaml") if kept.is_dir() else []:
        shutil.copy2(f, hydra_files(run_dir) / f.name)


def move_log_to(new_run_dir: Path, hydra_dir: Path) -> None:
    """Send this process's log file to ``<new_run_dir>/train.log`` (appending) and remove the folder
    Hydra made for this launch when it holds nothing else than its config and that log."""
    target = new_run_dir / "train.log"
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == hydra_dir:
            handler.acquire()
            try:
                handler.close()
                old = Path(handler.baseFilename)
                with target.open("a") as out:
                    out.write(old.read_text() if old.is_file() else "")
                old.unlink(missing_ok=True)
                handler.baseFilename, handler.mode = str(target), "a"
                handler.stream = handler._open()
            finally:
                handler.release()
    leftovers = [p.name for p in hydra_dir.iterdir()] if hydra_dir.is_dir() else []
    if set(leftovers) <= {".hydra", "train.log"} and hydra_dir != new_run_dir:
        shutil.rmtree(hydra_dir, ignore_errors=True)
