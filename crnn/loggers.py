"""Weights & Biases as crnn uses it: never takes a run down, W&B's own settings respected."""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

from crnn.runtime import wandb_mode

log = logging.getLogger("crnn")


class WandbLogger(_LightningWandbLogger):
    """Lightning's :class:`~lightning.pytorch.loggers.WandbLogger` with crnn's run policy.

    - ``mode=None``: W&B's own choice (``WANDB_MODE``, ``wandb offline`` / ``wandb disabled``)
      wins; when nothing is set, online with credentials, offline without (never prompts).
    - Online start-up is bounded by ``init_timeout`` seconds; when W&B cannot be reached (or
      refuses the key) the run continues offline with one warning, to be synced later with
      ``wandb sync <run folder>/wandb/offline-run-*``.
    - ``media``: whether tasks may log images and tables (``logger.wandb.media``).
    - ``watch``: ``gradients`` | ``parameters`` | ``all`` | ``null`` (``wandb.watch`` the model).
    """

    def __init__(
        self,
        mode: str | None = None,
        init_timeout: float = 30.0,
        media: bool = True,
        watch: str | None = None,
        save_code: bool = False,
        **kwargs: Any,
    ):
        import wandb

        super().__init__(
            mode=wandb_mode(mode),
            settings=wandb.Settings(init_timeout=init_timeout, silent=True),
            save_code=save_code,
            **kwargs,
        )
        self.media, self.watch_mode = media, watch
        # Lightning passes ``anonymous=None``, which W&B answers with a deprecation warning every run.
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    @property
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        try:
            return super().experiment
        except Exception as err:  # W&B unreachable, refused key, timeout: the run goes on offline
            if self._wandb_init.get("mode") == "offline":
                raise
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            log.warning(
                "W&B could not start online (%s: %s); continuing offline (sync later with "
                "`wandb sync %s/wandb/offline-run-*`)",
                type(err).__name__,
                first,
                self.save_dir,
            )
            import wandb

            wandb.teardown()  # the failed online attempt keeps the run id "in use" in W&B's service
            self._wandb_init["mode"] = "offline"
            self._experiment = None
            return super().experiment

    def define_best(self, key: str, mode: str) -> None:
        """Summary of ``key`` = its best value, so that a dashboard sorted by it sorts by the best."""
        self.experiment.define_metric(key, summary="max" if mode == "max" else "min")

    def log_table(self, key: str, columns: list[str], data: list[list], **kwargs) -> None:
        """Lightning's ``log_table``, with image tensors ``(C, H, W)`` in [0, 1] as W&B images."""
        import wandb

        rows = [[wandb.Image(c) if hasattr(c, "ndim") and c.ndim == 3 else c for c in row] for row in data]
        super().log_table(key, columns, rows, **kwargs)

    def log_confusion_matrix(self, key: str, y_true, preds, class_names: list[str] | None = None) -> None:
        import wandb

        matrix = wandb.plot.confusion_matrix(
            y_true=y_true.tolist(),
            preds=preds.tolist(),
            class_names=list(class_names) if class_names else None,
        )
        self.experiment.log({key: matrix})

    def finish(self, exit_code: int) -> None:
        """End the W&B run with the process's exit code (non-zero: failed / killed in W&B)."""
        if self._experiment is not None:
            self._experiment.finish(exit_code=exit_code)
