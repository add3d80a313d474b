"""A callback that signals its own process (SIGKILL by default) at a chosen point (tests of exact resume)."""

from __future__ import annotations

import os
import signal as signal_module

import lightning as L


class SelfKill(L.Callback):
    """``at``: ``train`` (after training batch ``batch`` of ``epoch``), ``val`` (after validation
    batch ``batch`` of ``epoch``) or ``epoch_start`` (start of ``epoch``: right after the previous
    epoch's checkpoints); ``signal``: its name (``SIGTERM`` is what a scheduler sends)."""

    def __init__(self, at: str, epoch: int, batch: int = 0, signal: str = "SIGKILL"):
        self.at, self.epoch, self.batch = at, epoch, batch
        self.signal = getattr(signal_module, signal)
        self.sent = False

    def _kill(self, trainer, at: str, batch: int = 0) -> None:
        if (
            (at, trainer.current_epoch, batch)
            == (
                self.at,
                self.epoch,
                self.batch,
            )
            and not trainer.sanity_checking
            and not self.sent
        ):
            self.sent = True  # a caught signal lets the run go on to the next batch: send it once
            os.kill(os.getpid(), self.signal)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._kill(trainer, "train", batch_idx)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._kill(trainer, "val", batch_idx)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._kill(trainer, "epoch_start")
