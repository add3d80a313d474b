"""A run's record can be trusted: non-finite losses, checkpoints, epochs of each number, other
runs' folders, relaunches, full disks, random state (issue 12)."""

from __future__ import annotations

import errno
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cifar_overrides, compose

from crnn.callbacks import GlobalRngState
from crnn.callbacks.record import epoch_values
from crnn.checkpoints import CheckpointError
from crnn.errors import ConfigError
from crnn.records import MetricsFile
from crnn.run_config import config_diff, config_hash
from crnn.train import RunStopped, train


def strict(path: Path) -> dict:
    def refuse(constant: str):
        raise ValueError(f"non-strict JSON constant {constant} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_epoch_values_take_the_epoch_value_of_each_metric():
    metrics = {"train/loss": 3.0, "train/loss_step": 2.0, "train/loss_epoch": 1.0, "train/acc1": 0.5}
    metrics |= {"val/acc1": 0.25, "lr-SGD": 0.1}
    assert epoch_values(metrics, ("train/",)) == {"train/loss": 1.0, "train/acc1": 0.5}
    assert epoch_values(metrics, ("train/", "val/"))["val/acc1"] == 0.25


def finite_weights(path: Path) -> bool:
    state = torch.load(path, weights_only=True)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_non_finite_loss_stops_and_keeps_the_finite_checkpoints(tmp_path, cifar_root):
    """A good epoch, then a learning rate of 1e6: the run stops at the first NaN loss, failed, and
    both checkpoints stay the good epoch's."""
    overrides = cifar_overrides(
        cifar_root,
        "rnn=none",
        "trainer.max_epochs=3",
        "test_after_fit=false",
        "task/scheduler=multistep",
        "task.scheduler.milestones=[1]",
        "task.scheduler.gamma=1e7",
        "task.scheduler.warmup_epochs=0",
    )
    with pytest.raises(RunStopped) as stop:
        train(compose(overrides, tmp_path))
    assert stop.value.exit_code == 1
    metrics = strict(tmp_path / "metrics.json")
    assert (metrics["status"], metrics["reason"]) == ("failed", "non-finite loss")
    assert "at epoch 1, step" in metrics["error"] and metrics["last_epoch"] == 0
    for name in ("last", "best"):
        ckpt = tmp_path / "checkpoints" / f"{name}.ckpt"
        assert finite_weights(ckpt) and torch.load(ckpt, weights_only=True)["epoch"] == 0


def test_metrics_json_is_strict_json_with_a_note(tmp_path):
    metrics = MetricsFile(tmp_path / "metrics.json")
    metrics.update(**{"val/loss": float("nan"), "val/acc1": 0.5, "best": {"val/loss": float("inf")}})
    written = strict(tmp_path / "metrics.json")
    assert written["val/loss"] is None and written["best"]["val/loss"] is None and written["val/acc1"] == 0.5
    assert written["non_finite"] == ["best.val/loss", "val/loss"]
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o644


def test_final_status_is_written_on_a_full_disk(tmp_path, monkeypatch):
    metrics = MetricsFile(tmp_path / "metrics.json")
    metrics.update(status="running", name="run", params=1, notes="x" * 200)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("crnn.records.write_json_atomic", full)
    metrics.update(status="failed", reason="error", error="the original error")
    written = strict(tmp_path / "metrics.json")
    assert written["status"] == "failed" and written["error"].startswith("the original error")
    assert "No space left on device" in written["error"]


def test_last_checkpoint_is_the_last_epoch_and_epochs_are_recorded(tmp_path, cifar_root):
    """lr=0: validation never improves after epoch 0, so Lightning's save_last would keep epoch 0.
    A copied run folder, continued, rewrites its own files and leaves the original alone."""
    common = ("rnn=none", "task.optimizer.lr=0", "task.scheduler.warmup_epochs=0")
    first = train(compose(cifar_overrides(cifar_root, *common, "trainer.max_epochs=2"), tmp_path / "a"))
    assert torch.load(tmp_path / "a/checkpoints/last.ckpt", weights_only=True)["epoch"] == 1
    assert (first["last_epoch"], first["best_epoch"], first["test_epoch"]) == (1, 0, 0)
    assert first["best"]["epoch"] == 0 and first["val/acc1_best"] == first["best"]["val/acc1"]
    record_a = (tmp_path / "a/metrics.json").read_text()

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    more = cifar_overrides(
        cifar_root, *common, "trainer.max_epochs=3", f"ckpt_path={tmp_path}/b/checkpoints/last.ckpt"
    )
    again = train(compose(more, tmp_path / "elsewhere"))
    assert sorted(p.name for p in (tmp_path / "b/checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(tmp_path / "b/checkpoints/last.ckpt", weights_only=True)["epoch"] == 2
    assert (again["run_dir"], again["last_epoch"], again["best_epoch"]) == (str(tmp_path / "b"), 2, 0)
    assert (tmp_path / "a/metrics.json").read_text() == record_a


def test_ckpt_path_of_another_run_never_touches_it(tmp_path, cifar_root):
    train(compose(cifar_overrides(cifar_root, "rnn=none", "callbacks=default"), tmp_path / "a"))
    record_a = (tmp_path / "a/metrics.json").read_text()
    ckpt = tmp_path / "a/checkpoints/last.ckpt"

    with pytest.raises(ConfigError, match=r"another config \(.*rnn\.") as err:
        train(compose(cifar_overrides(cifar_root, "rnn=srnn", f"ckpt_path={ckpt}"), tmp_path / "b"))
    assert "finetune=true" in str(err.value)
    with pytest.raises(RunStopped, match=r"does not fit the model built from this run's config"):
        train(
            compose(
                cifar_overrides(cifar_root, "rnn=srnn", f"ckpt_path={ckpt}", "finetune=true"), tmp_path / "c"
            )
        )
    tuned = train(
        compose(
            cifar_overrides(
                cifar_root, "rnn=none", f"ckpt_path={ckpt}", "finetune=true", "task.optimizer.lr=0.01"
            ),
            tmp_path / "d",
        )
    )
    assert tuned["run_dir"] == str(tmp_path / "d") and tuned["finetuned_from"] == str(ckpt)
    assert (tmp_path / "a/metrics.json").read_text() == record_a


def test_relaunch_into_a_completed_run_with_another_config_is_refused(tmp_path, cifar_root):
    run = tmp_path / "job"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra/overrides.yaml").write_text("- task.optimizer.lr=0.1\n")
    first = train(compose(cifar_overrides(cifar_root, "rnn=none"), run))
    assert len(first["config_hash"]) == 12
    record = (run / "metrics.json").read_text()
    (run / ".hydra/overrides.yaml").write_text("- task.optimizer.lr=0.5\n")  # what Hydra does on a relaunch
    with pytest.raises(ConfigError, match=r"task\.optimizer\.lr: 0\.1 -> 0\.5"):
        train(compose(cifar_overrides(cifar_root, "rnn=none", "task.optimizer.lr=0.5"), run))
    assert (run / "metrics.json").read_text() == record
    assert (run / ".hydra/overrides.yaml").read_text() == "- task.optimizer.lr=0.1\n"
    assert train(compose(cifar_overrides(cifar_root, "rnn=none"), run))["wall_time_s"] == first["wall_time_s"]


def test_the_optimizer_fused_setting_is_no_difference():
    """``task.optimizer.fused`` follows ``trainer`` (``crnn.config.fused_optimizer``), which a resumed run
    may change, and moves results by float rounding only: neither compared nor hashed (a run folder
    from before the setting existed compares equal)."""
    before = {"task": {"optimizer": {"lr": 0.1}}, "trainer": {"precision": "32-true"}}
    now = {"task": {"optimizer": {"lr": 0.1, "fused": True}}, "trainer": {"precision": "32-true"}}
    assert config_diff(before, now) == [] and config_hash(before) == config_hash(now)
    changed = {"task": {"optimizer": {"lr": 0.2, "fused": True}}, "trainer": {"precision": "32-true"}}
    assert config_diff(now, changed) == ["task.optimizer.lr: 0.1 -> 0.2"]
    assert config_hash(now) != config_hash(changed)


def test_a_corrupt_test_file_fails_before_training(tmp_path, cifar_root):
    root = tmp_path / "data"
    shutil.copytree(cifar_root, root)
    test_file = root / "cifar-100-python" / "test"
    test_file.write_bytes(test_file.read_bytes()[:1000])
    with pytest.raises(RunStopped):
        train(compose(cifar_overrides(root, "rnn=none"), tmp_path / "run"))
    metrics = strict(tmp_path / "run/metrics.json")
    assert metrics["status"] == "failed" and "test" in metrics["error"] and "last_epoch" not in metrics
    assert not (tmp_path / "run/checkpoints").exists()


def test_global_random_state_round_trips_through_a_safe_checkpoint(tmp_path):
    callback = GlobalRngState()
    torch.save({"rng": callback.state_dict()}, tmp_path / "x.ckpt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    callback.load_state_dict(torch.load(tmp_path / "x.ckpt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert (
        torch.equal(expected[0], again[0])
        and np.array_equal(expected[1], again[1])
        and expected[2] == again[2]
    )


def test_safe_loading_refuses_code_and_names_the_switch(tmp_path):
    from crnn.checkpoints import load_checkpoint

    torch.save({"x": Path("p")}, tmp_path / "x.ckpt")  # a class outside the allow-list
    with pytest.raises(CheckpointError, match="trust_checkpoint=true"):
        load_checkpoint(tmp_path / "x.ckpt")
    assert load_checkpoint(tmp_path / "x.ckpt", trust=True)["x"] == Path("p")
