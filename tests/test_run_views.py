"""What a researcher sees: debug presets, TensorBoard and several loggers, the end-of-run table (issue 13)."""

from __future__ import annotations

import json

import pytest
from conftest import cifar_overrides, compose
from omegaconf import OmegaConf

from crnn.train import build_loggers, train


def test_debug_fdr_runs_in_its_own_folder_offline(tmp_path, cifar_root):
    cfg = compose(cifar_overrides(cifar_root, "debug=fdr", "rnn=none"), tmp_path)
    hydra = OmegaConf.to_container(cfg.hydra, resolve=False)
    assert "/debug/runs/" in hydra["run"]["dir"] and hydra["job"]["env_set"]["WANDB_MODE"] == "offline"
    result = train(cfg)
    assert result["status"] == "completed" and not (tmp_path / "checkpoints").exists()


def test_debug_overfit_and_profiler(tmp_path, cifar_root):
    overfit = train(
        compose(
            cifar_overrides(cifar_root, "debug=overfit", "rnn=none", "trainer.max_epochs=2"), tmp_path / "o"
        )
    )
    assert overfit["status"] == "completed" and overfit["last_epoch"] == 1 and "train/acc1" in overfit
    profiled = train(compose(cifar_overrides(cifar_root, "debug=profiler", "rnn=none"), tmp_path / "p"))
    assert profiled["status"] == "completed" and (tmp_path / "p" / "fit-profile.txt").is_file()


def test_tensorboard_logger_is_readable_by_tensorboard(tmp_path, cifar_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(compose(cifar_overrides(cifar_root, "rnn=none", "logger=tensorboard"), tmp_path))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"val/acc1", "val/acc1_best", "train/acc1", "params", "macs", "test/acc1"} <= scalars, scalars
    assert events.Scalars("params")[-1].value == result["params"]


def test_logger_many_is_wandb_csv_and_tensorboard(tmp_path, cifar_root):
    cfg = compose(cifar_overrides(cifar_root, "logger=many"), tmp_path)
    kinds = sorted(type(lg).__name__ for lg in build_loggers(cfg, "name", None, [], None))
    assert kinds == ["CSVLogger", "TensorBoardLogger", "WandbLogger"]


@pytest.mark.parametrize("print_config", ["true", "false"])
def test_config_yaml_is_saved_whether_printed_or_not(print_config, tmp_path, cifar_root, capsys):
    cfg = compose(
        cifar_overrides(cifar_root, "rnn=none", "trainer.fast_dev_run=true", "callbacks=none"), tmp_path
    )
    cfg.print_config = print_config == "true"
    train(cfg)
    assert (tmp_path / "config.yaml").is_file()
    assert ("data_dir" in capsys.readouterr().out) == (print_config == "true")


def test_classification_media_reach_a_logger_that_takes_them(tmp_path, cifar_root):
    from logger_double import RecordingLogger

    class MediaLogger(RecordingLogger):
        media = True

        def __init__(self) -> None:
            super().__init__()
            self.tables, self.matrices = [], []

        def log_table(self, key, columns, data, **kwargs) -> None:
            self.tables.append((key, columns, data))

        def log_confusion_matrix(self, key, y_true, preds, class_names=None) -> None:
            self.matrices.append((key, y_true, preds, class_names))

    import logger_double

    logger_double.MediaLogger = MediaLogger
    RecordingLogger.instances.clear()
    overrides = cifar_overrides(
        cifar_root, "rnn=none", "trainer.max_epochs=2", "+logger.media._target_=logger_double.MediaLogger"
    )
    train(compose(overrides, tmp_path))
    (logger,) = RecordingLogger.instances
    assert [t[0] for t in logger.tables] == ["val/predictions"] * 2
    key, columns, rows = logger.tables[-1]
    assert columns == ["image", "true", "predicted", "confidence"] and len(rows) == 16
    assert rows[0][0].shape == (3, 32, 32) and 0.0 <= rows[0][3] <= 1.0
    ((key, y_true, preds, names),) = logger.matrices
    assert key == "val/confusion_matrix" and len(y_true) == len(preds) == 32 and len(names) == 100


def test_a_logger_that_failed_mid_run_is_named_in_metrics(tmp_path, cifar_root):
    """crnn's W&B logger goes on without W&B after an error (``failed``): metrics.json says so."""
    from logger_double import FailedLogger

    overrides = cifar_overrides(
        cifar_root,
        "rnn=none",
        "trainer.fast_dev_run=true",
        "+logger.failed._target_=logger_double.FailedLogger",
    )
    metrics = train(compose(overrides, tmp_path))
    assert metrics["status"] == "completed" and metrics["wandb_error"] == FailedLogger.failed
    assert json.loads((tmp_path / "metrics.json").read_text())["wandb_error"] == FailedLogger.failed


def test_progress_lines_per_epoch_and_every_n_steps(tmp_path, cifar_root, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="crnn")
    overrides = cifar_overrides(
        cifar_root, "rnn=none", "trainer.max_epochs=2", "callbacks.progress_log.every_n_steps=3"
    )
    train(compose(overrides, tmp_path))
    lines = [r.getMessage() for r in caplog.records if r.name == "crnn.progress"]
    epochs = [line for line in lines if line.startswith("epoch ") and "(of 2)" in line]
    steps = [line for line in lines if "(batch " in line]
    assert len(epochs) == 2 and all(k in epochs[1] for k in ("train/acc1", "val/acc1", "images_per_s", "ETA"))
    assert [line.split()[3] for line in steps] == ["3", "6"]  # global steps 3 and 6 of 8
    table = [r.getMessage() for r in caplog.records if r.name == "crnn.train"]
    assert any(line.startswith("metric") and "val (best, epoch" in line for line in table)
    assert any(line.startswith("status completed; run folder") for line in table)


def test_a_run_failing_before_training_creates_no_wandb_run(tmp_path):
    from crnn.data.errors import DatasetNotFoundError
    from crnn.train import RunStopped

    overrides = cifar_overrides(tmp_path / "missing", "logger=wandb")
    with pytest.raises(RunStopped) as stop:
        train(compose(overrides, tmp_path / "run"))
    assert stop.value.exit_code == 2 and stop.value.metrics["error_type"] == DatasetNotFoundError.__name__
    assert not (tmp_path / "run" / "wandb").exists()


def test_wandb_own_settings_win_over_the_credentials_guess(tmp_path, monkeypatch):
    from crnn.runtime import wandb_mode

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    assert wandb_mode(None) == "online"
    (tmp_path / "wandb").mkdir()
    (tmp_path / "wandb" / "settings").write_text("[default]\nmode = offline\n")  # what `wandb offline` writes
    assert wandb_mode(None) == "offline" and wandb_mode("online") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(None) == "disabled"


def test_printed_config_is_never_cut(tmp_path, capsys):
    from crnn.run_config import print_config

    long_path = "/very/long/" + "x" * 300 + "/data"
    print_config(OmegaConf.create({"data": {"root": long_path}}), tmp_path / "config.yaml")
    assert long_path in capsys.readouterr().out  # not a terminal: one line, whatever its length
