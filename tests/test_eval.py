"""crnn-eval (a Hydra app) rebuilds task and data from a checkpoint alone and writes metrics.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, cifar_overrides, compose, run_module

from crnn.eval import evaluate
from crnn.train import train


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cifar_root) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("run")
    return run, train(compose(cifar_overrides(cifar_root, "rnn=srnn"), run))


def test_eval_reproduces_the_checkpoints_validation_metrics(trained_run, tmp_path):
    run, result = trained_run
    metrics = evaluate(run / "checkpoints" / "best.ckpt", output_dir=tmp_path / "eval")
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written == metrics
    assert metrics["val/acc1"] == pytest.approx(result["val/acc1"])
    assert metrics["test/acc1"] == pytest.approx(result["test/acc1"])
    assert (metrics["rnn"], metrics["params"], metrics["macs"]) == ("srnn", result["params"], result["macs"])


def test_eval_cli_honours_trainer_overrides_and_refuses_model_overrides(trained_run, tmp_path):
    run, _ = trained_run
    ckpt = run / "checkpoints" / "last.ckpt"
    proc = run_module(
        "crnn.eval", f"ckpt_path={ckpt}", "trainer.limit_val_batches=1", "test_after_fit=false", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (folder,) = (run / "eval").iterdir()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["status"] == "completed" and "test/acc1" not in metrics
    assert (folder / "eval.log").is_file()

    proc = run_module("crnn.eval", f"ckpt_path={ckpt}", "rnn.cell=gru", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "rnn.cell='gru' (checkpoint: 'rnn_tanh')" in proc.stdout + proc.stderr


def test_eval_records_a_logger_that_failed_mid_run(trained_run, tmp_path):
    """As crnn-train's runs: metrics.json names the W&B call that failed (the evaluation went on)."""
    from logger_double import FailedLogger

    run, _ = trained_run
    logger = {"logger.failed._target_": "logger_double.FailedLogger"}
    metrics = evaluate(run / "checkpoints" / "last.ckpt", logger, tmp_path)
    assert metrics["status"] == "completed" and metrics["wandb_error"] == FailedLogger.failed
    assert json.loads((tmp_path / "metrics.json").read_text())["wandb_error"] == FailedLogger.failed


# crnn-eval whose first validation batch is interrupted by Ctrl-C (SIGINT to itself), as a user would.
EVAL_WITH_CTRL_C = """
import os, signal
from crnn.tasks.classification import ClassificationTask

step = ClassificationTask.validation_step

def interrupted_step(self, batch, batch_idx):
    if batch_idx == 0:
        os.kill(os.getpid(), signal.SIGINT)
    return step(self, batch, batch_idx)

ClassificationTask.validation_step = interrupted_step
from crnn.eval import main

main()
"""


def test_eval_ctrl_c_is_interrupted_with_exit_130(trained_run, tmp_path):
    run, _ = trained_run
    out = tmp_path / "eval"
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "data.batch_size=8", f"hydra.run.dir={out}"]
    proc = subprocess.run(
        [sys.executable, "-c", EVAL_WITH_CTRL_C, *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["status"], metrics["reason"], metrics["exit_code"]) == ("interrupted", "SIGINT", 130)
    assert "Traceback" not in proc.stderr


def test_eval_errors_are_one_line(tmp_path):
    proc = run_module("crnn.eval", f"ckpt_path={tmp_path / 'missing.ckpt'}", cwd=tmp_path)
    assert proc.returncode == 2 and "missing.ckpt" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_checkpoint_of_another_model_is_one_line(trained_run, tmp_path):
    run, _ = trained_run
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["rnn"]["hidden_channels"] = 3  # as if the model config were another's
    bad = tmp_path / "other.ckpt"
    torch.save(checkpoint, bad)
    with pytest.raises(
        ValueError, match=r"does not fit the model built from its stored hyper_parameters"
    ) as err:
        evaluate(bad, output_dir=tmp_path / "eval")
    assert "shape differs" in str(err.value) and "\n" not in str(err.value)


def test_a_checkpoint_that_runs_code_is_not_loaded(tmp_path):
    """torch.load(weights_only=True): a pickle that would create a file is refused."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad = tmp_path / "evil.ckpt"
    torch.save({"crnn_config": Evil()}, bad)
    with pytest.raises(ValueError, match="trust_checkpoint=true"):
        evaluate(bad, output_dir=tmp_path / "eval")
    assert not marker.exists()


def test_a_setting_eval_would_ignore_is_refused():
    """Before, ``crnn-eval ... paths.data_dir=/x`` was ignored without a word."""
    from pathlib import Path

    from crnn.errors import ConfigError
    from crnn.eval import merged_config

    stored = {"rnn": {"cell": "rnn_tanh"}, "trainer": {"max_epochs": 3}, "paths": {"data_dir": "data"}}
    cfg = merged_config(stored, {"trainer.limit_val_batches": 2}, Path("run.ckpt"))
    assert cfg.trainer.limit_val_batches == 2 and cfg.trainer.max_epochs == 3
    with pytest.raises(
        ConfigError, match=r"paths.data_dir: not an evaluation setting \(crnn-eval takes data"
    ):
        merged_config(stored, {"paths.data_dir": "/x"}, Path("run.ckpt"))
