"""crnn-eval rebuilds task and data from a checkpoint alone and writes metrics.json."""

from __future__ import annotations

import json

import pytest
from conftest import cifar_overrides, compose

from crnn.eval import evaluate, main
from crnn.train import train


def test_eval_reproduces_the_checkpoints_validation_metrics(tmp_path, cifar_root):
    result = train(compose(cifar_overrides(cifar_root, "rnn=srnn"), tmp_path / "run"))
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    metrics = evaluate(best, output_dir=tmp_path / "eval")
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written == metrics
    assert metrics["val/acc1"] == pytest.approx(result["val/acc1"])
    assert metrics["test/acc1"] == pytest.approx(result["test/acc1"])
    assert (metrics["rnn"], metrics["params"], metrics["macs"]) == ("srnn", result["params"], result["macs"])


def test_eval_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([f"ckpt_path={tmp_path / 'missing.ckpt'}"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit, match="usage"):
        main([])
