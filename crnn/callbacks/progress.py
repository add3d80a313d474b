"""Progress that can be followed in a log file: one line per epoch (and every N steps)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import lightning as L

from crnn.callbacks.record import epoch_values

log = logging.getLogger("crnn.progress")


def _fmt(value: Any) -> str:
    value = value.item() if hasattr(value, "item") else value
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ProgressLog(L.Callback):
    """Logs (console and ``train.log``) one line per epoch: epoch, step, train loss/accuracy, the
    validation metrics, images/s, elapsed time and ETA; and, with ``every_n_steps`` > 0, one line
    every N training steps (for long epochs). Python logging, so it reaches a log file under a
    scheduler, ``nohup`` or a redirect, where the progress bar is off."""

    def __init__(self, every_n_steps: int = 0):
        self.every_n_steps = every_n_steps
        self.start = 0.0
        self.first_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start, self.first_step = time.monotonic(), trainer.global_step

    def _timing(self, trainer) -> str:
        elapsed = time.monotonic() - self.start
        done = trainer.global_step - self.first_step
        total = trainer.estimated_stepping_batches
        eta = elapsed / done * (total - trainer.global_step) if done and total != float("inf") else None
        return f"elapsed {_duration(elapsed)}" + (f", ETA {_duration(eta)}" if eta is not None else "")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps <= 0 or trainer.global_step % self.every_n_steps:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        log.info(
            "epoch %d step %d (batch %d/%s): train/loss %s, %s",
            trainer.current_epoch,
            trainer.global_step,
            batch_idx + 1,
            trainer.num_training_batches,
            _fmt(loss) if loss is not None else "?",
            self._timing(trainer),
        )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        shown = epoch_values(trainer.callback_metrics, ("train/", "val/"))
        text = ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(shown.items()))
        log.info(
            "epoch %d (of %s) step %d: %s; %s",
            trainer.current_epoch,
            trainer.max_epochs,
            trainer.global_step,
            text,
            self._timing(trainer),
        )
