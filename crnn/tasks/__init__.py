"""LightningModules: one per task."""

from crnn.tasks.base import BaseTask
from crnn.tasks.classification import ClassificationTask

__all__ = ["BaseTask", "ClassificationTask"]

from crnn.tasks.detection import DetectionTask  # noqa: E402

__all__ += ["DetectionTask"]
