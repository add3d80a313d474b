"""LightningModules: one per task."""

from crnn.tasks.base import BaseTask
from crnn.tasks.classification import ClassificationTask
from crnn.tasks.detection import DetectionTask

__all__ = ["BaseTask", "ClassificationTask", "DetectionTask"]
