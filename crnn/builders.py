"""Config nodes -> objects: the one bridge between the Hydra configs and crnn's objects.

``crnn.layers``, ``crnn.models`` and ``crnn.tasks`` know nothing of Hydra: they take objects
(constructor injection). Here, each node of the composed config becomes its object once:

- ``rnn``: a ``_partial_`` of a registered layer class (``_target_: null`` for ``rnn=none``)
  -> :func:`layer_factory` -> ``factory(in_channels, out_channels)``, handed to the backbone
  (classification) or to the FCOS towers (detection);
- ``backbone``, ``head`` -> the network (:func:`build_classifier`, :func:`build_detector`);
- ``task`` (its ``optimizer`` and ``scheduler`` are ``_partial_`` nodes) -> the LightningModule
  (:func:`build_task`); ``data`` -> the LightningDataModule (:func:`build_datamodule`).

Every node is checked against its target's signature before it is built
(:func:`crnn.config.check_node`: an unknown key, a value of the wrong type, e.g. a ``PositiveInt``
that is not) and the choices against the task (:func:`crnn.config.check_fit`); each problem is one
:class:`ConfigError` naming the key. :func:`run_labels` names what was
built (``backbone``, ``rnn``, ``cell``, ``head``), read from the built modules.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from crnn.checkpoints import CONFIG_KEY, check_state_fits, current_settings, load_checkpoint
from crnn.config import check_fit, check_node, instantiate_node, plain, target_of
from crnn.errors import ConfigError
from crnn.layers import LAYERS, Layer2d, list_layers
from crnn.models import Classifier, LayerFactory
from crnn.models.detection import FCOSDetector
from crnn.runtime import project_root
from crnn.tasks import BaseTask, DetectionTask

__all__ = [
    "ConfigError",
    "build_classifier",
    "build_datamodule",
    "build_detector",
    "build_group",
    "build_task",
    "checkpoint_run_dir",
    "layer_factory",
    "TrainedTask",
    "run_labels",
    "task_from_checkpoint",
    "task_from_config",
]

MODEL_NODES = ("task", "backbone", "rnn", "head")
"""The config nodes a task is built from (and stored in its checkpoint)."""
SHAPE_KEYS = ("num_classes", "input_shape")
"""What the data tells the task (stored in its checkpoint beside :data:`MODEL_NODES`)."""


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------
def layer_factory(rnn: Mapping[str, Any] | None) -> LayerFactory | None:
    """``rnn`` node -> ``factory(in_channels, out_channels)`` building its layer; ``None`` for
    ``rnn=none`` (``_target_: null``: the plain CNN, conv towers).

    The node is instantiated once, as a partial of a registered layer class of
    :mod:`crnn.layers`; a target that builds anything else is a :class:`ConfigError`.
    """
    rnn = plain(rnn)
    if rnn is None or rnn.get("_target_") is None:
        return None
    check_node(rnn, "rnn", injected=("in_channels", "out_channels"))
    partial = instantiate_node(rnn, "rnn", _partial_=True)

    def build(in_channels: int, out_channels: int) -> Layer2d:
        try:
            layer = partial(in_channels=in_channels, out_channels=out_channels)
        except (TypeError, ValueError) as err:
            where = f"in {in_channels}, out {out_channels}"
            raise ConfigError(f"rnn ({rnn['_target_']}, {where}): {err}") from err
        if type(layer) not in set(LAYERS.values()):
            raise ConfigError(
                f"rnn._target_={rnn['_target_']} is not a registered layer of crnn.layers "
                f"({', '.join(list_layers())})"
            )
        return layer

    return build


def build_classifier(
    backbone: Mapping[str, Any],
    head: Mapping[str, Any],
    factory: LayerFactory | None,
    num_classes: int,
    input_shape: tuple[int, int, int],
) -> Classifier:
    """``head(backbone(x))``: the backbone gets the layer factory; the head gets the shape of the
    backbone's feature map, found by one forward pass of a zero image of ``input_shape``."""
    backbone, head = plain(backbone), plain(head)
    check_node(backbone, "backbone", injected=("layer_factory",))
    trunk = instantiate_node(backbone, "backbone", layer_factory=factory)
    was_training = trunk.training
    trunk.eval()
    with torch.no_grad():
        feature_shape = tuple(trunk(torch.zeros(1, *input_shape)).shape[1:])
    trunk.train(was_training)
    check_node(head, "head", injected=("feature_shape", "num_classes"))
    classifier_head = instantiate_node(
        head, "head", _partial_=False, feature_shape=feature_shape, num_classes=num_classes
    )
    return Classifier(trunk, classifier_head)


