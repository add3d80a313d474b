"""crnn.layers: the 2-D recurrent layers of "Recurrent Neural Networks for Still Images"
(arXiv 2409.06235), their conventional alternatives and conv baselines, as plain ``torch.nn``
modules mapping ``(B, C_in, H, W) -> (B, C_out, H, W)``.

Pick one by name::

    layer = build_layer("sws_birnn", 64, 64, cell="rnn_tanh", hidden_channels=None)

Every layer exposes ``closed_form_params()`` and ``closed_form_macs(height, width)`` (per sample),
which the tests check against :mod:`crnn.complexity`.
"""

from .cells import CELLS, CellSpec, get_cell, rnn_macs_per_token, rnn_params
from .conv import ConvLayer, DSConvLayer
from .ds_rnn import DSRNN
from .registry import (
    LAYERS,
    NO_LAYER,
    Layer2d,
    LayerInfo,
    build_layer,
    layer_info,
    layer_kwargs,
    list_layers,
    register_layer,
)
from .rnn2d import RNN2D, RNN2D4Way
from .separable import SRNN, SBiRNNCat, SBiRNNSum, SWSBiRNN, WSBiRNN
from .sequencer import Sequencer2d

__all__ = [
    "CELLS",
    "DSRNN",
    "LAYERS",
    "RNN2D",
    "SRNN",
    "CellSpec",
    "ConvLayer",
    "DSConvLayer",
    "Layer2d",
    "LayerInfo",
    "NO_LAYER",
    "RNN2D4Way",
    "SBiRNNCat",
    "SBiRNNSum",
    "SWSBiRNN",
    "Sequencer2d",
    "WSBiRNN",
    "build_layer",
    "get_cell",
    "layer_info",
    "layer_kwargs",
    "list_layers",
    "register_layer",
    "rnn_macs_per_token",
    "rnn_params",
]
