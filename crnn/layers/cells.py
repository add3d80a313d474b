"""Recurrent cells shared by the 2-D layers, and their closed-form sizes.

A *cell* names the 1-D recurrence a layer runs along rows and columns:

=============  ==================  =====  ==========================================
name           module              gates  step
=============  ==================  =====  ==========================================
``rnn_tanh``   ``nn.RNN(tanh)``    1      h' = tanh(W x + b_i + U h + b_h)
``rnn_relu``   ``nn.RNN(relu)``    1      h' = relu(W x + b_i + U h + b_h)
``gru``        ``nn.GRU``          3      r, z, n gates (PyTorch's GRU)
``lstm``       ``nn.LSTM``         4      i, f, g, o gates (PyTorch's LSTM)
=============  ==================  =====  ==========================================

For a cell with ``g`` gates, input width ``I`` and hidden width ``H`` one direction holds
``W_ih (gH x I)``, ``W_hh (gH x H)`` and two biases ``(gH)`` (PyTorch keeps ``b_ih`` and ``b_hh``
separately), so

* params per direction: ``g*H*(I + H) + 2*g*H``
* MACs per token (sequence element) per direction: ``g*H*(I + H)``: every weight is used once per
  token, the recurrent product included at the first step (``h_0 = 0`` is multiplied like any state).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

__all__ = ["CELLS", "CellSpec", "get_cell", "rnn_macs_per_token", "rnn_params"]


@dataclass(frozen=True)
class CellSpec:
    """A recurrent cell: the fused ``torch.nn`` RNN that implements it and its gate multiplier."""

    name: str
    module: type[nn.RNNBase]
    gates: int
    nonlinearity: str | None = None  # only for nn.RNN

    @property
    def activation(self) -> str:
        """The state nonlinearity of a vanilla cell (``tanh`` or ``relu``); gated cells have none."""
        if self.nonlinearity is None:
            raise ValueError(f"cell {self.name!r} is gated and has no single state activation")
        return self.nonlinearity

    def make(self, input_size: int, hidden_size: int, bidirectional: bool = False) -> nn.RNNBase:
        """One-layer, sequence-first (``(L, N, C)``, PyTorch's native RNN layout) fused RNN module."""
        kwargs = {"bidirectional": bidirectional, "batch_first": False}
        if self.nonlinearity is not None:
            kwargs["nonlinearity"] = self.nonlinearity
        return self.module(input_size, hidden_size, **kwargs)


CELLS: dict[str, CellSpec] = {
    "rnn_tanh": CellSpec("rnn_tanh", nn.RNN, 1, "tanh"),
    "rnn_relu": CellSpec("rnn_relu", nn.RNN, 1, "relu"),
    "gru": CellSpec("gru", nn.GRU, 3),
    "lstm": CellSpec("lstm", nn.LSTM, 4),
}

VANILLA_CELLS: tuple[str, ...] = ("rnn_tanh", "rnn_relu")


def get_cell(name: str, layer: str | None = None, allowed: Iterable[str] | None = None) -> CellSpec:
    """Look a cell up by name.

    Raises ``ValueError`` listing the valid cells for an unknown name, or naming the layer and
    the cells it supports when ``allowed`` restricts the choice (a layer whose equations only
    admit some cells).
    """
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}: valid cells are {', '.join(CELLS)}")
    if allowed is not None:
        allowed = tuple(allowed)
        if name not in allowed:
            who = f"layer {layer!r}" if layer else "this layer"
            raise ValueError(
                f"cell={name!r} is not supported by {who}: its recurrence is a vanilla (ungated) one, "
                f"supported cells are {', '.join(allowed)}"
            )
    return CELLS[name]


def rnn_params(cell: str | CellSpec, input_size: int, hidden_size: int, directions: int = 1) -> int:
    """Parameters of a one-layer fused RNN: ``D * (g*H*(I + H) + 2*g*H)``."""
    g = (cell if isinstance(cell, CellSpec) else get_cell(cell)).gates
    return directions * (g * hidden_size * (input_size + hidden_size) + 2 * g * hidden_size)


def rnn_macs_per_token(cell: str | CellSpec, input_size: int, hidden_size: int, directions: int = 1) -> int:
    """MACs of a one-layer fused RNN per sequence element: ``D * g*H*(I + H)``."""
    g = (cell if isinstance(cell, CellSpec) else get_cell(cell)).gates
    return directions * g * hidden_size * (input_size + hidden_size)
