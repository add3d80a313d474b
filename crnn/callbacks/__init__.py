"""Lightning callbacks of crnn: the run's record and checkpoints, guards, progress, throughput, media."""

from crnn.callbacks.checkpoint import RunCheckpoint
from crnn.callbacks.detection_media import DetectionMedia
from crnn.callbacks.guards import GlobalRngState, NonFiniteGuard, NonFiniteLossError
from crnn.callbacks.media import ClassificationMedia
from crnn.callbacks.progress import ProgressLog
from crnn.callbacks.record import RunRecord, StoreConfig, logger_config
from crnn.callbacks.throughput import TrainThroughput

__all__ = [
    "ClassificationMedia",
    "DetectionMedia",
    "GlobalRngState",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "ProgressLog",
    "RunCheckpoint",
    "RunRecord",
    "StoreConfig",
    "TrainThroughput",
    "logger_config",
]
