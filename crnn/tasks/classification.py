"""Image classification (CIFAR-100): cross-entropy, top-1 and top-5 accuracy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from crnn.constraints import Fraction
from crnn.tasks.base import BaseTask, OptimizerFactory, SchedulerFactory


class ClassificationTask(BaseTask):
    """Trains ``net`` (``backbone -> (2-D layer in place of chosen blocks) -> head``, a
    :class:`crnn.models.Classifier`: ``(B, 3, H, W) -> (B, num_classes)``) with cross-entropy.

    Logs ``{train,val,test}/loss``, ``{train,val,test}/acc1`` and ``{val,test}/acc5`` (torchmetrics,
    epoch-level). Batches are ``(images (B, 3, H, W) float, labels (B,) int64)``.
    """

    task_name = "classification"

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        input_shape: tuple[int, int, int],
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        label_smoothing: Fraction = 0.0,
        monitor: str = "val/acc1",
        monitor_mode: str = "max",
        config: Mapping[str, Any] | None = None,
    ):
        super().__init__(net, optimizer, scheduler, input_shape, monitor, monitor_mode, config)
        self.label_smoothing = label_smoothing
        for stage in ("val", "test"):
            for k in (1, 5):
                setattr(
                    self,
                    f"{stage}_acc{k}",
                    MulticlassAccuracy(num_classes, top_k=min(k, num_classes), average="micro"),
                )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(labels))
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        self.log("train/acc1", accuracy, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def _evaluate(self, batch, stage: str):
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        n = len(labels)
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=n)
        for k in (1, 5):
            metric = getattr(self, f"{stage}_acc{k}")
            metric(logits, labels)
            self.log(f"{stage}/acc{k}", metric, prog_bar=k == 1, batch_size=n)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")
