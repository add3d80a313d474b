"""crnn.layers: the 2-D recurrent layers of "Recurrent Neural Networks for Still Images"
(arXiv 2409.06235), their conventional alternatives and conv baselines, as plain ``torch.nn``
modules mapping ``(B, C_in, H, W) -> (B, C_out, H, W)``.

Pick one by name::

    layer = build_layer("sws_birnn", 64, 64, cell="rnn_tanh", hidden_channels=None)

Vanilla-cell passes of ``srnn``, ``sws_birnn`` (and the weight-shared sequence head) take a fast
CPU path by default (:mod:`crnn.layers.fast_rnn`); ``rnn_path("native")`` or
``CRNN_RNN_PATH=native`` forces ``nn.RNN``, ``"fast"`` forces the fast path. On float32 the fast
path runs a compiled pass where it builds (AVX-512, gcc: ``compiled_kernel()`` says why not);
``rnn_kernel("torch")`` or ``CRNN_RNN_KERNEL=torch`` runs its torch-op twin instead.

Every layer exposes ``closed_form_params()`` and ``closed_form_macs(height, width)`` (per sample),
which the tests check against :mod:`crnn.complexity`.
"""

from .cells import CELLS, CellSpec, get_cell, rnn_macs_per_token, rnn_params
from .conv import ConvLayer, DSConvLayer
from .ds_rnn import DSRNN
from .fast_rnn import (
    RNN_KERNELS,
    RNN_PATHS,
    compiled_kernel,
    get_rnn_kernel,
    get_rnn_path,
    rnn_kernel,
    rnn_path,
    run_rnn,
    run_ws_birnn,
    uses_fast_path,
)
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
    "RNN_KERNELS",
    "SRNN",
    "CellSpec",
    "ConvLayer",
    "DSConvLayer",
    "Layer2d",
    "LayerInfo",
    "NO_LAYER",
    "RNN_PATHS",
    "RNN2D4Way",
    "SBiRNNCat",
    "SBiRNNSum",
    "SWSBiRNN",
    "Sequencer2d",
    "WSBiRNN",
    "build_layer",
    "get_cell",
    "compiled_kernel",
    "get_rnn_kernel",
    "get_rnn_path",
    "layer_info",
    "layer_kwargs",
    "list_layers",
    "register_layer",
    "rnn_macs_per_token",
    "rnn_params",
    "rnn_kernel",
    "rnn_path",
    "run_rnn",
    "run_ws_birnn",
    "uses_fast_path",
]
