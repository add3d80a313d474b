"""LightningModules: one per task."""

from crnn.tasks.base import BaseTask
from crnn.tasks.classification import ClassificationTask

__all__ = ["BaseTask", "ClassificationTask"]

from crnn.tasks.detection import DetectionTask  # noqa: E402
from crnn.tasks.detection_media import DetectionMedia  # noqa: E402

__all__ += ["DetectionMedia", "DetectionTask"]
