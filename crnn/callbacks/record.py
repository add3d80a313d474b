"""The run's record: ``metrics.json`` (which epoch each number comes from), best-so-far values,
what every logger receives (clean config, params and MACs), and the config stored in checkpoints."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from crnn.checkpoints import CONFIG_KEY
from crnn.records import MetricsFile
from crnn.run_config import plain_config

log = logging.getLogger("crnn")


def number(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def epoch_values(metrics: Mapping[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
    """The epoch value of each metric of ``metrics`` (Lightning's ``callback_metrics``) whose name starts
    with one of ``prefixes``, under its name without ``_epoch``. A metric logged both per step and per
    epoch appears as ``x_step`` (left out), ``x_epoch`` and ``x``: ``x_epoch`` wins (``x`` may hold a
    step value)."""
    values: dict[str, Any] = {}
    for key, value in metrics.items():
        if key.startswith(prefixes) and not key.endswith("_step"):
            name = key.removesuffix("_epoch")
            if key.endswith("_epoch") or name not in values:
                values[name] = value
    return values


def logger_config(cfg: Mapping[str, Any], picked: Mapping[str, Any]) -> dict[str, Any]:
    """The config as loggers get it: the group choices and the seed as top-level keys (``backbone``,
    ``rnn``, ``cell``, ``head``, ``data``, ``seed``) to group and filter by, and the resolved config
    once under ``cfg`` (W&B shows ``cfg.backbone.depth``), without ``_target_``/``_partial_`` keys,
    Hydra's node, paths and the nodes the task repeats (``task.backbone`` ...)."""

    def clean(node: Any) -> Any:
        if isinstance(node, Mapping):
            return {k: clean(v) for k, v in node.items() if not str(k).startswith("_")}
        return [clean(v) for v in node] if isinstance(node, list) else node

    plain = plain_config(cfg)
    plain = {k: v for k, v in plain.items() if k not in ("hydra", "paths", "logger", "callbacks")}
    task = plain.get("task") or {}
    plain["task"] = {k: v for k, v in task.items() if k not in ("backbone", "rnn", "head")}
    top = {k: v for k, v in picked.items() if v is not None}
    return {**top, "seed": plain.get("seed"), "cfg": clean(plain)}


class RunRecord(L.Callback):
    """Writes the run's ``metrics.json`` as training goes, and logs ``<monitor>_best`` every epoch.

    At each training epoch end (validation has run by then): ``val/*`` and ``train/*`` are the
    last epoch's (``last_epoch``); ``<monitor>_best`` (e.g. ``val/acc1_best``) is the best so far,
    ``best_epoch`` its epoch and ``best`` every validation metric of that epoch. The state goes into
    checkpoints, so a resumed run continues the same record. On fit start every logger gets the
    clean config (:func:`logger_config`) and ``summary`` (params, MACs).
    """

    def __init__(
        self,
        metrics: MetricsFile,
        monitor: str,
        mode: str,
        config: Mapping[str, Any] | None = None,
        summary: Mapping[str, Any] | None = None,
    ):
        self.metrics, self.monitor, self.mode = metrics, monitor, mode
        self.config, self.summary = dict(config or {}), dict(summary or {})
        self.best: dict[str, Any] = {}
        self.last_epoch: int | None = None

    @property
    def best_key(self) -> str:
        return f"{self.monitor}_best"

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.last_epoch = dict(state_dict["best"]), state_dict["last_epoch"]

    def on_fit_start(self, trainer, pl_module) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams({**self.config, **self.summary})
            logger.log_metrics(dict(self.summary), step=trainer.global_step)
            define = getattr(logger, "define_best", None)  # W&B: summary of the best-so-far metric
            if define is not None:
                define(self.best_key, self.mode)
            watch = getattr(logger, "watch_mode", None)  # W&B: logger.wandb.watch=gradients|parameters|all
            if watch:
                logger.watch(pl_module, log=watch)

    def _improved(self, value: float) -> bool:
        if self.best.get(self.monitor) is None or value != value:
            return value == value and self.best.get(self.monitor) is None
        return value > self.best[self.monitor] if self.mode == "max" else value < self.best[self.monitor]

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: number(v) for k, v in trainer.callback_metrics.items()}
        val = {k: v for k, v in metrics.items() if k.startswith("val/") and k != self.best_key}
        train = epoch_values(metrics, ("train/",))
        epoch = trainer.current_epoch
        if self.monitor in val and self._improved(float(val[self.monitor])):
            self.best = {"epoch": epoch, **val}
        self.last_epoch = epoch
        if self.best:
            best_value = {self.best_key: self.best[self.monitor]}
            trainer.callback_metrics.update({k: _tensor(v) for k, v in best_value.items()})
            for logger in trainer.loggers:
                logger.log_metrics(best_value, step=trainer.global_step)
        step = trainer.global_step  # optimizer steps so far
        self.metrics.update(**val, **train, **self.best_fields(), last_epoch=epoch, last_step=step)

    def best_fields(self) -> dict[str, Any]:
        if not self.best:
            return {}
        return {self.best_key: self.best[self.monitor], "best_epoch": self.best["epoch"], "best": self.best}


def _tensor(value: Any):
    import torch

    return torch.tensor(float(value))


class StoreConfig(L.Callback):
    """Put the run's resolved config and group choices into every checkpoint so that one file
    is enough to rebuild the task and its data (``crnn-eval ckpt_path=...``)."""

    def __init__(self, cfg: DictConfig, picked: Mapping[str, Any]):
        self.stored = {"config": OmegaConf.to_container(cfg, resolve=True), "choices": dict(picked)}

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        checkpoint[CONFIG_KEY] = self.stored
