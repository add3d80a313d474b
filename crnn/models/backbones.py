"""Backbones for 32x32 input (CIFAR), each able to swap chosen blocks for a 2-D layer.

Every backbone maps ``(B, 3, 32, 32) -> (B, out_channels, h, w)`` and exposes ``out_channels``,
``blocks`` (the replaceable blocks in order) and ``arch`` (its name in run labels: ``resnet20``).
Which blocks are replaced is given by ``replace`` (see :func:`crnn.models.blocks.parse_replace`);
with ``layer_factory=None`` nothing is replaced and the backbone is the plain CNN.
"""

from __future__ import annotations

import torch
from torch import nn

from crnn.constraints import PositiveFloat, PositiveInt
from crnn.models.blocks import LayerFactory, ReplacementBlock, parse_replace


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        ),
        nn.BatchNorm2d(out_channels),
    )


def kaiming_init_(module: nn.Module) -> nn.Module:
    """Kaiming-normal (``fan_out``, ReLU gain) convolutions, BatchNorm weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


class BasicBlock(nn.Module):
    """He et al. (2016) basic block: ``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))``.

    The shortcut is the identity, or a strided 1x1 conv + BN when the shape changes (option B).
    Shapes: ``(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.branch = nn.Sequential(
            conv_bn(in_channels, out_channels, 3, stride),
            nn.ReLU(inplace=True),
            conv_bn(out_channels, out_channels, 3),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and in_channels == out_channels
            else conv_bn(in_channels, out_channels, 1, stride)
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.branch(x) + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet-(6n+2) of He et al. (2016): a 3x3 stem, three stages of n basic blocks with
    16/32/64 channels (x ``width`` / 16) at 32x32, 16x16 and 8x8.

    Initialisation: every convolution of the ResNet (stem, blocks, projection shortcuts) is
    Kaiming-normal with ``mode="fan_out"`` (std ``sqrt(2 / (C_out * k * k))``), BatchNorm weight 1
    and bias 0, the linear classifier PyTorch's default: the from-scratch recipe of the published
    CIFAR-100 ResNet-20 (68.8% top-1; chenyaofo/pytorch-cifar-models, the torchvision ResNet
    recipe), with which this network is parameter-for-parameter identical. An inserted 2-D layer
    keeps its own initialisation.

    A replaced basic block becomes :class:`ReplacementBlock` with ``post_activation=True``:
    ``relu(BN(layer(pool(x))) + shortcut(x))``: the two convs and their inner BN-ReLU become the
    layer, the outer BN, the block's own shortcut (identity or strided 1x1 conv + BN) and the ReLU
    after the sum are kept.

    Shapes: ``(B, 3, 32, 32) -> (B, 4 * width, 8, 8)``.
    """

    def __init__(
        self,
        depth: PositiveInt = 20,
        width: PositiveInt = 16,
        replace: str | int | list | None = "last",
        layer_factory: LayerFactory | None = None,
    ):
        super().__init__()
        self.arch = f"resnet{depth}"
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"backbone.depth={depth}: a CIFAR ResNet has depth 6n+2 (20, 32, 44, 56, ...)")
        n = (depth - 2) // 6
        widths = [width, 2 * width, 4 * width]
        self.stem = nn.Sequential(conv_bn(3, width, 3), nn.ReLU(inplace=True))
        kaiming_init_(self.stem)
        replaced = parse_replace(replace, [n, n, n]) if layer_factory is not None else set()
        blocks, in_channels = [], width
        for stage, out_channels in enumerate(widths):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                block = kaiming_init_(BasicBlock(in_channels, out_channels, stride))
                if len(blocks) in replaced:
                    block = ReplacementBlock(
                        layer_factory(in_channels, out_channels),
                        out_channels,
                        stride,
                        shortcut=block.shortcut,
                        post_activation=True,
                    )
                blocks.append(block)
                in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand + BN + ReLU6, 3x3 depthwise + BN + ReLU6, 1x1 project + BN
    (linear bottleneck), plus the identity when ``stride == 1 and in == out``.

    Shapes: ``(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [conv_bn(in_channels, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += [conv_bn(hidden, out_channels, 1)]
        self.branch = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch(x)
        return x + y if self.use_residual else y


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round a width to a multiple of ``divisor`` without losing more than 10% (as in MobileNetV2)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) adapted to 32x32: stem stride 1 and the first strided
    stage (24 channels) at stride 1, so the output is 4x4 (total stride 8).

    A replaced inverted residual becomes :class:`ReplacementBlock` with ``post_activation=False``:
    ``BN(layer(pool(x))) (+ x if the block had its identity shortcut)``: expand, depthwise and
    project become the layer; the projection's BN, the identity (when present) and the linear
    bottleneck (no activation after the sum) are kept.

    Shapes: ``(B, 3, 32, 32) -> (B, last_channels, 4, 4)``.
    """

    # (expand ratio t, output channels c, repeats n, first stride s)
    SETTINGS = [
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]

    arch = "mobilenetv2"

    def __init__(
        self,
        width_mult: PositiveFloat = 1.0,
        last_channels: PositiveInt = 1280,
        replace: str | int | list | None = "last",
        layer_factory: LayerFactory | None = None,
    ):
        super().__init__()
        stem_channels = _make_divisible(32 * width_mult)
        self.stem = nn.Sequential(conv_bn(3, stem_channels, 3), nn.ReLU6(inplace=True))
        stages = [n for _, _, n, _ in self.SETTINGS]
        replaced = parse_replace(replace, stages) if layer_factory is not None else set()
        blocks, in_channels = [], stem_channels
        for t, c, n, s in self.SETTINGS:
            out_channels = _make_divisible(c * width_mult)
            for i in range(n):
                stride = s if i == 0 else 1
                block = InvertedResidual(in_channels, out_channels, stride, t)
                if len(blocks) in replaced:
                    block = ReplacementBlock(
                        layer_factory(in_channels, out_channels),
                        out_channels,
                        stride,
                        shortcut=nn.Identity() if block.use_residual else None,
                        post_activation=False,
                    )
                blocks.append(block)
                in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = _make_divisible(last_channels * max(1.0, width_mult))
        self.final = nn.Sequential(conv_bn(in_channels, self.out_channels, 1), nn.ReLU6(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.blocks(self.stem(x)))
