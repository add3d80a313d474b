"""Shared test set-up: Hydra composition of the real configs and data fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"

# Tests never talk to W&B servers and never prompt.
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["PROJECT_ROOT"] = str(ROOT)
torch.set_num_threads(1)  # pytest-xdist runs one worker per core


def compose(overrides: list[str], output_dir: Path):
    """Compose ``conf/train.yaml`` as ``crnn-train`` would, with ``hydra:`` resolvers working,
    the run folder at ``output_dir`` and quiet CPU training defaults for tests."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
        cfg.paths.output_dir = str(output_dir)
        cfg.print_config = False
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """A tiny CIFAR-100 in the official pickle layout (``<root>/cifar-100-python``)."""
    from fixtures.cifar import write_cifar100_fixture

    root = tmp_path_factory.mktemp("cifar")
    write_cifar100_fixture(root, n_train=96, n_test=48)
    return root


def cifar_overrides(root: Path, *extra: str) -> list[str]:
    """Overrides for a fast CPU run on the fixture data, no logger unless ``extra`` says so."""
    return [
        f"data.root={root}",
        "data.verify_checksums=false",
        "data.download=false",
        "data.batch_size=16",
        "data.val_size=32",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "logger=none",
        *extra,
    ]


def run_module(module: str, *args: str, cwd: Path, timeout: int = 600, **env: str | None):
    """``python -m <module> <args>`` in ``cwd`` as a user would run it (no terminal: ``CI=1``; W&B
    offline; this checkout first on the path), ``env`` added to the environment (``None`` unsets)."""
    import subprocess
    import sys

    base = {**os.environ, "CI": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env={k: v for k, v in {**base, **env}.items() if v is not None},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_checkpoint(cfg, task, path: Path, choices: dict | None = None) -> Path:
    """``task`` saved as crnn-train saves it: weights, hyper-parameters (the model config) and the
    run's config under ``crnn_config`` (:class:`crnn.callbacks.StoreConfig`)."""
    import lightning
    from omegaconf import OmegaConf

    from crnn.checkpoints import CONFIG_KEY

    path.parent.mkdir(parents=True, exist_ok=True)
    stored = {"config": OmegaConf.to_container(cfg, resolve=True), "choices": dict(choices or {})}
    checkpoint = {
        "state_dict": task.state_dict(),
        "hyper_parameters": dict(task.hparams),
        "pytorch-lightning_version": lightning.__version__,
        CONFIG_KEY: stored,
    }
    torch.save(checkpoint, path)
    return path
