"""Classification media for loggers that take it (W&B with ``logger.wandb.media=true``): a small
table of sample predictions each validation epoch and a confusion matrix at the end."""

from __future__ import annotations

import lightning as L
import torch


class ClassificationMedia(L.Callback):
    """Captures the model's logits on validation batches (a forward hook: no second pass) and
    hands the loggers whose ``media`` is true:

    - each validation epoch, ``val/predictions``: the first ``num_images`` images with their true
      and predicted class and confidence (``log_table``);
    - at the end of training, ``val/confusion_matrix`` of the last validation epoch
      (``log_confusion_matrix``).

    Batches that are not ``(images (B, C, H, W), labels (B,))`` (detection) are ignored.
    """

    def __init__(self, num_images: int = 16):
        self.num_images = num_images
        self._hook = None
        self._logits: torch.Tensor | None = None
        self.labels: list[torch.Tensor] = []
        self.preds: list[torch.Tensor] = []
        self.rows: list[list] = []

    @staticmethod
    def _media_loggers(trainer) -> list:
        return [lg for lg in trainer.loggers if getattr(lg, "media", False)]

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.labels, self.preds, self.rows = [], [], []
        if trainer.sanity_checking or not self._media_loggers(trainer):
            return

        def keep(module, inputs, output) -> None:
            self._logits = output.detach() if isinstance(output, torch.Tensor) else None

        self._hook = pl_module.register_forward_hook(keep)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        logits, self._logits = self._logits, None
        if self._hook is None or logits is None or not isinstance(batch, (list, tuple)):
            return
        images, labels = batch[0], batch[1]
        if not (isinstance(labels, torch.Tensor) and labels.ndim == 1 and logits.shape[0] == len(labels)):
            return
        confidence, predicted = logits.float().softmax(dim=1).max(dim=1)
        self.labels.append(labels.cpu())
        self.preds.append(predicted.cpu())
        names = getattr(trainer.datamodule, "class_names", None)
        for i in range(min(len(labels), self.num_images - len(self.rows))):
            image = images[i].float()
            image = (image - image.min()) / (image.max() - image.min() + 1e-8)
            label, pred = int(labels[i]), int(predicted[i])
            self.rows.append(
                [
                    image.cpu(),
                    names[label] if names else label,
                    names[pred] if names else pred,
                    float(confidence[i]),
                ]
            )

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if not self.rows:
            return
        for logger in self._media_loggers(trainer):
            logger.log_table("val/predictions", ["image", "true", "predicted", "confidence"], self.rows)

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.labels:
            return
        names = getattr(trainer.datamodule, "class_names", None)
        for logger in self._media_loggers(trainer):
            log_matrix = getattr(logger, "log_confusion_matrix", None)
            if log_matrix is not None:
                log_matrix("val/confusion_matrix", torch.cat(self.labels), torch.cat(self.preds), names)
