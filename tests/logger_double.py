"""A Lightning logger that records what crnn hands it (a test double for W&B, TensorBoard, ...)."""

from __future__ import annotations

from typing import Any, ClassVar

from lightning.pytorch.loggers.logger import Logger


class RecordingLogger(Logger):
    instances: ClassVar[list[RecordingLogger]] = []

    def __init__(self) -> None:
        super().__init__()
        self.hyperparams: dict[str, Any] = {}
        self.metrics: list[tuple[int | None, dict[str, float]]] = []
        self.best: dict[str, str] = {}
        self.exit_code: int | None = None
        RecordingLogger.instances.append(self)

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.hyperparams.update(dict(params))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def define_best(self, key: str, mode: str) -> None:
        self.best[key] = mode

    def finish(self, exit_code: int) -> None:
        self.exit_code = exit_code

    def last(self, key: str) -> Any:
        return [m[key] for _, m in self.metrics if key in m][-1]


class FailedLogger(RecordingLogger):
    """A logger whose W&B calls failed mid-run, as crnn's ``WandbLogger`` after an error (``failed``)."""

    failed = "log_metrics: ConnectionResetError: the W&B service is gone"
