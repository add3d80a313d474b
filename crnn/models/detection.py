"""A small FCOS detector whose head towers are conv stacks or layers of :mod:`crnn.layers`.

Built on torchvision's :class:`~torchvision.models.detection.FCOS`: its focal / GIoU /
centerness losses, point (anchor) generation, box coding, resize-and-normalise transform and NMS
are used as they are. This module supplies

- backbones with a feature pyramid (:func:`mobilenet_v3_fpn`, :func:`resnet18_fpn`,
  :func:`cifar_trunk_fpn`): ``(B, 3, H, W) -> OrderedDict`` of ``fpn_channels``-wide maps at
  strides 8, 16, 32 (C3..C5 through an FPN) and optionally 64, 128 (P6, P7);
- :class:`FCOSTowerHead`: torchvision's FCOS head with its classification and regression towers
  built by :func:`build_tower` (``rnn=none``: the standard ``conv3x3 + GroupNorm + ReLU`` stack;
  otherwise ``layer + GroupNorm + ReLU`` blocks of the chosen 2-D layer). As in FCOS, one tower per
  branch is shared by all pyramid levels;
- :class:`FCOSDetector`: torchvision FCOS on such a backbone with those towers; the layer arrives
  as a ``layer_factory(in_channels, out_channels)`` (constructor injection: no config here).

Why FCOS: anchor-free (one point per location, so a layer that changes the tower changes nothing
about anchor design), GroupNorm towers that are shared across levels (exactly the place a
recurrent layer can go in both branches) and complete torchvision losses and post-processing;
RetinaNet needs anchor tuning at small input sizes, SSDLite has no towers to replace.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torchvision.models import get_model_weights
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.resnet import BasicBlock
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from crnn.constraints import NonNegativeInt, PositiveFloat, PositiveInt, Probability
from crnn.layers import Layer2d
from crnn.models.blocks import LayerFactory

__all__ = [
    "FCOSDetector",
    "FCOSNetwork",
    "FCOSTowerHead",
    "FPNBackbone",
    "Tower",
    "build_tower",
    "cifar_trunk_fpn",
    "mobilenet_v3_fpn",
    "resnet18_fpn",
]


# --------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------
class FPNBackbone(nn.Module):
    """``body`` (C3, C4, C5) -> torchvision FPN (+ ``extra_levels``) -> ``OrderedDict`` of maps.

    ``extra_levels``: 0 (P3-P5), 1 (P6 by stride-2 max-pool, torchvision's ``LastLevelMaxPool``)
    or 2 (P6, P7 by stride-2 convs, torchvision's ``LastLevelP6P7`` as in FCOS/RetinaNet).
    Attributes: ``out_channels`` (all levels), ``strides`` (one per level), ``arch`` (its name in
    run labels).
    """

    def __init__(
        self,
        body: nn.Module,
        in_channels_list: list[int],
        strides: list[int],
        fpn_channels: int = 64,
        extra_levels: int = 2,
        arch: str = "fpn",
    ):
        super().__init__()
        self.arch = arch
        if extra_levels not in (0, 1, 2):
            raise ValueError(f"backbone.extra_levels={extra_levels}: valid values are 0, 1 (P6), 2 (P6, P7)")
        if fpn_channels < 1:
            raise ValueError(f"backbone.fpn_channels={fpn_channels} must be positive")
        extra = {0: None, 1: LastLevelMaxPool(), 2: LastLevelP6P7(fpn_channels, fpn_channels)}[extra_levels]
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels_list, fpn_channels, extra_blocks=extra)
        self.out_channels = fpn_channels
        self.strides = list(strides) + [strides[-1] * 2**k for k in range(1, extra_levels + 1)]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(x))


def _load_weights(arch: str, weights: str | None) -> tuple[Any, str | None]:
    """``weights`` -> (torchvision weights enum or None, path of a local state-dict file or None).

    ``weights`` is null (random init), a torchvision weights name of ``arch`` (``DEFAULT``,
    ``IMAGENET1K_V1``, ...) or a path to a ``.pth`` state dict of the classification model.
    """
    if weights is None or str(weights).lower() in ("none", "null", ""):
        return None, None
    if Path(str(weights)).expanduser().is_file():
        return None, str(Path(str(weights)).expanduser())
    try:
        enum = get_model_weights(arch)[str(weights)]
    except KeyError:
        names = [w.name for w in get_model_weights(arch)] + ["DEFAULT"]
        raise ValueError(
            f"backbone.weights={weights!r}: neither a file nor a torchvision weights name of {arch} "
            f"({', '.join(names)})"
        ) from None
    return enum, None


def _build_classifier_model(
    arch: str, weights: str | None, builder: Callable[..., nn.Module], **kwargs
) -> nn.Module:
    """Build a torchvision classification model, loading ``weights`` with a clear error offline."""
    enum, path = _load_weights(arch, weights)
    if enum is not None:
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        try:
            return builder(weights=enum, **kwargs)
        except Exception as err:  # URLError, OSError, hash mismatch...
            raise RuntimeError(
                f"backbone.weights={weights}: could not load {enum.url} (not usable in the torch hub cache "
                f"{cache}; offline?). Put the file there, give a local .pth path, or set "
                "backbone.weights=null. "
                f"Cause: {err}"
            ) from err
    model = builder(weights=None, **kwargs)
    if path is not None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            model.load_state_dict(state)
        except Exception as err:
            raise RuntimeError(f"backbone.weights={path}: not a state dict of {arch}: {err}") from err
    return model


def _stride_ends(layers: nn.Sequential, probe: int = 64) -> dict[int, int]:
    """Index of the last layer at each output stride of a sequential feature extractor."""
    x = torch.zeros(1, 3, probe, probe)
    ends: dict[int, int] = {}
    was_training = layers.training
    layers.eval()
    with torch.no_grad():
        for i, layer in enumerate(layers):
            x = layer(x)
            ends[probe // x.shape[-1]] = i
    layers.train(was_training)
    return ends


def mobilenet_v3_fpn(
    variant: Literal["large", "small"] = "large",
    width_mult: PositiveFloat = 1.0,
    weights: str | None = None,
    fpn_channels: PositiveInt = 64,
    extra_levels: Literal[0, 1, 2] = 1,
) -> FPNBackbone:
    """torchvision MobileNetV3 (``large`` | ``small``) ``features``; C3, C4, C5 = the last layer at
    strides 8, 16, 32 (for ``large``: 40, 112, 960 channels at width 1) -> FPN."""
    import torchvision.models as tvm

    if variant not in ("large", "small"):
        raise ValueError(f"backbone.variant={variant!r}: valid values are large, small")
    arch = f"mobilenet_v3_{variant}"
    builder = getattr(tvm, arch)
    norm = {"norm_layer": FrozenBatchNorm2d} if weights else {}
    model = _build_classifier_model(arch, weights, builder, width_mult=width_mult, **norm)
    features = model.features
    ends = _stride_ends(features)
    picks = [ends[s] for s in (8, 16, 32)]
    body = IntermediateLayerGetter(features, {str(i): f"c{k + 3}" for k, i in enumerate(picks)})
    with torch.no_grad():
        features.eval()
        chans = [t.shape[1] for t in body(torch.zeros(1, 3, 64, 64)).values()]
        features.train()
    return FPNBackbone(body, chans, [8, 16, 32], fpn_channels, extra_levels, arch="mobilenet_v3_fpn")


def resnet18_fpn(
    weights: str | None = None,
    fpn_channels: PositiveInt = 64,
    extra_levels: Literal[0, 1, 2] = 1,
) -> FPNBackbone:
    """torchvision ResNet-18; C3, C4, C5 = ``layer2``, ``layer3``, ``layer4`` (128, 256, 512 ch) -> FPN.

    About 11.2M parameters in the trunk alone: above the "few million" budget of the small detector,
    offered as the standard reference backbone.
    """
    import torchvision.models as tvm

    norm = {"norm_layer": FrozenBatchNorm2d} if weights else {}
    model = _build_classifier_model("resnet18", weights, tvm.resnet18, **norm)
    body = IntermediateLayerGetter(model, {"layer2": "c3", "layer3": "c4", "layer4": "c5"})
    return FPNBackbone(body, [128, 256, 512], [8, 16, 32], fpn_channels, extra_levels, arch="resnet18_fpn")


class CifarTrunk(nn.Sequential):
    """A small CIFAR-ResNet-style trunk for small images.

    ``stem``: two ``conv3x3 + BN + ReLU`` at stride 2 (stride 4, ``stem_channels``), then three
    stages of torchvision ``BasicBlock`` s (``blocks`` per stage, ``widths`` channels) whose first
    block strides 2 (projection shortcut ``conv1x1 + BN``): outputs at strides 8, 16, 32.
    """

    def __init__(self, widths=(32, 64, 128), blocks=(2, 2, 2), stem_channels: int = 16):
        if len(widths) != 3 or len(blocks) != 3:
            raise ValueError(
                f"backbone.widths={list(widths)} and backbone.blocks={list(blocks)} need 3 entries each"
            )
        if min(blocks) < 1:
            raise ValueError(f"backbone.blocks={list(blocks)}: at least one block per stage")
        layers: list[tuple[str, nn.Module]] = [
            (
                "stem",
                nn.Sequential(
                    nn.Conv2d(3, stem_channels, 3, 2, 1, bias=False),
                    nn.BatchNorm2d(stem_channels),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(stem_channels, stem_channels, 3, 2, 1, bias=False),
                    nn.BatchNorm2d(stem_channels),
                    nn.ReLU(inplace=True),
                ),
            )
        ]
        c_in = stem_channels
        for k, (width, n) in enumerate(zip(widths, blocks, strict=False)):
            down = nn.Sequential(nn.Conv2d(c_in, width, 1, 2, bias=False), nn.BatchNorm2d(width))
            stage = [BasicBlock(c_in, width, stride=2, downsample=down)]
            stage += [BasicBlock(width, width) for _ in range(n - 1)]
            layers.append((f"stage{k + 1}", nn.Sequential(*stage)))
            c_in = width
        super().__init__(OrderedDict(layers))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def cifar_trunk_fpn(
    widths: list[PositiveInt] | tuple[PositiveInt, ...] = (32, 64, 128),
    blocks: list[PositiveInt] | tuple[PositiveInt, ...] = (2, 2, 2),
    stem_channels: PositiveInt = 16,
    fpn_channels: PositiveInt = 64,
    extra_levels: Literal[0, 1, 2] = 0,
    weights: str | None = None,
) -> FPNBackbone:
    """:class:`CifarTrunk` (random init only) -> FPN; for small inputs (``synthetic_shapes``)."""
    if weights:
        raise ValueError(f"backbone.weights={weights!r}: cifar_trunk_fpn has no pretrained weights; use null")
    trunk = CifarTrunk(tuple(widths), tuple(blocks), stem_channels)
    body = IntermediateLayerGetter(trunk, {"stage1": "c3", "stage2": "c4", "stage3": "c5"})
    return FPNBackbone(body, list(widths), [8, 16, 32], fpn_channels, extra_levels, arch="cifar_trunk_fpn")


# --------------------------------------------------------------------------------------------
# Head
# --------------------------------------------------------------------------------------------
TOWER_INITS = ("fcos", "layer")


def fcos_tower_init_(layer: nn.Module, std: float = 0.01) -> nn.Module:
    """torchvision FCOS's tower initialisation applied to a 2-D layer of :mod:`crnn.layers`.

    Every weight matrix / kernel (a parameter with 2 or more dims) that is NOT a recurrent matrix
    (names holding ``hh``: ``weight_hh_*`` of ``nn.RNN``/``GRU``/``LSTM`` and RNN2D's ``weight_hh``)
    is drawn from N(0, std); recurrent matrices, per-channel (1-D) weights and biases keep the
    layer's own initialisation. For a conv layer this is exactly what torchvision does to the conv
    tower. Why: the GroupNorm after each block rescales whatever the layer emits, and small input
    projections keep a tanh recurrence out of saturation at the start (with the default init, the
    FPN's O(1)-scale features drive SWS-BiRNN's tanh units to +-1 and its gradients vanish).
    """
    for name, param in layer.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if param.dim() >= 2 and "hh" not in leaf:
            nn.init.normal_(param, std=std)
        elif leaf.startswith("bias"):
            nn.init.zeros_(param)
    return layer


def build_tower(
    in_channels: int,
    channels: int,
    depth: int,
    norm_groups: int,
    layer_factory: LayerFactory | None,
    init: str,
) -> nn.Sequential:
    """``depth`` blocks of ``layer + GroupNorm(norm_groups) + ReLU``; the first maps
    ``in_channels -> channels``.

    ``layer_factory=None``: ``layer`` is torchvision FCOS's ``Conv2d(3x3, padding 1)`` with its
    initialisation (normal std 0.01, zero bias); otherwise ``layer_factory(c_in, c_out)`` (a layer
    of :mod:`crnn.layers`), initialised by :func:`fcos_tower_init_` (``init="fcos"``) or left at
    its own initialisation (``init="layer"``).
    """
    if init not in TOWER_INITS:
        raise ValueError(f"head.tower_init={init!r}: valid values are {', '.join(TOWER_INITS)}")
    if depth < 0:
        raise ValueError(f"head.tower_depth={depth} must be >= 0")
    if depth == 0 and in_channels != channels:
        raise ValueError(
            f"head.tower_depth=0 needs head.tower_channels == backbone.fpn_channels ({in_channels})"
        )
    if channels % norm_groups:
        valid = [g for g in range(1, channels + 1) if channels % g == 0]
        raise ValueError(
            f"head.norm_groups={norm_groups} does not divide the tower width {channels}; "
            f"valid values: {', '.join(map(str, valid))}"
        )
    blocks: list[nn.Module] = []
    for i in range(depth):
        c_in = in_channels if i == 0 else channels
        if layer_factory is None:
            layer = nn.Conv2d(c_in, channels, kernel_size=3, stride=1, padding=1)
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, 0)
        else:
            layer = layer_factory(c_in, channels)
            if init == "fcos":
                fcos_tower_init_(layer)
        blocks += [layer, nn.GroupNorm(norm_groups, channels), nn.ReLU()]
    return Tower(*blocks)


class Tower(nn.Sequential):
    """A head tower: ``layer + GroupNorm + ReLU`` blocks, shared by every pyramid level.

    ``forward(x)``: one map. ``forward_levels(maps)``: every level, block by block; a layer of
    :mod:`crnn.layers` gets all levels in one call (:meth:`~crnn.layers.Layer2d.forward_levels`),
    which on the fast RNN path runs their sequences as one packed recurrence: a step costs one matmul
    for all levels, not one per level.
    """

    def forward_levels(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        for block in self:
            maps = block.forward_levels(maps) if isinstance(block, Layer2d) else [block(m) for m in maps]
        return maps


class FCOSTowerHead(FCOSHead):
    """torchvision :class:`FCOSHead` (losses, box coder, predictors) with configurable towers.

    ``classification_tower`` and ``regression_tower`` (applied to every pyramid level with shared
    weights) are :func:`build_tower` stacks: the standard conv tower for ``layer_factory=None``, a
    tower of the 2-D layer otherwise; each runs over all levels at once (:meth:`Tower.forward_levels`)
    and feeds torchvision's predictors (``classification_head`` / ``regression_head`` built without
    towers of their own: ``cls_logits``, ``bbox_reg``, ``bbox_ctrness``, 3x3 convs reading
    ``tower_channels``). Built by :class:`FCOSDetector`, where the defaults of its settings live.
    """

    arch = "fcos"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        layer_factory: LayerFactory | None,
        tower_depth: int,
        tower_channels: int | None,
        norm_groups: int,
        prior_probability: float,
        tower_init: str,
    ):
        channels = tower_channels or in_channels
        super().__init__(channels, num_anchors=1, num_classes=num_classes, num_convs=0)
        args = (in_channels, channels, tower_depth, norm_groups, layer_factory, tower_init)
        self.classification_tower = build_tower(*args)
        self.regression_tower = build_tower(*args)
        nn.init.constant_(
            self.classification_head.cls_logits.bias, -math.log((1 - prior_probability) / prior_probability)
        )

    def forward(self, x: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """torchvision's :meth:`FCOSHead.forward` on the towers' outputs of the levels ``x``."""
        cls_logits = self.classification_head(self.classification_tower.forward_levels(x))
        bbox_regression, bbox_ctrness = self.regression_head(self.regression_tower.forward_levels(x))
        return {"cls_logits": cls_logits, "bbox_regression": bbox_regression, "bbox_ctrness": bbox_ctrness}


class FCOSNetwork(nn.Module):
    """The network part of an FCOS model (backbone + FPN + head) as one tensor -> tensors module.

    What :func:`crnn.complexity.count_macs` counts: ``(B, 3, H, W)`` normalised image ->
    ``(cls_logits (B, N, K), bbox_regression (B, N, 4), bbox_ctrness (B, N, 1))``. Not included
    (no learned MACs): the resize/normalise transform, point generation, box decoding, top-k and NMS.
    """

    def __init__(self, model: FCOS):
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = list(self.backbone(x).values())
        out = self.head(features)
        return out["cls_logits"], out["bbox_regression"], out["bbox_ctrness"]


# --------------------------------------------------------------------------------------------
# Detector
# --------------------------------------------------------------------------------------------
class FCOSDetector(FCOS):
    """torchvision :class:`~torchvision.models.detection.FCOS` on ``backbone`` with
    :class:`FCOSTowerHead` towers of ``layer_factory``'s layer (``None``: conv towers).

    Every default of the detector lives here, once: the tower settings (``tower_depth``,
    ``tower_channels`` (``None`` = the FPN width), ``norm_groups``, ``prior_probability``,
    ``tower_init``) and torchvision FCOS's training and inference settings
    (``center_sampling_radius``, ``score_thresh``, ``nms_thresh``, ``detections_per_img``,
    ``topk_candidates``). Images are resized inside the model so the longer side is ``image_size``
    (a no-op for the data modules, which already do so) and padded to a multiple of the largest
    stride. One point per location, of size = the level's stride (torchvision FCOS's convention).
    Input: list of ``(3, h, w)`` images in [0, 1]; output: training, the loss dict; eval, one
    ``{boxes (N, 4) xyxy, scores (N,), labels (N,)}`` per image.
    """

    def __init__(
        self,
        backbone: FPNBackbone,
        num_classes: int,
        image_size: int,
        layer_factory: LayerFactory | None = None,
        tower_depth: NonNegativeInt = 4,
        tower_channels: PositiveInt | None = None,
        norm_groups: PositiveInt = 16,
        prior_probability: Probability = 0.01,
        tower_init: Literal["fcos", "layer"] = "fcos",
        center_sampling_radius: float = 1.5,
        score_thresh: Probability = 0.05,
        nms_thresh: Probability = 0.6,
        detections_per_img: PositiveInt = 100,
        topk_candidates: PositiveInt = 1000,
    ):
        head = FCOSTowerHead(
            backbone.out_channels,
            num_classes,
            layer_factory,
            tower_depth,
            tower_channels,
            norm_groups,
            prior_probability,
            tower_init,
        )
        strides = backbone.strides
        if image_size % strides[-1]:
            warnings.warn(
                f"image size {image_size} is not a multiple of the largest stride {strides[-1]}: batches are "
                f"padded up to a multiple of it",
                stacklevel=2,
            )
        super().__init__(
            backbone,
            num_classes,
            min_size=image_size,
            max_size=image_size,
            anchor_generator=AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides)),
            head=head,
            center_sampling_radius=center_sampling_radius,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            topk_candidates=topk_candidates,
            size_divisible=strides[-1],
        )
