"""Weights & Biases as crnn uses it: never takes a run down, W&B's own settings respected."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from typing import Any

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

from crnn.runtime import wandb_mode

log = logging.getLogger("crnn")

FALLBACK_MODE = {"disabled": None, "offline": "disabled", "dryrun": "disabled"}
"""The mode a run continues in when W&B cannot start in a mode (``offline`` for any other)."""


def _first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"


def _never_fatal(method):
    """A W&B call of the logger: its first error is one warning, and W&B is left alone after it."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        if self.failed:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as err:  # a dead service, a full disk, a W&B bug: the run goes on without W&B
            self.failed = f"{method.__name__}: {_first_line(err)}"
            log.warning(
                "W&B failed in %s (%s); the run goes on without W&B (metrics.json: wandb_error)",
                method.__name__,
                _first_line(err),
            )
            return None

    return guarded


class WandbLogger(_LightningWandbLogger):
    """Lightning's :class:`~lightning.pytorch.loggers.WandbLogger` with crnn's run policy.

    - ``mode=None``: W&B's own choice (``WANDB_MODE``, ``wandb offline`` / ``wandb disabled``)
      wins; when nothing is set, online with credentials, offline without (never prompts).
    - Online start-up is bounded by ``init_timeout`` seconds; when W&B cannot be reached (or
      refuses the key) the run continues offline with one warning, to be synced later with
      ``wandb sync <run folder>/wandb/offline-run-*``. The offline start has W&B's own bound
      (a loaded machine may need longer than a short online bound) and a W&B service of this
      process: one inherited from a parent (``WANDB_SERVICE``: a notebook, a test runner, a
      launcher that uses W&B) still holds the failed online run's id (``run ID ... is in use``).
    - When W&B cannot start offline either, the run continues without W&B (one more warning).
    - After start, the first error of a W&B call (a dead service, a full disk) is one warning and
      the run goes on without W&B (:attr:`failed`).
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
        self.failed: str | None = None
        """The W&B call that failed after start, and its error: no more W&B calls in this run."""
        # Lightning passes ``anonymous=None``, which W&B answers with a deprecation warning every run.
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    @property
    def experiment(self):
        while self._experiment is None:
            try:
                return super().experiment  # rank > 0: Lightning's dummy, ``_experiment`` stays None
            except Exception as err:  # W&B unreachable, refused key, timeout: the run goes on
                mode = self._wandb_init.get("mode")
                fallback = FALLBACK_MODE.get(mode, "offline")
                if fallback is None:
                    raise
                self._continue_in(fallback, f"W&B could not start {mode} ({_first_line(err)})")
        return self._experiment

    def _continue_in(self, mode: str, reason: str) -> None:
        """Leave W&B's failed start behind and start again in ``mode`` (one warning)."""
        import wandb

        if mode == "offline":
            where = f"sync later with `wandb sync {self.save_dir}/wandb/offline-run-*`"
            log.warning("%s; continuing offline (%s)", reason, where)
        else:
            log.warning("%s; continuing without W&B (metrics.json records the run)", reason)
        try:
            wandb.teardown()  # this process's service forgets the failed run (its id is then free)
        except (Exception, SystemExit):  # teardown exits with the service's code when it is not 0
            log.debug("W&B teardown after a failed start", exc_info=True)
        os.environ.pop(wandb.env.SERVICE, None)  # an inherited service outlives teardown: start our own
        self._wandb_init.update(mode=mode, settings=wandb.Settings(silent=True))  # W&B's own bound
        self._experiment = None

    log_hyperparams = _never_fatal(_LightningWandbLogger.log_hyperparams)
    log_metrics = _never_fatal(_LightningWandbLogger.log_metrics)
    log_image = _never_fatal(_LightningWandbLogger.log_image)
    watch = _never_fatal(_LightningWandbLogger.watch)
    after_save_checkpoint = _never_fatal(_LightningWandbLogger.after_save_checkpoint)
    finalize = _never_fatal(_LightningWandbLogger.finalize)

    @_never_fatal
    def define_best(self, key: str, mode: str) -> None:
        """Summary of ``key`` = its best value, so that a dashboard sorted by it sorts by the best."""
        self.experiment.define_metric(key, summary="max" if mode == "max" else "min")

    @_never_fatal
    def log_table(self, key: str, columns: list[str], data: list[list], **kwargs) -> None:
        """Lightning's ``log_table``, with image tensors ``(C, H, W)`` in [0, 1] as W&B images."""
        import wandb

        rows = [[wandb.Image(c) if hasattr(c, "ndim") and c.ndim == 3 else c for c in row] for row in data]
        super().log_table(key, columns, rows, **kwargs)

    @_never_fatal
    def log_confusion_matrix(self, key: str, y_true, preds, class_names: list[str] | None = None) -> None:
        import wandb

        matrix = wandb.plot.confusion_matrix(
            y_true=y_true.tolist(),
            preds=preds.tolist(),
            class_names=list(class_names) if class_names else None,
        )
        self.experiment.log({key: matrix})

    @_never_fatal
    def finish(self, exit_code: int) -> None:
        """End the W&B run with the process's exit code (non-zero: failed / killed in W&B)."""
        if self._experiment is not None:
            self._experiment.finish(exit_code=exit_code)


def finish_loggers(loggers: Sequence[Any], exit_code: int) -> dict[str, str]:
    """End every logger's run with the process's exit code (W&B: non-zero marks it failed / killed).
    Returns what metrics.json records of them: ``{"wandb_error": ...}``, the first W&B call that failed
    (the run went on without W&B after it), or ``{}``."""
    for logger in loggers:
        if hasattr(logger, "finish"):
            logger.finish(exit_code)
    failed = [logger.failed for logger in loggers if getattr(logger, "failed", None)]
    return {"wandb_error": failed[0]} if failed else {}
