"""Classification heads on a backbone feature map ``(B, C, h, w) -> (B, num_classes)``.

Each head is built as ``head(feature_shape=(C, h, w), num_classes=K)``; ``arch`` is its name in
run labels.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from crnn.constraints import PositiveInt
from crnn.layers import run_rnn, run_ws_birnn
from crnn.layers.cells import get_cell


class LinearHead(nn.Module):
    """Global average pool + fully connected layer. ``(B, C, h, w) -> (B, num_classes)``."""

    arch = "linear"

    def __init__(self, feature_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(feature_shape[0], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(x).flatten(1)))


class SequenceHead(nn.Module):
    """The classic CNN+RNN recipe: feature map -> sequence -> RNN -> FC.

    ``scan`` turns ``(B, C, h, w)`` into a sequence ``(B, L, F)``:
    ``pixels``: every position a step, row-major (``L = h*w``, ``F = C``); ``rows``: every row a
    step (``L = h``, ``F = C*w``); ``cols``: every column a step (``L = w``, ``F = C*h``).

    ``bidirectional``: ``none`` (one direction), ``standard`` (separate forward and backward
    weights, outputs concatenated, ``2*hidden``), ``shared`` (one weight set on the sequence and
    on its reverse, outputs summed, ``hidden``: the WS-BiRNN of the paper).

    ``readout``: ``last`` (each direction's final state: the forward pass at step L-1, the
    backward pass at step 0) or ``mean`` (each direction averaged over the steps).
    Shapes: ``(B, C, h, w) -> (B, num_classes)``.
    """

    arch = "sequence"
    SCANS = ("pixels", "rows", "cols")
    DIRECTIONS = ("none", "standard", "shared")
    READOUTS = ("last", "mean")

    def __init__(
        self,
        feature_shape: tuple[int, int, int],
        num_classes: int,
        cell: str = "lstm",
        hidden_size: PositiveInt = 128,
        scan: Literal["pixels", "rows", "cols"] = "pixels",
        bidirectional: Literal["none", "standard", "shared"] = "none",
        readout: Literal["last", "mean"] = "last",
        dropout: float = 0.0,
    ):
        super().__init__()
        for key, value, valid in (
            ("scan", scan, self.SCANS),
            ("bidirectional", bidirectional, self.DIRECTIONS),
            ("readout", readout, self.READOUTS),
        ):
            if value not in valid:
                raise ValueError(f"head.{key}={value!r}: valid choices are {', '.join(valid)}")
        channels, height, width = feature_shape
        if height * width < 2:
            raise ValueError(
                f"head=sequence needs a spatial feature map but the backbone gives "
                f"{channels}x{height}x{width}; use head=linear or a backbone with a larger output map"
            )
        features = {"pixels": channels, "rows": channels * width, "cols": channels * height}[scan]
        self.scan, self.bidirectional, self.readout = scan, bidirectional, readout
        try:
            spec = get_cell(cell)
        except ValueError as err:
            raise ValueError(f"head.cell: {err}") from None
        self.rnn = spec.make(features, hidden_size, bidirectional=bidirectional == "standard")
        self.dropout = nn.Dropout(dropout)
        out_features = 2 * hidden_size if bidirectional == "standard" else hidden_size
        self.fc = nn.Linear(out_features, num_classes)

    def to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w) -> (L, B, F)`` (sequence first, the RNN's native layout)."""
        b, c, h, w = x.shape
        if self.scan == "pixels":
            return x.flatten(2).permute(2, 0, 1)
        if self.scan == "rows":
            return x.permute(2, 0, 1, 3).reshape(h, b, c * w)
        return x.permute(3, 0, 1, 2).reshape(w, b, c * h)

    def _read(self, out: torch.Tensor, backward: bool) -> torch.Tensor:
        """One direction's summary of ``out (L, N, H)``; a backward pass ends at step 0."""
        if self.readout == "mean":
            return out.mean(0)
        return out[0] if backward else out[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.to_sequence(x)
        if self.bidirectional == "shared":
            # both directions in one call (run_ws_birnn): (2, L, B, H), each by sequence position
            forward, backward = run_ws_birnn(self.rnn, seq, merge=False).unbind(0)
            summary = self._read(forward, backward=False) + self._read(backward, backward=True)
        elif self.bidirectional == "standard":
            out = run_rnn(self.rnn, seq)
            forward, backward = out.chunk(2, dim=-1)
            summary = torch.cat([self._read(forward, False), self._read(backward, True)], dim=-1)
        else:
            out = run_rnn(self.rnn, seq)
            summary = self._read(out, backward=False)
        return self.fc(self.dropout(summary))
