"""Object detection (COCO layout): FCOS with conv or recurrent head towers, COCOeval metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crnn.models.detection import FCOSDetector, FCOSNetwork
from crnn.records import write_json_atomic
from crnn.tasks.base import BaseTask, OptimizerFactory, SchedulerFactory
from crnn.tasks.coco_eval import evaluate_detections, gather_detections, to_coco_detections

log = logging.getLogger("crnn")

__all__ = ["DetectionTask"]

LOGGED = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "F1")
"""COCOeval numbers logged as ``{val,test}/<name>``."""


class DetectionTask(BaseTask):
    """Trains ``net``, a :class:`crnn.models.detection.FCOSDetector`.

    Batches are ``(list of images (3, h, w) in [0, 1], list of targets)`` from
    :class:`crnn.data.COCODataModule`. Training logs ``train/loss`` (sum) and its parts
    ``train/loss_cls`` (sigmoid focal), ``train/loss_box`` (GIoU), ``train/loss_ctr``
    (centerness BCE). Validation (and test, on the same split) collects every image's detections
    in original-image coordinates, gathers them from all processes and runs faster-coco-eval's COCOeval
    once per epoch: ``{val,test}/{AP,AP50,AP75,APs,APm,APl,AR100,F1}`` plus ``eval_time_s`` and
    ``num_detections``; the detections JSON goes to the run folder (``trainer.default_root_dir``).
    :attr:`per_class_ap` keeps the last validation epoch's AP of each class (by name); images with
    boxes and the per-class table go to loggers by :class:`crnn.callbacks.DetectionMedia`.
    """

    task_name = "detection"
    net: FCOSDetector

    def __init__(
        self,
        net: FCOSDetector,
        input_shape: tuple[int, int, int],
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        monitor: str = "val/AP",
        monitor_mode: str = "max",
        save_detections: bool = True,
        config: Mapping[str, Any] | None = None,
    ):
        super().__init__(net, optimizer, scheduler, input_shape, monitor, monitor_mode, config)
        self.save_detections = save_detections  # <run folder>/detections_{val,test}.json (rank 0)
        self.image_size = max(int(s) for s in input_shape[1:])
        self._detections: dict[int, list[dict[str, Any]]] = {}
        self._eval_time = 0.0
        self.per_class_ap: dict[str, float | None] = {}

    # ------------------------------------------------------------------ model
    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None):
        """Training mode: dict of losses; eval mode: per-image ``{boxes, scores, labels}``."""
        return self.net(images, targets)

    def complexity_inputs(self) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        """Backbone + FPN + head (:class:`FCOSNetwork`) on one ``input_shape`` image.

        Counted: every conv / recurrent layer of the backbone, FPN and both towers and predictors
        on all pyramid levels. Not counted (no weight MACs): resize and normalisation, point
        generation, box decoding, top-k and NMS.
        """
        return FCOSNetwork(self.net), (torch.zeros(1, 3, self.image_size, self.image_size),)

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx):
        images, targets = batch
        losses = self.net(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        loss = sum(losses.values())
        n = len(images)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        for key, name in (("classification", "cls"), ("bbox_regression", "box"), ("bbox_ctrness", "ctr")):
            self.log(f"train/loss_{name}", losses[key], on_step=False, on_epoch=True, batch_size=n)
        return loss

    # ------------------------------------------------------------------ evaluation
    def _eval_dataset(self, stage: str):
        loaders = self.trainer.val_dataloaders if stage == "val" else self.trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        dataset = getattr(loader, "dataset", None)
        while dataset is not None and not hasattr(dataset, "coco") and hasattr(dataset, "dataset"):
            dataset = dataset.dataset  # torch Subset
        if dataset is None or not hasattr(dataset, "coco") or not hasattr(dataset, "label_to_cat_id"):
            raise TypeError(
                "DetectionTask evaluates on a COCO-layout dataset (crnn.data.CocoDetectionDataset); "
                f"the {stage} loader holds {type(dataset).__name__}"
            )
        return dataset

    def _start_eval(self) -> None:
        self._detections = {}
        self._eval_time = 0.0

    def _eval_step(self, batch, batch_idx: int, stage: str) -> None:
        images, targets = batch
        start = time.perf_counter()
        outputs = self.net(images)
        label_to_cat = self._eval_dataset(stage).label_to_cat_id
        for image, target, out in zip(images, targets, outputs, strict=False):
            h, w = image.shape[-2:]
            oh, ow = (int(v) for v in target["orig_size"])
            self._detections[int(target["image_id"])] = to_coco_detections(
                target["image_id"], out["boxes"], out["scores"], out["labels"], label_to_cat, (ow / w, oh / h)
            )
        self._eval_time += time.perf_counter() - start

    def _finish_eval(self, stage: str) -> None:
        dataset = self._eval_dataset(stage)
        merged = gather_detections(self._detections)
        detections = [d for image_id in sorted(merged) for d in merged[image_id]]
        start = time.perf_counter()
        metrics = evaluate_detections(
            dataset.coco, detections, image_ids=merged.keys(), cat_ids=dataset.label_to_cat_id
        )
        coco_time = time.perf_counter() - start
        if stage == "val" and not self.trainer.sanity_checking:
            names = dict(zip(dataset.label_to_cat_id, dataset.class_names, strict=True))
            self.per_class_ap = {names[cat]: ap for cat, ap in metrics["per_class_AP"].items()}
        for name in LOGGED:
            self.log(f"{stage}/{name}", metrics[name], prog_bar=name in ("AP", "AP50"), sync_dist=True)
        self.log(f"{stage}/num_detections", metrics["num_detections"], sync_dist=True)
        self.log(f"{stage}/eval_time_s", self._eval_time + coco_time, sync_dist=True)
        log.info(
            "%s%s: AP %.4f AP50 %.4f F1 %.4f on %d images (%d detections; inference %.1fs, COCOeval %.1fs)",
            stage,
            f" epoch {self.current_epoch}" if stage == "val" else "",
            metrics["AP"],
            metrics["AP50"],
            metrics["F1"],
            len(merged),
            len(detections),
            self._eval_time,
            coco_time,
        )
        if self.save_detections and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            write_json_atomic(
                Path(self.trainer.default_root_dir) / f"detections_{stage}.json", detections, indent=None
            )
        self._detections = {}

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self._finish_eval("val")

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")
