"""crnn.loggers.WandbLogger: W&B never takes a run down (issue 12), shown without a network: W&B's
start and its runs are doubles that fail as W&B does (``tests/test_exact_resume.py`` has the real one)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import wandb

from crnn.loggers import WandbLogger


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "crnn" and r.levelname == "WARNING"]


@pytest.fixture
def starts(monkeypatch):
    """``wandb.init`` as W&B's service answers a run that cannot go online: the online start fails
    and leaves the run's id in use in the service it ran in; teardown ends only a service of this
    process (none here), so a service inherited through ``WANDB_SERVICE`` still holds the id."""
    calls: list[dict] = []
    in_use: set[tuple[str | None, str]] = set()

    def init(**kwargs):
        service = os.environ.get(wandb.env.SERVICE)
        calls.append({**kwargs, "service": service})
        if (service, kwargs["id"]) in in_use:
            raise wandb.Error(f"run ID {kwargs['id']} is in use")
        if kwargs["mode"] == "online":
            in_use.add((service, kwargs["id"]))
            raise wandb.errors.CommError("Failed to get resume status: context deadline exceeded")
        return SimpleNamespace(id=kwargs["id"], mode=kwargs["mode"])

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(wandb, "teardown", lambda *a, **k: None)
    return calls


def test_offline_retry_leaves_an_inherited_service_and_online_bound(starts, monkeypatch, tmp_path, caplog):
    """The slow test's failure in a full ``pytest -n 2``: a worker that had used W&B in-process
    passed its service to crnn-train, and the offline retry found the failed online run's id in use."""
    monkeypatch.setenv(wandb.env.SERVICE, "3-1-unix-/tmp/a-parent-process-service")
    logger = WandbLogger(mode="online", init_timeout=5, id="run12345", project="p", save_dir=str(tmp_path))
    with caplog.at_level("WARNING", logger="crnn"):
        run = logger.experiment
    assert (run.mode, run.id) == ("offline", "run12345") and logger.experiment is run
    online, offline = starts
    assert online["settings"].init_timeout == 5
    assert offline["service"] is None and offline["settings"].init_timeout == wandb.Settings().init_timeout
    (warning,) = warnings_of(caplog)
    assert "could not start online (CommError" in warning and "continuing offline" in warning


def test_a_run_that_cannot_start_offline_goes_on_without_wandb(monkeypatch, tmp_path, caplog):
    real_init = wandb.init

    def init(**kwargs):
        if kwargs["mode"] != "disabled":
            raise TimeoutError("timed out waiting for the service")
        return real_init(**kwargs)

    def teardown(*args, **kwargs):
        raise SystemExit(1)  # what wandb.teardown does when its service exits non-zero

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(wandb, "teardown", teardown)
    logger = WandbLogger(mode="online", id="run12345", project="p", save_dir=str(tmp_path))
    with caplog.at_level("WARNING", logger="crnn"):
        logger.log_metrics({"val/acc1": 0.5}, step=0)
        logger.finish(0)
    assert logger._wandb_init["mode"] == "disabled" and not logger.failed
    online, offline = warnings_of(caplog)
    assert "continuing offline" in online and "could not start offline" in offline


def test_wandb_errors_after_start_are_one_warning(tmp_path, caplog):
    class DeadService:
        id, calls = "run12345", 0

        def __getattr__(self, name):
            def call(*args, **kwargs):
                DeadService.calls += 1
                raise ConnectionResetError("the W&B service is gone")

            return call

    logger = WandbLogger(mode="offline", project="p", save_dir=str(tmp_path), watch="gradients")
    logger._experiment = DeadService()
    with caplog.at_level("WARNING", logger="crnn"):
        logger.log_metrics({"val/acc1": 0.5}, step=0)
        logger.define_best("val/acc1", "max")
        logger.log_table("val/predictions", ["a"], [[1]])
        logger.finish(0)
    assert (
        logger.failed == "log_metrics: ConnectionResetError: the W&B service is gone"
        and DeadService.calls == 1
    )
    (warning,) = warnings_of(caplog)
    assert "W&B failed in log_metrics (ConnectionResetError" in warning
