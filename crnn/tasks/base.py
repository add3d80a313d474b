"""What every crnn LightningModule shares: injected network, optimiser and schedule, complexity inputs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
"""``optimizer(params)``: a partial of a :mod:`torch.optim` class (``conf/task/optimizer/``)."""
SchedulerFactory = Callable[..., LRScheduler]
"""``scheduler(optimizer, total_steps=, steps_per_epoch=)``: a partial of :mod:`crnn.tasks.schedules`."""


class BaseTask(L.LightningModule):
    """Shared by the classification and detection tasks.

    Everything is injected (built by :func:`crnn.builders.build_task`): ``net`` (the model),
    ``optimizer`` and ``scheduler`` (partials, completed in :meth:`configure_optimizers`; the
    schedule steps once per optimisation step). ``config`` is the plain config the task was built
    from; it is stored as the hyperparameters, so a checkpoint rebuilds the task
    (:meth:`load_from_checkpoint`). Subclasses set ``task_name`` (its name in run labels) and log
    their metrics; :meth:`complexity_inputs` tells the entry points what to count.
    """

    task_name: str

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        input_shape: tuple[int, int, int],
        monitor: str,
        monitor_mode: str = "max",
        config: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(dict(config or {}), logger=False)  # loggers get the run config once
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.input_shape = tuple(input_shape)
        self.monitor, self.monitor_mode = monitor, monitor_mode

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path, map_location: Any = None, trust: bool = False
    ) -> BaseTask:
        """Lightning's entry to :func:`crnn.builders.task_from_checkpoint` (the one checkpoint reader:
        safe loading, the task rebuilt from its stored config, then its weights)."""
        from crnn.builders import task_from_checkpoint

        task = task_from_checkpoint(checkpoint_path, trust=trust).task
        if not isinstance(task, cls):
            raise TypeError(f"{checkpoint_path} holds a {type(task).__name__}, not a {cls.__name__}")
        return task.to(map_location) if isinstance(map_location, (str, torch.device)) else task

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed checkpoint's weights under today's names (Lightning loads them after this hook)."""
        from crnn.checkpoints import current_names

        checkpoint["state_dict"] = current_names(checkpoint["state_dict"])

    def complexity_inputs(self) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        """The module and batch-1 inputs whose params and MACs describe this model."""
        return self.net, (torch.zeros(1, *self.input_shape),)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        schedule = self.scheduler_factory(optimizer, total_steps=total, steps_per_epoch=per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
