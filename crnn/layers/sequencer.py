"""Sequencer2D-style parallel BiRNN (cf. timm ``timm/models/sequencer.py``, ``LSTM2d``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .cells import get_cell
from .registry import ALL_CELLS, Layer2d, check_positive, register_layer
from .separable import BiRNNPass

__all__ = ["Sequencer2d"]


@register_layer("sequencer", family="sequencer", order=7, marker=">", cells=ALL_CELLS)
class Sequencer2d(Layer2d):
    """Row and column BiRNNs read the **same** input in parallel; concat; ``1 x 1`` projection.

    ``r = BiRNN_row(x)`` along W and ``c = BiRNN_col(x)`` along H (separate weights per pass and
    per direction), each ``2q`` wide (``q`` units per direction, directions concatenated);
    ``y = Linear([r, c]) `` from ``4q`` to ``O`` channels, with bias (as in Sequencer2D).
    ``hidden_channels`` is the total concatenated width ``4q`` (default ``O``; must be divisible
    by 4). Every output sees its whole row and column only; stacking two layers sees the image.

    Shapes: ``(B, C, H, W) -> r (W, B, H, 2q), c (H, B, W, 2q) -> (W, B, H, 4q) -> (B, O, H, W)``.

    With ``P(I, H) = g*H*(I + H) + 2*g*H`` and ``M(I, H) = g*H*(I + H)``:

    * params: ``4 P(C, q) + 4q*O + O``
    * MACs:   ``H*W * (4 M(C, q) + 4q*O)``
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden_channels: int | None = None, cell: str = "lstm"
    ):
        super().__init__()
        hidden_channels = out_channels if hidden_channels is None else hidden_channels
        check_positive(in_channels=in_channels, out_channels=out_channels, hidden_channels=hidden_channels)
        get_cell(cell)
        if hidden_channels % 4:
            raise ValueError(
                "sequencer needs hidden_channels divisible by 4 (it is the concatenated width of two "
                f"bidirectional passes), got hidden_channels={hidden_channels}"
            )
        self.in_channels, self.out_channels, self.hidden_channels = in_channels, out_channels, hidden_channels
        self.cell_name = cell
        q = hidden_channels // 4
        self.row = BiRNNPass(in_channels, q, cell, merge="cat")
        self.col = BiRNNPass(in_channels, q, cell, merge="cat")
        self.proj = nn.Linear(hidden_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        r = self.row.forward_seq_first(x.permute(3, 0, 2, 1))  # (W, B, H, 2q): rows along W
        c = self.col.forward_seq_first(x.permute(2, 0, 3, 1))  # (H, B, W, 2q): columns along H
        y = torch.cat([r, c.permute(2, 1, 0, 3)], dim=-1)  # (W, B, H, 4q), one copy
        return self.proj(y).permute(1, 3, 2, 0).contiguous()  # (B, O, H, W)

    def closed_form_params(self) -> int:
        return (
            self.row.closed_form_params()
            + self.col.closed_form_params()
            + self.hidden_channels * self.out_channels
            + self.out_channels
        )

    def closed_form_macs(self, height: int, width: int) -> int:
        return (
            height
            * width
            * (
                self.row.macs_per_token()
                + self.col.macs_per_token()
                + self.hidden_channels * self.out_channels
            )
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, hidden_channels={self.hidden_channels}, "
            f"cell={self.cell_name!r}"
        )
