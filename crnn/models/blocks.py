"""The block that puts a 2-D layer of :mod:`crnn.layers` in place of a backbone block.

A layer from :func:`crnn.layers.build_layer` maps ``(B, C_in, H, W) -> (B, C_out, H, W)`` and
holds no residual, norm or extra activation; the block around it supplies those, copying the
pattern of the block it replaces so that "RNN vs conv" changes the layer and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

LayerFactory = Callable[[int, int], nn.Module]
"""``factory(in_channels, out_channels) -> nn.Module``: a configured layer class of :mod:`crnn.layers`."""


class ReplacementBlock(nn.Module):
    """A 2-D layer wrapped in the residual and normalisation pattern of the block it replaces.

    ``out = post_act(BN(layer(downsample(x))) + shortcut(x))``

    - ``downsample``: identity, or ``AvgPool2d(stride)`` when the replaced block strides (the
      layers keep the spatial size, so the block reduces it first, parameter-free).
    - ``shortcut``: the replaced block's own shortcut module (identity, or its strided 1x1
      conv + BN), or ``None`` when the replaced block had no residual connection (a MobileNetV2
      block that changes width or strides).
    - ``post_act``: ReLU after the sum for a ResNet basic block; identity for a MobileNetV2
      inverted residual (its linear bottleneck has no activation after the projection).

    Shapes: ``(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)``.
    """

    def __init__(
        self,
        layer: nn.Module,
        out_channels: int,
        stride: int = 1,
        shortcut: nn.Module | None = None,
        post_activation: bool = True,
    ):
        super().__init__()
        self.downsample = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.layer = layer
        self.norm = nn.BatchNorm2d(out_channels)
        self.shortcut = shortcut
        self.act = nn.ReLU(inplace=True) if post_activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.layer(self.downsample(x)))
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        return self.act(y)


def parse_replace(replace: str | int | list | None, stages: list[int]) -> set[int]:
    """Which blocks (global indices) a layer replaces.

    ``replace`` is ``"last"`` (the last block: the paper's setting), ``"stage:K"`` (every block
    of stage K, 1-based), ``"block:I"`` or an int ``I`` (global block index, negative counts from
    the end), ``None``/``"none"`` (nothing), or a list of these. ``stages`` holds the number of
    blocks per stage.
    """
    n_blocks = sum(stages)
    if replace is None or replace == "none":
        return set()
    if isinstance(replace, (list, tuple)) or type(replace).__name__ == "ListConfig":
        return set().union(*(parse_replace(r, stages) for r in replace))
    if isinstance(replace, int):
        if not -n_blocks <= replace < n_blocks:
            raise ValueError(f"backbone.replace: block index {replace} out of range for {n_blocks} blocks")
        return {replace % n_blocks}
    spec = str(replace).strip()
    if spec == "last":
        return {n_blocks - 1}
    kind, _, value = spec.partition(":")
    if kind == "block" and value.lstrip("-").isdigit():
        return parse_replace(int(value), stages)
    if kind == "stage" and value.isdigit() and 1 <= int(value) <= len(stages):
        start = sum(stages[: int(value) - 1])
        return set(range(start, start + stages[int(value) - 1]))
    raise ValueError(
        f"backbone.replace={replace!r} is not understood: use 'last', 'stage:K' (1..{len(stages)}), "
        f"'block:I' (-{n_blocks}..{n_blocks - 1}), 'none' or a list of these"
    )
