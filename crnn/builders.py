"""Config nodes -> models: the one bridge between Hydra configs and the pure-torch models.

``crnn.layers`` and ``crnn.models`` know nothing of Hydra; tasks call these builders with the
``backbone``, ``rnn`` and ``head`` nodes of the composed config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from crnn.models import Classifier, LayerFactory


class ConfigError(ValueError):
    """A composed configuration that cannot be built; the message names the config keys."""


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
    try:
        trunk = instantiate(backbone, layer_factory=layer_factory(rnn))
    except ConfigError:
        raise
    except Exception as err:  # Hydra wraps constructor errors; keep the original message
        cause = err.__cause__ or err
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"backbone={backbone.get('_target_')}: {cause}") from err
    was_training = trunk.training
    trunk.eval()
    with torch.no_grad():
        feature_shape = tuple(trunk(torch.zeros(1, *input_shape)).shape[1:])
    trunk.train(was_training)
    try:
        classifier_head = instantiate(head)(feature_shape=feature_shape, num_classes=num_classes)
    except Exception as err:
        raise ConfigError(f"head: {err.__cause__ or err}") from err
    return Classifier(trunk, classifier_head)
