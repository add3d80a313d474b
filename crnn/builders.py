"""Config nodes -> models: the one bridge between Hydra configs and the pure-torch models.

``crnn.layers`` and ``crnn.models`` know nothing of Hydra; tasks call these builders with the
``backbone``, ``rnn`` and ``head`` nodes of the composed config.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from crnn.errors import ConfigError
from crnn.models import Classifier, LayerFactory


def instantiate_node(node: Mapping[str, Any], key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)`` whose construction errors become one
    :class:`ConfigError` naming ``key`` (Hydra wraps them in its own exception, with a traceback
    that says nothing to a user). Errors that are not about the config pass through."""
    try:
        return instantiate(node, **kwargs)
    except Exception as err:
        cause = err
        while cause.__cause__ is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        if isinstance(cause, (TypeError, ValueError)):
            raise ConfigError(f"{key} ({node.get('_target_')}): {cause}") from err
        raise


def layer_factory(rnn_cfg: Mapping[str, Any] | None) -> LayerFactory | None:
    """``rnn`` config node -> ``factory(in_channels, out_channels)``, or ``None`` for ``rnn=none``.

    The node is a partial :func:`crnn.layers.build_layer` (``_target_``, ``_partial_: true``,
    ``name`` and the layer's keyword arguments); ``{name: none}`` means "keep the plain CNN".
    """
    if rnn_cfg is None or rnn_cfg.get("name") == "none":
        return None
    factory = instantiate(rnn_cfg)

    def build(in_channels: int, out_channels: int) -> nn.Module:
        try:
            return factory(in_channels=in_channels, out_channels=out_channels)
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"rnn={rnn_cfg.get('name')} (in {in_channels}, out {out_channels}): {err}"
            ) from err

    return build


def _as_dict(cfg: Mapping[str, Any] | DictConfig | None) -> dict | None:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return None if cfg is None else dict(cfg)


def build_classifier(
    backbone: Mapping[str, Any],
    rnn: Mapping[str, Any] | None,
    head: Mapping[str, Any],
    num_classes: int,
    input_shape: tuple[int, int, int] = (3, 32, 32),
) -> Classifier:
    """Build the classifier from the ``backbone``, ``rnn`` and ``head`` config nodes.

    The backbone is instantiated with the layer factory; the head gets the shape of the
    backbone's feature map, found by one forward pass of a zero image of ``input_shape``.
    Raises :class:`ConfigError` naming the keys when the combination cannot be built.
    """
    backbone, rnn, head = _as_dict(backbone), _as_dict(rnn), _as_dict(head)
    if "layer_factory" not in inspect.signature(get_object(backbone["_target_"])).parameters:
        raise ConfigError(
            f"backbone ({backbone['_target_']}) is not a classification backbone: pick one of "
            "resnet20, resnet32, resnet44, resnet56, mobilenetv2"
        )
    trunk = instantiate_node(backbone, "backbone", layer_factory=layer_factory(rnn))
    was_training = trunk.training
    trunk.eval()
    with torch.no_grad():
        feature_shape = tuple(trunk(torch.zeros(1, *input_shape)).shape[1:])
    trunk.train(was_training)
    try:
        classifier_head = instantiate(head)(feature_shape=feature_shape, num_classes=num_classes)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"head ({head.get('_target_')}): {err}") from err
    return Classifier(trunk, classifier_head)


def build_datamodule(cfg: Mapping[str, Any]):
    """``cfg.data`` -> its LightningDataModule; construction errors become :class:`ConfigError`."""
    return instantiate_node(cfg["data"], "data")


def build_task(cfg: Mapping[str, Any], datamodule):
    """Instantiate ``cfg.task`` for this data; construction errors become :class:`ConfigError`."""
    return instantiate_node(
        cfg["task"], "task", num_classes=datamodule.num_classes, input_shape=tuple(datamodule.input_shape)
    )
