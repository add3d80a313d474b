"""How a run ends: interrupts at a batch boundary, and the outcome (status, reason, exit code)
that ``metrics.json``, the loggers and the process's exit code all report."""

from __future__ import annotations

import logging
import signal
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from crnn.callbacks import NonFiniteLossError
from crnn.errors import USER_ERRORS
from crnn.sweeps.cluster import submitit_requeue_signal

log = logging.getLogger("crnn.train")

EXIT_CODES = {"completed": 0, "failed": 1, "user_error": 2, "SIGINT": 130, "SIGTERM": 143}
"""Process exit code of each outcome: a scheduler reads the same outcome as ``metrics.json``."""


class RunStopped(Exception):
    """The run ended failed or interrupted; its ``metrics.json`` says so and why."""

    def __init__(self, metrics: dict[str, Any], exit_code: int):
        super().__init__(metrics.get("error") or metrics.get("status"))
        self.metrics, self.exit_code = metrics, exit_code


class JobFailed(RuntimeError):
    """A trial of an optimising sweep (Optuna) that failed (recorded in its metrics.json): the
    sweeper marks the trial failed and goes on. ``SystemExit`` would end the whole sweep."""


@contextmanager
def graceful_interrupts(trainer: L.Trainer) -> Iterator[dict[str, str]]:
    """Ctrl-C and SIGTERM stop training at the next batch boundary, the way Lightning handles
    SIGTERM (``SIGTERMException``), instead of Lightning's ``sys.exit(1)`` on Ctrl-C; a second
    signal stops at once. In a submitit job, its handler of its requeue signal requeues the job and
    exits at once (:func:`crnn.sweeps.cluster.submitit_requeue_signal`): an interruption too, not a
    failure (which would let submitit record a result for the job). The dict receives the signal's
    name."""
    received: dict[str, str] = {}

    def on_signal(signum: int, frame: Any) -> None:
        if received:
            raise KeyboardInterrupt
        received["signal"] = signal.Signals(signum).name
        log.warning("%s received: stopping at the next batch (again to stop now)", received["signal"])
        trainer._signal_connector.received_sigterm = True  # what Lightning's own SIGTERM handler sets

    handlers = {signal.SIGINT: on_signal, signal.SIGTERM: on_signal}
    requeue = submitit_requeue_signal()
    submitit_handler = signal.getsignal(requeue) if requeue is not None else None
    if callable(submitit_handler):

        def on_requeue(signum: int, frame: Any) -> None:
            try:
                submitit_handler(signum, frame)  # checkpoint, scontrol requeue, SystemExit
            except SystemExit:  # requeued (not requeued: an error, which ends the job as failed)
                # SLURM's SIGTERM to the requeued job may have come first (during `scontrol requeue`).
                received.setdefault("signal", signal.Signals(signum).name)
                log.warning(
                    "%s received: submitit requeued the job, stopping now", signal.Signals(signum).name
                )
                raise

        handlers[requeue] = on_requeue
    try:
        old = {s: signal.signal(s, handler) for s, handler in handlers.items()}
    except ValueError:  # not the main thread: keep the default handlers
        old = {}
    try:
        yield received
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def outcome_of(err: BaseException | None, received: dict[str, str], run_dir: Path | None) -> dict[str, Any]:
    """``status``, ``reason``, ``error`` (one line), ``error_type``, ``traceback`` (a file in the run
    folder, for errors that are not the user's; none when ``run_dir`` is ``None``: DDP ranks other
    than 0) and ``exit_code`` of a run that ended with ``err`` (``None``: it returned; ``received``:
    the signal that stopped it, if any)."""
    if err is None and not received:
        return {"status": "completed", "exit_code": EXIT_CODES["completed"]}
    if received or isinstance(err, (KeyboardInterrupt, SIGTERMException)):
        sig = received.get("signal") or ("SIGTERM" if isinstance(err, SIGTERMException) else "SIGINT")
        code = EXIT_CODES.get(sig, 128 + signal.Signals[sig])  # the shell's code of a signal's death
        return {"status": "interrupted", "reason": sig, "exit_code": code}
    failed = {"status": "failed", "error_type": type(err).__name__, "exit_code": EXIT_CODES["failed"]}
    if isinstance(err, NonFiniteLossError):
        return {**failed, "reason": err.reason, "error": str(err)}
    if isinstance(err, USER_ERRORS):
        return {
            **failed,
            "reason": "bad config or input",
            "error": str(err),
            "exit_code": EXIT_CODES["user_error"],
        }
    if isinstance(err, SystemExit):
        return {**failed, "reason": "exit", "error": f"SystemExit({err.code})"}
    path: Path | None = run_dir / "error.txt" if run_dir is not None else None
    try:
        if path is not None:
            path.write_text("".join(traceback.format_exception(err)))
    except OSError:
        path = None
    first = (str(err).strip().splitlines() or [""])[0][:300]
    return {**failed, "reason": "error", "error": first, "traceback": str(path) if path else None}