def build_detector(
    backbone: Mapping[str, Any],
    head: Mapping[str, Any],
    factory: LayerFactory | None,
    num_classes: int,
    image_size: int,
) -> FCOSDetector:
    """The FCOS detector (``head``) on the FPN ``backbone``, towers of the layer factory."""
    backbone, head = plain(backbone), plain(head)
    check_node(backbone, "backbone")
    trunk = instantiate_node(backbone, "backbone")
    check_node(head, "head", injected=("backbone", "num_classes", "image_size", "layer_factory"))
    return instantiate_node(
        head,
        "head",
        _partial_=False,
        backbone=trunk,
        num_classes=num_classes,
        image_size=image_size,
        layer_factory=factory,
    )


# --------------------------------------------------------------------------------------------
# Groups of independent nodes (loggers, callbacks)
# --------------------------------------------------------------------------------------------
def build_group(
    group: Mapping[str, Any] | None,
    kwargs: Callable[[str, Mapping[str, Any]], Mapping[str, Any]] | None = None,
    keep: Callable[[Mapping[str, Any]], bool] | None = None,
) -> list[Any]:
    """Every node of a config group such as ``logger`` or ``callbacks`` that has a ``_target_``, in
    order, instantiated with ``kwargs(key, node)`` (the run's name for W&B, say). Entries without a
    target (a node set to ``null``, a plain setting) and nodes that ``keep`` refuses are left out."""
    from hydra.utils import instantiate

    built = []
    for key, node in (group or {}).items():
        if not isinstance(node, Mapping) or "_target_" not in node or (keep and not keep(node)):
            continue
        built.append(instantiate(node, **(kwargs(key, node) if kwargs else {})))
    return built


# --------------------------------------------------------------------------------------------
# Data and task
# --------------------------------------------------------------------------------------------
def build_datamodule(cfg: Mapping[str, Any]):
    """``cfg.data`` -> its LightningDataModule, after checking that the choices fit together
    (before any file is read); construction errors become :class:`ConfigError`."""
    check_fit(cfg)
    return instantiate_node(cfg["data"], "data")


def build_task(cfg: Mapping[str, Any], datamodule) -> BaseTask:
    """``cfg.task`` with its network built from ``cfg.backbone``, ``cfg.rnn`` and ``cfg.head``
    for this data (its class count and input shape). That the choices fit together was checked by
    :func:`build_datamodule`, which built ``datamodule``."""
    return task_from_config(cfg, datamodule.num_classes, tuple(datamodule.input_shape))


def task_from_config(
    config: Mapping[str, Any], num_classes: int, input_shape: tuple[int, int, int]
) -> BaseTask:
    """The task of the ``task``, ``backbone``, ``rnn`` and ``head`` nodes of ``config``.

    The ``rnn`` node is instantiated once (:func:`layer_factory`); ``task.optimizer`` and
    ``task.scheduler`` become partials the task completes. The nodes, the class count and the
    input shape are stored as the task's hyperparameters (:func:`task_from_checkpoint` reads them back).
    """
    nodes = {k: plain(config[k]) for k in MODEL_NODES}
    task_node = dict(nodes["task"])
    task_cls = target_of(task_node, "task")
    factory = layer_factory(nodes["rnn"])
    if issubclass(task_cls, DetectionTask):
        net = build_detector(
            nodes["backbone"], nodes["head"], factory, num_classes, max(int(s) for s in input_shape[1:])
        )
    else:
        net = build_classifier(nodes["backbone"], nodes["head"], factory, num_classes, tuple(input_shape))
    injected = {
        "net": net,
        "input_shape": tuple(input_shape),
        "config": {**nodes, "num_classes": num_classes, "input_shape": list(input_shape)},
    }
    if "num_classes" in inspect.signature(task_cls).parameters:
        injected["num_classes"] = num_classes
    check_node(task_node, "task", injected=injected)
    check_node(task_node["optimizer"], "task.optimizer", injected=("params",))
    check_node(
        task_node["scheduler"], "task.scheduler", injected=("optimizer", "total_steps", "steps_per_epoch")
    )
    settings = {k: v for k, v in task_node.items() if not k.startswith("_")}
    settings["optimizer"] = instantiate_node(task_node["optimizer"], "task.optimizer", _partial_=True)
    settings["scheduler"] = instantiate_node(task_node["scheduler"], "task.scheduler", _partial_=True)
    _try_schedule(settings["optimizer"], settings["scheduler"], net)
    try:
        return task_cls(**settings, **injected)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"task ({task_node['_target_']}): {err}") from err


def _try_schedule(optimizer: Callable, scheduler: Callable, net: torch.nn.Module) -> None:
    """Build the optimiser and the schedule once, on a throwaway optimiser, so that a setting
    torch rejects (``task.optimizer.lr=-1``) fails now, naming the node, not after data loading."""
    try:
        trial = optimizer(net.parameters())
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"task.optimizer ({optimizer.func.__module__}.{optimizer.func.__name__}): {err}"
        ) from None
    try:
        scheduler(trial, total_steps=2, steps_per_epoch=1)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"task.scheduler ({scheduler.func.__module__}.{scheduler.func.__name__}): {err}"
        ) from None


