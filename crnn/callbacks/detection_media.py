"""Detection media for loggers that take it (``media`` true: W&B with ``logger.wandb.media=true``):
validation images with predicted and true boxes every few epochs, and a per-class AP table at the
end of the run. The counterpart of :class:`crnn.callbacks.ClassificationMedia`."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


class DetectionMedia(L.Callback):
    """Hands the loggers whose ``media`` is true:

    - every ``every_n_epochs`` validation epochs (and the last), ``val/images``: the first
      ``num_images`` images of the first validation batch with their true boxes and the predicted
      ones scoring ``score_thresh`` or more (``log_image(key, images, step, boxes=, caption=)``,
      boxes in W&B's ``box_data`` layout, which Lightning's W&B logger passes on; the outputs are
      caught by a forward hook on ``net``: no second pass);
    - at the end of training, ``val/per_class_AP``: one row per category, its AP of the last
      validation epoch (``log_table``; :attr:`crnn.tasks.DetectionTask.per_class_ap`).

    Tasks without ``per_class_ap`` (classification) are left alone.
    """

    def __init__(self, every_n_epochs: int = 5, num_images: int = 4, score_thresh: float = 0.3):
        self.every_n_epochs, self.num_images, self.score_thresh = every_n_epochs, num_images, score_thresh
        self._hook = None
        self._outputs: list[dict[str, torch.Tensor]] | None = None

    @staticmethod
    def _media_loggers(trainer, method: str) -> list:
        return [lg for lg in trainer.loggers if getattr(lg, "media", False) and hasattr(lg, method)]

    def _images_due(self, trainer, pl_module) -> bool:
        if self.every_n_epochs <= 0 or trainer.sanity_checking or not hasattr(pl_module, "per_class_ap"):
            return False
        epoch = trainer.current_epoch
        return epoch % self.every_n_epochs == 0 or epoch == (trainer.max_epochs or 0) - 1

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._outputs = None
        if not self._images_due(trainer, pl_module) or not self._media_loggers(trainer, "log_image"):
            return

        def keep(module, inputs, output) -> None:
            self._outputs = output if isinstance(output, list) else None

        self._hook = pl_module.net.register_forward_hook(keep)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self._hook is None:
            return
        self._hook.remove()  # the first batch only
        self._hook = None
        predicted, self._outputs = self._outputs, None
        if predicted is None:
            return
        images, targets = batch
        names = dict(enumerate(getattr(trainer.datamodule, "class_names", None) or []))
        arrays, boxes, captions = [], [], []
        for image, target, out in list(zip(images, targets, predicted, strict=False))[: self.num_images]:
            keep = out["scores"] >= self.score_thresh
            arrays.append((image.detach().float().cpu().clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy())
            boxes.append(
                {
                    "predictions": _box_data(
                        out["boxes"][keep], out["labels"][keep], names, out["scores"][keep]
                    ),
                    "ground_truth": _box_data(target["boxes"], target["labels"], names),
                }
            )
            captions.append(f"image {int(target['image_id'])} ({image.shape[-1]}x{image.shape[-2]})")
        for logger in self._media_loggers(trainer, "log_image"):
            logger.log_image("val/images", arrays, step=trainer.global_step, boxes=boxes, caption=captions)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._hook is not None:  # no batch ran
            self._hook.remove()
            self._hook = None

    def on_train_end(self, trainer, pl_module) -> None:
        per_class = getattr(pl_module, "per_class_ap", None)
        if not per_class:
            return
        rows = [[name, ap] for name, ap in per_class.items()]
        for logger in self._media_loggers(trainer, "log_table"):
            logger.log_table("val/per_class_AP", ["class", "AP"], rows)


def _box_data(
    xyxy: torch.Tensor, labels: torch.Tensor, names: dict[int, str], scores: torch.Tensor | None = None
) -> dict[str, Any]:
    """Boxes ``(N, 4)`` xyxy in pixels as W&B's ``{"box_data": [...], "class_labels": {...}}``."""
    data = []
    for k, (box, label) in enumerate(zip(xyxy.tolist(), labels.tolist(), strict=True)):
        item = {
            "position": {"minX": box[0], "minY": box[1], "maxX": box[2], "maxY": box[3]},
            "domain": "pixel",
            "class_id": int(label),
            "box_caption": names.get(int(label), str(label)),
        }
        if scores is not None:
            item["scores"] = {"score": float(scores[k])}
            item["box_caption"] += f" {float(scores[k]):.2f}"
        data.append(item)
    return {"box_data": data, "class_labels": names}
