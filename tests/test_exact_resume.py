"""Exact resume: a run SIGKILLed at several points and re-launched ends with every metrics.json
number equal to the uninterrupted run's (CPU, ``trainer=cpu``); W&B unreachable goes offline."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import cifar_overrides, run_module

TESTS = Path(__file__).resolve().parent
NOT_COMPARED = {"wall_time_s", "train/images_per_s", "train/epoch_time_s", "exit_code", "wandb_id"}


def run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``crnn-train`` in a subprocess, this folder on the path (for the ``killer`` callback)."""
    return run_module(
        "crnn.train",
        *args,
        cwd=cwd,
        timeout=900,
        PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]),
        **env,
    )


def numbers(metrics: dict) -> dict:
    out = {}
    for key, value in metrics.items():
        if key in NOT_COMPARED or key.endswith(("_time_s", "images_per_s")):  # timings, not results
            continue
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in numbers(value).items()})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
    return out


KILLS = {
    "mid-epoch": ["+callbacks.kill.at=train", "+callbacks.kill.epoch=1", "+callbacks.kill.batch=1"],
    "during-validation": ["+callbacks.kill.at=val", "+callbacks.kill.epoch=1", "+callbacks.kill.batch=0"],
    "after-checkpoint": ["+callbacks.kill.at=epoch_start", "+callbacks.kill.epoch=2"],
    # SIGTERM is caught: last.ckpt is written at the interrupt, mid-epoch, and the resume continues
    # that epoch from the next batch (the loaders' order is a function of seed, epoch and batch).
    "sigterm-mid-epoch": [
        "+callbacks.kill.at=train",
        "+callbacks.kill.epoch=1",
        "+callbacks.kill.batch=1",
        "+callbacks.kill.signal=SIGTERM",
    ],
}
EXIT_CODES = {"sigterm-mid-epoch": 143}


def detection_overrides(root: Path, rnn: str) -> list[str]:
    """A tiny synthetic-shapes detector run (augmentation on: horizontal flips)."""
    return [
        "experiment=synthetic_shapes_detection",
        f"rnn={rnn}",
        f"data.root={root}",
        "data.num_train=48",
        "data.num_val=16",
        "data.batch_size=8",
        "data.val_batch_size=16",
        "data.num_workers=0",
        "data.image_size=64",
        "data.generated_size=64",
        "data.min_size=8",
        "data.max_size=40",
        "trainer=cpu",
        "trainer.max_epochs=3",
        "logger=none",
        "print_config=false",
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "task, rnn",
    [
        ("classification", "none"),
        ("classification", "sws_birnn"),
        ("detection", "none"),
        ("detection", "srnn"),
    ],
)
def test_killed_and_resumed_runs_end_with_the_same_metrics(task, rnn, tmp_path, cifar_root):
    if task == "classification":
        common = [
            *cifar_overrides(cifar_root, f"rnn={rnn}", "trainer.max_epochs=3", "print_config=false"),
            "data.random_crop=true",
            "data.horizontal_flip=true",
        ]
    else:
        common = detection_overrides(tmp_path / "shapes", rnn)
    reference = run(*common, f"hydra.run.dir={tmp_path / 'reference'}", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = numbers(json.loads((tmp_path / "reference/metrics.json").read_text()))
    for name, kill in KILLS.items():
        folder = tmp_path / name
        killed = run(
            *common,
            "+callbacks.kill._target_=killer.SelfKill",
            *kill,
            f"hydra.run.dir={folder}",
            cwd=tmp_path,
        )
        assert killed.returncode == EXIT_CODES.get(name, -9), (name, killed.stderr[-3000:])
        resumed = run(*common, f"hydra.run.dir={folder}", cwd=tmp_path)
        assert resumed.returncode == 0, (name, resumed.stderr[-3000:])
        got = numbers(json.loads((folder / "metrics.json").read_text()))
        differ = {
            k: (expected.get(k), got.get(k))
            for k in set(expected) | set(got)
            if expected.get(k) != got.get(k)
        }
        assert not differ, (name, differ)


@pytest.mark.slow
@pytest.mark.parametrize("service", ["own", "inherited"])
def test_unreachable_wandb_goes_offline_within_the_timeout(service, tmp_path, cifar_root):
    """A key set, the server a closed local port: one warning, offline, the run completes, whether
    crnn-train starts its own W&B service or inherits one from a parent that uses W&B
    (``WANDB_SERVICE``; a pytest worker that ran an in-process W&B test hands its service on)."""
    import wandb

    env = {"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_MODE": None}
    env[wandb.env.SERVICE] = None
    if service == "inherited":
        wandb.setup()  # this process's service: its token is in WANDB_SERVICE
        env[wandb.env.SERVICE] = os.environ[wandb.env.SERVICE]
    start = time.monotonic()
    try:
        proc = run(
            *cifar_overrides(
                cifar_root, "rnn=none", "logger=wandb", "logger.wandb.init_timeout=5", "callbacks=none"
            ),
            f"hydra.run.dir={tmp_path / 'run'}",
            cwd=tmp_path,
            **env,
        )
    finally:
        if service == "inherited":
            wandb.teardown()
    seconds = time.monotonic() - start
    output = f"--- stdout (tail) ---\n{proc.stdout[-4000:]}\n--- stderr (tail) ---\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, output
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["status"] == "completed" and math.isfinite(metrics["test/acc1"]), output
    assert (proc.stdout + proc.stderr).count("continuing offline") == 1, output
    assert list((tmp_path / "run/wandb").glob(f"offline-run-*-{metrics['wandb_id']}"))
    assert seconds < 120, seconds
