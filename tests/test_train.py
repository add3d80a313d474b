"""Training runs end to end on the fixture: metrics.json, W&B offline, resume, seeds, sweeps."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SHARED_DATA, cifar_overrides, compose, run_module

from crnn.train import train

BACKBONES = ["resnet20", "resnet32", "resnet44", "resnet56", "mobilenetv2"]
RNNS = sorted(p.stem for p in (ROOT / "conf" / "rnn").glob("*.yaml"))
HEADS = ["linear", "sequence"]


def fast_dev_run(root: Path, tmp_path: Path, *overrides: str) -> dict:
    cfg = compose(cifar_overrides(root, "trainer.fast_dev_run=true", "callbacks=none", *overrides), tmp_path)
    return train(cfg)


# Fast set: every rnn, every backbone and every head at least once; the full product is slow.
FAST_COMBOS = (
    [("resnet20", rnn, "linear") for rnn in RNNS]
    + [(b, "sws_birnn", "linear") for b in BACKBONES if b != "resnet20"]
    + [("resnet20", "srnn", "sequence"), ("mobilenetv2", "none", "sequence")]
)


@pytest.mark.parametrize(("backbone", "rnn", "head"), FAST_COMBOS)
def test_fast_dev_run(backbone, rnn, head, tmp_path, cifar_root):
    result = fast_dev_run(cifar_root, tmp_path, f"backbone={backbone}", f"rnn={rnn}", f"head={head}")
    assert result["status"] == "completed"
    assert result["params"] > 0 and result["macs"] > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backbone", "rnn", "head"),
    [c for c in itertools.product(BACKBONES, RNNS, HEADS) if c not in FAST_COMBOS],
)
def test_fast_dev_run_full_product(backbone, rnn, head, tmp_path, cifar_root):
    result = fast_dev_run(cifar_root, tmp_path, f"backbone={backbone}", f"rnn={rnn}", f"head={head}")
    assert result["status"] == "completed"


def test_gradient_clipping_under_mixed_precision_runs(tmp_path, cifar_root):
    """Lightning refuses to clip a fused optimizer's gradients under mixed precision: the configured
    optimizer is not fused there (``crnn.config.fused_optimizer``), elsewhere it is."""
    clipped = ("trainer.precision=bf16-mixed", "trainer.gradient_clip_val=1.0")
    assert fast_dev_run(cifar_root, tmp_path / "sgd", "rnn=srnn", *clipped)["status"] == "completed"
    adamw = ("task/optimizer=adamw", "rnn=srnn", *clipped)
    assert fast_dev_run(cifar_root, tmp_path / "adamw", *adamw)["status"] == "completed"


def test_resnet20_matches_published_complexity(tmp_path, cifar_root):
    """Plain ResNet-20, 100 classes: 0.28M params / 40.8M MACs published; within 2%."""
    result = fast_dev_run(cifar_root, tmp_path, "rnn=none")
    assert abs(result["params"] - 0.278e6) / 0.278e6 < 0.02
    assert abs(result["macs"] - 40.8e6) / 40.8e6 < 0.02


def test_metrics_json_after_one_epoch(tmp_path, cifar_root):
    cfg = compose(cifar_overrides(cifar_root, "rnn=srnn", "rnn.cell=gru", "seed=0"), tmp_path)
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("params", "macs", "val/acc1", "test/acc1", "test/acc5", "seed", "git_commit", "wall_time_s"):
        assert key in metrics, key
    assert metrics["status"] == "completed"
    assert (metrics["backbone"], metrics["rnn"], metrics["head"], metrics["data"], metrics["cell"]) == (
        "resnet20",
        "srnn",
        "linear",
        "cifar100",
        "gru",
    )
    assert metrics["seed"] == 0
    assert 0.0 <= metrics["test/acc1"] <= metrics["test/acc5"] <= 1.0
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()


def test_same_seed_same_metrics(tmp_path, cifar_root):
    runs = []
    for i in range(2):
        cfg = compose(
            cifar_overrides(cifar_root, "rnn=sws_birnn", "seed=0", "callbacks=none"), tmp_path / str(i)
        )
        runs.append(train(cfg))
    assert runs[0]["test/acc1"] == runs[1]["test/acc1"]
    assert runs[0]["val/loss"] == runs[1]["val/loss"]


def test_crnn_hands_config_params_and_macs_to_every_logger(tmp_path, monkeypatch, cifar_root):
    """A logger double records what crnn gives any logger (W&B, TensorBoard, CSV alike). The labels
    are what was built: the `sws_birnn` choice made to build an SRNN is `srnn` everywhere; under
    SLURM the job's ids are in metrics.json."""
    from logger_double import RecordingLogger

    for name in [n for n in os.environ if n.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # ids only: no SLURM_NTASKS, so no SLURM environment
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    RecordingLogger.instances.clear()
    overrides = cifar_overrides(
        cifar_root,
        "rnn=sws_birnn",
        "rnn._target_=crnn.layers.SRNN",
        "callbacks=none",
        "+logger.double._target_=logger_double.RecordingLogger",
    )
    result = train(compose(overrides, tmp_path))
    assert json.loads((tmp_path / "metrics.json").read_text()) == result
    assert (result["rnn"], result["cell"], result["data"], result["name"]) == (
        "srnn",
        "rnn_tanh",
        "cifar100",
        "resnet20-srnn-linear-s0",
    )
    assert (result["slurm_job_id"], result["slurm_restart_count"]) == ("4242", "1")
    (logger,) = RecordingLogger.instances
    config = logger.hyperparams
    assert (config["params"], config["macs"]) == (result["params"], result["macs"])
    assert (config["backbone"], config["rnn"], config["head"], config["data"], config["cell"]) == (
        "resnet20",
        "srnn",
        "linear",
        "cifar100",
        "rnn_tanh",
    )
    flat_keys = json.dumps(config)
    assert (
        "_target_" not in flat_keys
        and "hydra" not in config["cfg"]
        and "backbone" not in config["cfg"]["task"]
    )
    assert config["cfg"]["backbone"]["depth"] == 20 and config["seed"] == 0
    assert logger.last("params") == result["params"] and logger.last("macs") == result["macs"]
    assert logger.last("val/acc1_best") == result["val/acc1_best"] and logger.best == {"val/acc1_best": "max"}
    assert logger.last("test/acc1") == pytest.approx(result["test/acc1"])
    assert logger.exit_code == 0


def test_a_failure_before_the_model_is_built_records_what_is_known(tmp_path, cifar_root):
    overrides = cifar_overrides(cifar_root, "rnn=srnn", "rnn.cell=no_such_cell", "callbacks=none")
    cfg = compose(overrides, tmp_path)
    with pytest.raises(Exception, match="no_such_cell"):
        train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and (metrics["data"], metrics["seed"]) == ("cifar100", 0)
    assert "rnn" not in metrics  # not built: readers fall back to the group choice


def test_only_rank_zero_writes_the_run_folder(tmp_path, monkeypatch, cifar_root):
    """A DDP rank other than 0 (here: told so before the run starts, as RANK / LOCAL_RANK do) trains
    and returns its record but writes neither metrics.json nor config.yaml nor .hydra copies."""
    from lightning.pytorch.utilities import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    cfg = compose(cifar_overrides(cifar_root, "rnn=none", "callbacks=none", "print_config=true"), tmp_path)
    result = train(cfg)
    assert result["status"] == "completed" and result["rnn"] == "none"
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_sync_batchnorm_follows_the_accelerator():
    from crnn.train import sync_batchnorm

    assert not sync_batchnorm({"accelerator": "cpu", "sync_batchnorm": None})
    assert sync_batchnorm({"accelerator": "gpu", "sync_batchnorm": None})
    assert sync_batchnorm({"accelerator": "auto", "sync_batchnorm": None}) == torch.cuda.is_available()
    assert not sync_batchnorm({"accelerator": "gpu", "sync_batchnorm": False})  # the user's choice wins
    assert sync_batchnorm({"accelerator": "cpu", "sync_batchnorm": True})


def test_ddp_ranks_lightning_would_start_inside_a_sweep_are_refused():
    import lightning as L

    from crnn.errors import ConfigError
    from crnn.train import check_ddp_launch

    ddp = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match="submitit_slurm"):
        check_ddp_launch(ddp, multirun=True)
    check_ddp_launch(ddp, multirun=False)  # a single run: Lightning restarts its own command line
    check_ddp_launch(L.Trainer(accelerator="cpu", devices=1, logger=False), multirun=True)