@dataclass(frozen=True)
class TrainedTask:
    """A ``crnn-train`` checkpoint, loaded (:func:`task_from_checkpoint`)."""

    path: Path
    task: BaseTask  # rebuilt from the checkpoint's model config, its weights loaded (on the CPU)
    config: DictConfig  # the run's resolved config (:class:`crnn.callbacks.StoreConfig`): data, trainer, ...
    choices: dict[str, Any]  # the run's group choices (``backbone``, ``rnn``, ``head``, ``data``, ...)
    epoch: int | None  # the epoch the checkpoint was written in

    @property
    def run_dir(self) -> Path:
        return checkpoint_run_dir(self.path)


def checkpoint_run_dir(ckpt_path: str | Path) -> Path:
    """``<run>`` of ``<run>/checkpoints/<name>.ckpt``, else the checkpoint's folder."""
    ckpt = Path(ckpt_path).expanduser().resolve()
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def task_from_checkpoint(ckpt_path: str | Path, trust: bool = False) -> TrainedTask:
    """The task (with its weights) and the run config of a ``crnn-train`` checkpoint: the one way
    crnn reads a checkpoint back (``crnn-eval``, ``crnn-export``, ``Task.load_from_checkpoint``).

    Loaded safely (:func:`crnn.checkpoints.load_checkpoint`: tensors and plain values only, unless
    ``trust``); the task is rebuilt by :func:`task_from_config` from the model nodes stored as its
    hyperparameters; weights that do not fit it are one :class:`CheckpointError` naming them.
    """
    path = Path(ckpt_path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint file")
    checkpoint = load_checkpoint(path, trust=trust)
    stored, hparams = checkpoint.get(CONFIG_KEY), checkpoint.get("hyper_parameters") or {}
    if not isinstance(stored, Mapping) or not all(k in hparams for k in (*MODEL_NODES, *SHAPE_KEYS)):
        raise ConfigError(
            f"{path} holds no crnn config ({CONFIG_KEY!r} and the model nodes in 'hyper_parameters'): "
            "was it written by crnn-train?"
        )
    hparams = current_settings(hparams)
    task = task_from_config(hparams, hparams["num_classes"], tuple(hparams["input_shape"]))
    check_state_fits(task.state_dict(), checkpoint["state_dict"], f"its stored hyper_parameters ({path})")
    task.load_state_dict(checkpoint["state_dict"])
    config = OmegaConf.create(stored["config"])
    return TrainedTask(path, task, config, dict(stored.get("choices") or {}), checkpoint.get("epoch"))


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------
def run_labels(task: BaseTask) -> dict[str, str | None]:
    """What was built, by name: ``{"task", "backbone", "rnn", "cell", "head"}``.

    Read from the built modules (``arch`` of the backbone and head, ``layer_name`` and
    ``cell_name`` of the 2-D layer; ``rnn="none"``, ``cell=None`` when no layer was built), so the
    labels of metrics.json, W&B and the tables cannot disagree with the model:
    ``{"task": "classification", "backbone": "resnet20", "rnn": "sws_birnn", "cell": "rnn_tanh",
    "head": "linear"}``.
    """
    layers = {type(m).layer_name: m for m in task.net.modules() if isinstance(m, Layer2d)}
    if len(layers) > 1:
        raise ConfigError(f"the model holds more than one kind of 2-D layer: {', '.join(sorted(layers))}")
    layer = next(iter(layers.values()), None)
    return {
        "task": task.task_name,
        "backbone": task.net.backbone.arch,
        "rnn": layer.layer_name if layer is not None else "none",
        "cell": getattr(layer, "cell_name", None),
        "head": task.net.head.arch,
    }


def compose_config(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """Compose ``conf/train.yaml`` with ``overrides`` outside a Hydra app, ``hydra:`` resolvers working
    (the run folder is a ``tmp`` placeholder nothing here writes to). Bad overrides raise
    :class:`ConfigError` naming them."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException

    os.environ.setdefault("PROJECT_ROOT", str(project_root()))
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(project_root() / "conf"), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"overrides {' '.join(overrides) or '(none)'}: {err}") from None
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(Path(cfg.paths.log_dir) / "tmp")
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def build_model(cfg: DictConfig):
    """``(task, module, inputs)`` exactly as ``crnn-train`` builds them, without loading data."""
    if cfg.get("seed") is not None:
        torch.manual_seed(int(cfg.seed))
    datamodule = build_datamodule(cfg)  # constructors check settings only: no disk access
    task = build_task(cfg, datamodule)
    module, inputs = task.complexity_inputs()
    return task, module, inputs
