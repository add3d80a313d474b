"""What gets exported: the model of a checkpoint or of a config, with its run config and data.

Every export format starts from an :class:`ExportSource`: the module ``task.complexity_inputs()``
names (the classifier ``net`` for classification; for detection the backbone + FPN + head network
without box decoding / NMS), its batch-1 example inputs, the run's group choices and its composed
config (whose ``data`` node gives the calibration and evaluation images of the embedded export).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from crnn.builders import build_datamodule, build_model, compose_config, run_labels, task_from_checkpoint
from crnn.errors import ConfigError
from crnn.naming import model_name

__all__ = ["ExportSource", "normalized_images", "source_from_checkpoint", "source_from_config"]


@dataclass
class ExportSource:
    """A model to export. ``module`` is in eval mode; ``inputs`` are batch-1 example inputs."""

    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    choices: dict[str, Any]
    config: DictConfig
    run_dir: Path | None = None  # the run folder of a checkpoint
    stem: str = "model"  # default file name (without suffix)

    @property
    def name(self) -> str:
        """``backbone-rnn-head`` of the run's group choices."""
        return model_name(self.choices)


def source_from_config(overrides: Sequence[str] = ()) -> ExportSource:
    """The model ``crnn-train <overrides>`` builds (seeded random init, untrained)."""
    from crnn.naming import choices

    cfg = compose_config(overrides)
    task, module, inputs = build_model(cfg)  # seeded init; constructors check settings only: no disk access
    picked = {**choices(cfg), **run_labels(task)}  # labels of what was built win over the choices
    source = ExportSource(module.eval(), tuple(inputs), picked, cfg)
    source.stem = source.name
    return source


def source_from_checkpoint(ckpt_path: str | os.PathLike, trust: bool = False) -> ExportSource:
    """The model of a crnn checkpoint (:func:`crnn.builders.task_from_checkpoint`: safe loading unless
    ``trust``; its stored config names the data of the embedded export)."""
    loaded = task_from_checkpoint(ckpt_path, trust=trust)
    module, inputs = loaded.task.complexity_inputs()
    source = ExportSource(module.eval(), tuple(inputs), loaded.choices, loaded.config, loaded.run_dir)
    source.stem = f"{source.name}-{loaded.path.stem}"  # several checkpoints can share one --out folder
    return source


def normalized_images(
    config: DictConfig,
    n_calibration: int,
    n_eval: int,
    seed: int = 0,
    data_overrides: Sequence[str] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(calibration, eval, eval_labels)`` from the run's own data, as the model sees them.

    ``calibration``: ``n_calibration`` training images (a seeded random pick, without replacement,
    from the run's training split); ``eval``: the first ``n_eval`` test images and their labels.
    Images are float ``(N, C, H, W)`` after the data module's evaluation transform (normalisation,
    no augmentation). ``data_overrides`` (``key=value``, keys of the ``data`` node, e.g.
    ``root=../shared/data/cifar100_partial``) change the data node first. Needs a data module with
    ``train_set``/``test_set`` tensors and ``transform_batch`` (CIFAR-100).
    """
    data = OmegaConf.create(OmegaConf.to_container(config.data, resolve=True))
    overrides = list(data_overrides)
    try:
        data = OmegaConf.merge(data, OmegaConf.from_dotlist([o.removeprefix("data.") for o in overrides]))
    except Exception as err:
        raise ConfigError(f"data overrides {' '.join(data_overrides)}: {err}") from None
    # build_datamodule checks that data, task, backbone and head fit together: it needs all four
    dm = build_datamodule(
        {**{k: config[k] for k in ("task", "backbone", "head") if k in config}, "data": data}
    )
    if not hasattr(dm, "transform_batch"):
        raise ConfigError(
            f"data ({data.get('_target_')}): the embedded export needs image-classification data"
        )
    dm.prepare_data()
    dm.setup(None)
    train, test = dm.train_set, dm.test_set
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(train.images), generator=gen)[: int(n_calibration)].sort().values
    calibration = dm.transform_batch(train.images[pick])  # no seed: normalisation only
    n_eval = min(int(n_eval), len(test.images))
    eval_images = dm.transform_batch(test.images[:n_eval])
    return calibration, eval_images, test.labels[:n_eval].clone()
