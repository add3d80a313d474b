"""Training throughput, logged each epoch."""

from __future__ import annotations

import time

import lightning as L
import torch


class TrainThroughput(L.Callback):
    """Logs ``train/images_per_s`` and ``train/epoch_time_s`` each epoch.

    The clock runs from the epoch's start to its last training batch (data loading, forward,
    backward and optimiser step; validation excluded), synchronising CUDA before the last reading.
    """

    def __init__(self) -> None:
        self.start = self.last = 0.0
        self.images = 0

    @staticmethod
    def _now(trainer: L.Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = self.last = self._now(trainer)
        self.images = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        images = batch[0]
        self.images += len(images)
        # CUDA synchronises on the epoch's last batch only: a sync every step would stall the very
        # pipeline being timed (an epoch cut short by max_steps reads the clock unsynchronised)
        last = batch_idx + 1 >= trainer.num_training_batches
        self.last = self._now(trainer) if last else time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        seconds = self.last - self.start
        if self.images and seconds > 0:
            pl_module.log("train/images_per_s", self.images * trainer.world_size / seconds)
            pl_module.log("train/epoch_time_s", seconds)
