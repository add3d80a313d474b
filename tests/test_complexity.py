"""crnn.complexity: exact MAC / parameter counts, and no silent undercount."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from torch import nn

from crnn.complexity import (
    MAC_FREE_OPS,
    MAC_HANDLES,
    UnsupportedOpError,
    count_macs,
    count_params,
    mac_analysis,
)
from crnn.layers import CELLS, LAYERS, WSBiRNN, build_layer, layer_info, rnn_path


def layer_configs():
    """(layer, kwargs) for every registered layer x accepted cell x hidden width."""
    for name in sorted(LAYERS):
        info = layer_info(name)
        if info.family == "conv":
            for k in (1, 3, 5):
                yield name, {"kernel_size": k}
            continue
        for cell in CELLS:
            if not info.takes_cell(cell):
                continue
            hiddens = [None] if name == "ds_rnn" else [None, 12]
            for hidden in hiddens:
                yield name, {"cell": cell, "hidden_channels": hidden}


CONFIGS = list(layer_configs())


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=[f"{n}-{k}" for n, k in CONFIGS])
def test_closed_forms(name, kwargs):
    layer = build_layer(name, 6, 8, **kwargs)
    numel = sum(p.numel() for p in layer.parameters())
    assert count_params(layer) == layer.closed_form_params() == numel
    for batch, height, width in [(2, 3, 5), (3, 4, 1)]:
        x = torch.randn(batch, 6, height, width)
        for path in ("auto", "fast"):  # a trace takes nn.RNN by default; "fast" traces the fast op
            with rnn_path(path):
                assert count_macs(layer, x) == batch * layer.closed_form_macs(height, width), path


@pytest.mark.parametrize("name", ["srnn", "sws_birnn"])
def test_packed_levels_are_counted(name):
    """Several maps through ``forward_levels`` (on the fast path: one node for the packed passes) count
    as each map through the layer."""
    layer = build_layer(name, 16, 16)

    class Levels(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer.forward_levels([x, x[:, :, :3, :2]])

    for path in ("auto", "fast"):
        with rnn_path(path):
            macs = count_macs(Levels(), torch.randn(2, 16, 5, 4))
        assert macs == 2 * (layer.closed_form_macs(5, 4) + layer.closed_form_macs(3, 2)), path


def test_fast_path_op_is_counted_and_other_functions_raise():
    layer = build_layer("sws_birnn", 6, 8)
    x = torch.randn(2, 6, 3, 5)
    with rnn_path("fast"):
        ops = mac_analysis(layer, x).by_operator()
    assert set(ops) == {"PythonOp._VanillaRNNFunction"}  # fvcore drops the "prim::" here
    assert count_macs(layer, x) == 2 * layer.closed_form_macs(3, 5)

    class Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return 2 * x

        @staticmethod
        def backward(ctx, grad):
            return 2 * grad

    class Custom(nn.Module):
        def forward(self, x):
            return Double.apply(x)

    with pytest.raises(UnsupportedOpError, match="prim::PythonOp.Double"):
        count_macs(Custom(), x)


@pytest.mark.parametrize("cell", CELLS)
def test_wsbirnn_closed_form(cell):
    m = WSBiRNN(5, 7, cell=cell)
    assert count_params(m) == m.closed_form_params() == sum(p.numel() for p in m.parameters())
    assert count_macs(m, torch.randn(3, 6, 5)) == 3 * m.closed_form_macs(6)


# --------------------------------------------------------------------------- textbook formulas


@pytest.mark.parametrize(("stride", "groups", "bias"), [(1, 1, True), (2, 1, False), (1, 4, False)])
def test_conv2d_textbook(stride, groups, bias):
    conv = nn.Conv2d(8, 12, 3, stride=stride, padding=1, groups=groups, bias=bias)
    x = torch.randn(2, 8, 9, 10)
    ho, wo = conv(x).shape[-2:]
    assert count_macs(conv, x) == 2 * 12 * (8 // groups) * 3 * 3 * ho * wo


def test_linear_textbook():
    assert count_macs(nn.Linear(7, 5), torch.randn(3, 7)) == 3 * 7 * 5
    assert count_macs(nn.Linear(7, 5, bias=False), torch.randn(3, 4, 7)) == 3 * 4 * 7 * 5


def test_small_cnn_counts_only_conv_and_linear():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2),
        nn.GroupNorm(4, 16),
        nn.GELU(),
        nn.Upsample(scale_factor=2),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.LayerNorm(16),
        nn.Linear(16, 10),
        nn.Softmax(-1),
    )
    x = torch.randn(2, 3, 8, 8)
    expected = 2 * (8 * 3 * 9 * 8 * 8 + 16 * 8 * 9 * 4 * 4 + 16 * 10)
    assert count_macs(net, x) == expected


@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "gru", "lstm"])
def test_fused_rnn_multilayer_bidirectional(kind):
    modules = {"rnn_tanh": (nn.RNN, 1), "rnn_relu": (nn.RNN, 1), "gru": (nn.GRU, 3), "lstm": (nn.LSTM, 4)}
    module, g = modules[kind]
    extra = {"nonlinearity": kind[4:]} if module is nn.RNN else {}
    rnn = module(5, 7, num_layers=2, bidirectional=True, batch_first=True, **extra)
    N, L = 3, 6
    per_token = 2 * g * 7 * (5 + 7) + 2 * g * 7 * (2 * 7 + 7)  # layer 1 reads 5, layer 2 reads 2*7
    assert count_macs(rnn, torch.randn(N, L, 5)) == N * L * per_token


def test_lstm_projection_and_cell():
    lstm = nn.LSTM(5, 8, proj_size=3)
    assert count_macs(lstm, torch.randn(4, 2, 5)) == 4 * 2 * (4 * 8 * 5 + 4 * 8 * 3 + 3 * 8)
    cell = nn.GRUCell(5, 6)
    assert count_macs(cell, torch.randn(3, 5)) == 3 * 3 * 6 * (5 + 6)


def test_packed_sequence():
    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(4, 5)

        def forward(self, x):
            packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([6, 3]), enforce_sorted=True)
            return self.rnn(packed)[1]

    assert count_macs(Packed(), torch.randn(6, 2, 4)) == (6 + 3) * 3 * 5 * (4 + 5)


def test_matmul_family():
    class M(nn.Module):
        def forward(self, a, b, v):
            return (
                (a @ b).sum()
                + torch.bmm(a, b).sum()
                + torch.mv(a[0], v).sum()
                + torch.einsum("bik,bkj->bij", a, b).sum()
            )

    a, b, v = torch.randn(2, 3, 4), torch.randn(2, 4, 5), torch.randn(4)
    assert count_macs(M(), a, b, v) == 3 * (2 * 3 * 4 * 5) + 3 * 4


def test_addcmul_counted_mul_not():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return torch.addcmul(x, self.w, x) * torch.sigmoid(x)

    assert count_macs(M(), torch.randn(3, 5, 4)) == 3 * 5 * 4


# ------------------------------------------------------------------------- no silent undercount


class Baddbmm(nn.Module):
    def forward(self, x):
        return torch.baddbmm(x, x, x)


class Bilinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.bil = nn.Bilinear(4, 4, 2)

    def forward(self, x):
        return self.bil(x, x)


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x @ x

    @staticmethod
    def backward(ctx, g):
        return g


class PythonOp(nn.Module):
    def forward(self, x):
        return Square.apply(x)


@pytest.mark.parametrize(
    ("module", "shape", "op"),
    [
        (Baddbmm, (2, 4, 4), "aten::baddbmm"),
        (Bilinear, (3, 4), "aten::bilinear"),
        (PythonOp, (4, 4), "Square"),
    ],
)
def test_unsupported_op_raises_and_names_it(module, shape, op):
    assert not any(op.endswith(k) for k in MAC_HANDLES)
    with pytest.raises(UnsupportedOpError, match=op):
        count_macs(module(), torch.randn(*shape))
    assert issubclass(UnsupportedOpError, ValueError)


def test_handles_and_allow_list_are_disjoint():
    assert not set(MAC_HANDLES) & MAC_FREE_OPS
    for op in ("aten::rnn_tanh", "aten::rnn_relu", "aten::gru", "aten::lstm", "aten::addcmul"):
        assert op in MAC_HANDLES


def test_mode_restored_and_quiet(caplog):
    layer = build_layer("sws_birnn", 4, 4)
    layer.train()
    layer.col.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.DEBUG):
            count_macs(layer, torch.randn(2, 4, 3, 3))
    assert layer.training and layer.row.training and not layer.col.training
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_counting_uses_eval_mode():
    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.seen = None

        def forward(self, x):
            self.seen = (self.training, torch.is_grad_enabled())
            return self.lin(x)

    probe = Probe().train()
    count_macs(probe, torch.randn(2, 3))
    assert probe.seen == (False, False) and probe.training
    assert torch.is_grad_enabled()