def test_wandb_offline_run_is_written(tmp_path, cifar_root):
    """Through crnn.loggers.WandbLogger, offline: the run's file is in the run folder under the id
    metrics.json records. (wandb has no public reader of offline runs: what it holds is covered by
    the logger double above.)"""
    cfg = compose(cifar_overrides(cifar_root, "rnn=none", "logger=wandb"), tmp_path)  # media included
    result = train(cfg)
    import wandb

    wandb.teardown()
    (run,) = tmp_path.glob(f"wandb/offline-run-*-{result['wandb_id']}")
    assert (run / f"run-{result['wandb_id']}.wandb").is_file()
    tables = {p.name.split("_")[0] for p in (run / "files/media/table/val").glob("*.table.json")}
    assert tables == {"predictions", "confusion"}  # the media, as W&B's own table files


def test_resume_continues_from_last_checkpoint(tmp_path, cifar_root):
    first = compose(cifar_overrides(cifar_root, "rnn=srnn", "trainer.max_epochs=1"), tmp_path / "run")
    train(first)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 0

    # Re-run with ckpt_path and one more epoch of a single batch: a resumed run ends at step
    # 4 + 1 (64 train images / 16 per batch, then 1), a fresh one would end at 1 + 1.
    again = compose(
        cifar_overrides(
            cifar_root,
            "rnn=srnn",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=1",
            f"ckpt_path={last}",
        ),
        tmp_path / "elsewhere",
    )
    result = train(again)
    assert torch.load(last, weights_only=False)["global_step"] == 4 + 1
    assert result["run_dir"] == str(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"


def test_auto_resume_skips_a_completed_run(tmp_path, cifar_root):
    cfg = compose(cifar_overrides(cifar_root, "rnn=none"), tmp_path)
    first = train(cfg)
    again = train(compose(cifar_overrides(cifar_root, "rnn=none"), tmp_path))
    assert again["wall_time_s"] == first["wall_time_s"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_module("crnn.train", *args, cwd=cwd)


def test_multirun_two_jobs(tmp_path, cifar_root):
    sweep = tmp_path / "sweep"
    proc = _cli(
        "-m",
        *cifar_overrides(
            cifar_root, "rnn=none,srnn", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"
        ),
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert [p.name for p in jobs] == ["0_resnet20-none-linear-s0", "1_resnet20-srnn-linear-s0"]
    metrics = [json.loads((p / "metrics.json").read_text()) for p in jobs]
    assert [m["rnn"] for m in metrics] == ["none", "srnn"]
    assert all(m["status"] == "completed" for m in metrics)
    assert metrics[0]["macs"] != metrics[1]["macs"]


def test_missing_dataset_is_one_clear_error(tmp_path):
    run_dir = f"hydra.run.dir={tmp_path / 'run'}"  # not the checkout's outputs/
    proc = _cli(
        f"data.root={tmp_path / 'empty'}", "data.download=false", "logger=none", run_dir, cwd=tmp_path
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-2000:]
    assert "cifar-100-python" in output and "train" in output and "Traceback" not in output


@pytest.mark.skipif(not (SHARED_DATA / "cifar100_partial").is_dir(), reason="../shared/data absent")
def test_training_loss_falls_on_real_cifar100_records(tmp_path):
    cfg = compose(
        [
            f"data.root={SHARED_DATA / 'cifar100_partial'}",
            "data.verify_checksums=false",
            "data.download=false",
            "data.batch_size=64",
            "data.val_size=117",
            "trainer=cpu",
            "trainer.max_epochs=4",
            "logger=csv",
            "callbacks=none",
            "rnn=sws_birnn",
            "task.optimizer.lr=0.05",
            "task.scheduler.warmup_epochs=0",
        ],
        tmp_path,
    )
    train(cfg)
    import csv

    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    losses = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.1, losses
