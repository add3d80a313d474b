"""What every crnn LightningModule shares: optimiser and schedule from config, complexity inputs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn


def plain(cfg: Any) -> Any:
    """A config node as plain containers (what ``save_hyperparameters`` should store)."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def build_optimizer(params, name: str = "sgd", lr: float = 0.1, weight_decay: float = 5e-4, **kwargs):
    """``sgd`` (``momentum``, ``nesterov``) or ``adamw`` (``betas``)."""
    if name == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            weight_decay=weight_decay,
            momentum=kwargs.get("momentum", 0.9),
            nesterov=kwargs.get("nesterov", True),
        )
    if name == "adamw":
        return torch.optim.AdamW(
            params, lr=lr, weight_decay=weight_decay, betas=tuple(kwargs.get("betas", (0.9, 0.999)))
        )
    raise ValueError(f"task.optimizer.name={name!r}: valid choices are sgd, adamw")


def lr_lambda(
    total_steps: int,
    steps_per_epoch: int,
    name: str = "cosine",
    warmup_epochs: float = 0.0,
    milestones: list[int] | None = None,
    gamma: float = 0.1,
    min_lr_ratio: float = 0.0,
):
    """Per-step multiplier of the base learning rate: linear warm-up over ``warmup_epochs``,
    then ``cosine`` (to ``min_lr_ratio``), ``multistep`` (x ``gamma`` at each epoch in
    ``milestones``) or ``constant``."""
    if name not in ("cosine", "multistep", "constant"):
        raise ValueError(f"task.scheduler.name={name!r}: valid choices are cosine, multistep, constant")
    warmup = int(round(warmup_epochs * steps_per_epoch))
    milestone_steps = sorted(m * steps_per_epoch for m in (milestones or []))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if name == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if name == "multistep":
            return gamma ** sum(step >= m for m in milestone_steps)
        return 1.0

    return factor


class BaseTask(L.LightningModule):
    """Shared by the classification and detection tasks.

    Subclasses set ``self.net`` and log their metrics; this class builds the optimiser and the
    per-step learning-rate schedule from the ``optimizer`` and ``scheduler`` config dicts and
    tells the entry point what to count (:meth:`complexity_inputs`).
    """

    net: nn.Module

    def __init__(
        self,
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any],
        input_shape: tuple[int, int, int],
        monitor: str,
        monitor_mode: str = "max",
    ):
        super().__init__()
        self.optimizer_cfg = dict(plain(optimizer))
        self.scheduler_cfg = dict(plain(scheduler))
        self.input_shape = tuple(input_shape)
        self.monitor, self.monitor_mode = monitor, monitor_mode

    def save_task_hyperparameters(
        self, backbone: Any, rnn: Any, head: Any, num_classes: int, **extra: Any
    ) -> None:
        """Store everything ``load_from_checkpoint`` needs to rebuild the task, as plain containers:
        the model's config nodes, the class count and the settings :class:`BaseTask` holds,
        plus the subclass's own ``extra`` arguments."""
        self.save_hyperparameters(
            {
                "backbone": plain(backbone),
                "rnn": plain(rnn),
                "head": plain(head),
                "num_classes": num_classes,
                "input_shape": list(self.input_shape),
                "optimizer": self.optimizer_cfg,
                "scheduler": self.scheduler_cfg,
                "monitor": self.monitor,
                "monitor_mode": self.monitor_mode,
                **extra,
            },
            logger=False,  # loggers get the run's whole config from crnn.callbacks.RunRecord
        )

    def complexity_inputs(self) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        """The module and batch-1 inputs whose params and MACs describe this model."""
        return self.net, (torch.zeros(1, *self.input_shape),)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.parameters(), **self.optimizer_cfg)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(total, per_epoch, **self.scheduler_cfg)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
