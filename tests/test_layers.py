"""crnn.layers: API, shapes, gradients, equivariance, receptive fields and slow references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from crnn.layers import CELLS, LAYERS, WSBiRNN, build_layer, layer_info, layer_kwargs, list_layers

RNN_LAYERS = ["srnn", "sws_birnn", "sbirnn_sum", "sbirnn_cat", "sequencer", "ds_rnn", "rnn2d", "rnn2d_4way"]
CONV_LAYERS = ["conv", "dsconv"]
ALL_CELLS = ["rnn_tanh", "rnn_relu", "gru", "lstm"]
VANILLA_CELLS = [c for c in ALL_CELLS if CELLS[c].gates == 1]


def accepted(layer: str, cell: str) -> bool:
    return layer_info(layer).takes_cell(cell)


COMBOS = [(layer, cell) for layer in RNN_LAYERS for cell in ALL_CELLS if accepted(layer, cell)]
REJECTED = [(layer, cell) for layer in RNN_LAYERS for cell in ALL_CELLS if not accepted(layer, cell)]


def make(layer: str, cin: int, cout: int, cell: str = "rnn_tanh", dtype=torch.float32, **kw):
    torch.manual_seed(0)
    kwargs = dict(kw) if layer in CONV_LAYERS else {"cell": cell, **kw}
    return build_layer(layer, cin, cout, **kwargs).to(dtype)


# ------------------------------------------------------------------------------------------ API


def test_registry_names():
    assert set(RNN_LAYERS + CONV_LAYERS) <= set(LAYERS)
    assert set(CELLS) == set(ALL_CELLS)


def test_unknown_layer_lists_valid_names():
    with pytest.raises(ValueError, match="unknown layer 'nope'") as e:
        build_layer("nope", 4, 4)
    for name in RNN_LAYERS + CONV_LAYERS:
        assert name in str(e.value)


@pytest.mark.parametrize("layer", RNN_LAYERS)
def test_unknown_cell_lists_valid_cells(layer):
    with pytest.raises(ValueError, match="unknown cell 'transformer'") as e:
        build_layer(layer, 4, 4, cell="transformer")
    for cell in ALL_CELLS:
        assert cell in str(e.value)


@pytest.mark.parametrize(
    ("layer", "kwarg"), [("conv", "cell"), ("dsconv", "hidden_channels"), ("srnn", "kernel_size")]
)
def test_foreign_kwarg_is_named(layer, kwarg):
    with pytest.raises(ValueError, match=kwarg) as e:
        build_layer(layer, 4, 4, **{kwarg: 3})
    for ok in layer_kwargs(layer):
        assert ok in str(e.value)


@pytest.mark.parametrize(("layer", "cell"), REJECTED)
def test_rejected_cells(layer, cell):
    with pytest.raises(ValueError, match=f"cell='{cell}' is not supported.*rnn_tanh"):
        build_layer(layer, 4, 4, cell=cell)


@pytest.mark.parametrize(
    ("layer", "cin", "cout", "kwargs", "named"),
    [
        ("sequencer", 4, 8, {"hidden_channels": 6}, "hidden_channels"),
        ("sequencer", 4, 6, {}, "hidden_channels"),  # default hidden = out = 6
        ("sbirnn_cat", 4, 5, {}, "out_channels"),
        ("ds_rnn", 4, 8, {"hidden_channels": 8}, "hidden_channels"),
        ("conv", 4, 8, {"kernel_size": 4}, "kernel_size"),
        ("srnn", 4, 8, {"hidden_channels": 0}, "hidden_channels"),
    ],
)
def test_impossible_sizes(layer, cin, cout, kwargs, named):
    with pytest.raises(ValueError, match=named):
        build_layer(layer, cin, cout, **kwargs)


def test_hidden_default():
    assert build_layer("srnn", 4, 6).hidden_channels == 6
    assert build_layer("srnn", 4, 6, hidden_channels=None).hidden_channels == 6
    assert build_layer("srnn", 4, 6, hidden_channels=10).row.hidden_size == 10
    assert build_layer("ds_rnn", 4, 6).hidden_channels == 4
    assert build_layer("rnn2d", 4, 6).proj is None
    assert build_layer("rnn2d", 4, 6, hidden_channels=5).proj is not None


# --------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(("layer", "cell"), COMBOS + [(c, "rnn_tanh") for c in CONV_LAYERS])
def test_shapes(layer, cell):
    m = make(layer, 3, 8, cell)
    x = torch.randn(2, 3, 5, 7)
    y = m(x)
    assert y.shape == (2, 8, 5, 7)
    assert y.is_contiguous()
    y.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_wsbirnn_shape():
    m = WSBiRNN(3, 5, cell="gru")
    assert m(torch.randn(4, 7, 3)).shape == (4, 7, 5)
    assert sum(p.numel() for p in m.parameters()) == m.closed_form_params()


# ------------------------------------------------------------------------------------ gradcheck


@pytest.mark.parametrize(("layer", "cell"), COMBOS + [(c, "rnn_tanh") for c in CONV_LAYERS])
def test_gradcheck(layer, cell):
    m = make(layer, 2, 4, cell, dtype=torch.float64)
    x = torch.randn(1, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-5)


def _param_gradcheck_cases():
    """Every combo; those whose parameters only feed torch.nn RNNs (PyTorch's own gradients) are slow."""
    for layer, cell in COMBOS + [(c, "rnn_tanh") for c in CONV_LAYERS]:
        # layers taking vanilla cells only, and srnn / sws_birnn's fast path run crnn's own math
        vanilla_only = layer not in list_layers(cell="gru") or layer in CONV_LAYERS
        fast_path = layer in ("srnn", "sws_birnn") and cell in VANILLA_CELLS
        own_math = vanilla_only or fast_path or (layer, cell) == ("sequencer", "rnn_tanh")
        yield pytest.param(layer, cell, marks=() if own_math else pytest.mark.slow)


@pytest.mark.parametrize(("layer", "cell"), _param_gradcheck_cases())
def test_gradcheck_parameters(layer, cell):
    m = make(layer, 2, 4, cell, dtype=torch.float64)
    with torch.no_grad():  # move off the init (zero biases) so that no relu sits exactly at its kink
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(1, 2, 3, 2, dtype=torch.float64)

    def f(*params):
        return torch.func.functional_call(m, dict(zip(names, params, strict=True)), (x,))

    params = tuple(p.detach().clone().requires_grad_(True) for p in m.parameters())
    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------------------------- equivariance


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_wsbirnn_flip_equivariant(cell):
    torch.manual_seed(0)
    m = WSBiRNN(3, 4, cell=cell)
    x = torch.randn(2, 6, 3)
    torch.testing.assert_close(m(x.flip(1)), m(x).flip(1), atol=1e-6, rtol=1e-5)


def test_sws_birnn_flip_equivariant_both_axes():
    m = make("sws_birnn", 3, 4)
    x = torch.randn(2, 3, 5, 6)
    for dims in [(2,), (3,), (2, 3)]:
        torch.testing.assert_close(m(x.flip(dims)), m(x).flip(dims), atol=1e-6, rtol=1e-5)


def test_flip_equivariance_check_can_fail():
    # control: SRNN and sbirnn_sum (separate direction weights) are not flip-equivariant
    x = torch.randn(2, 3, 5, 6)
    for layer in ("srnn", "sbirnn_sum"):
        m = make(layer, 3, 4)
        assert not torch.allclose(m(x.flip(3)), m(x).flip(3), atol=1e-4)


# ------------------------------------------------------------------------------ receptive fields


def input_grad(m, x: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """``|d y[:, :, i, j].sum() / d x|`` summed over batch and channels: ``(H, W)``."""
    x = x.clone().requires_grad_(True)
    m(x)[:, :, i, j].sum().backward()
    return x.grad.abs().sum((0, 1))


@pytest.mark.parametrize("layer", ["srnn", "rnn2d"])
def test_causal_quadrant(layer):
    m = make(layer, 3, 4).double()
    H, W = 5, 6
    x = torch.randn(1, 3, H, W, dtype=torch.float64)
    rows, cols = torch.arange(H)[:, None], torch.arange(W)[None, :]
    for i, j in [(0, 0), (2, 3), (4, 5), (4, 0), (0, 5)]:
        seen = input_grad(m, x, i, j) > 0
        assert torch.equal(seen, (rows <= i) & (cols <= j)), (i, j)


@pytest.mark.parametrize("layer", ["sws_birnn", "sbirnn_sum", "sbirnn_cat", "ds_rnn", "rnn2d_4way"])
def test_global_receptive_field(layer):
    m = make(layer, 3, 4).double()
    H, W = 5, 6
    g = input_grad(m, torch.randn(1, 3, H, W, dtype=torch.float64), 0, 0)
    assert g[H - 1, W - 1] > 0
    assert (g > 0).all()


def test_sequencer_receptive_field_is_a_cross():
    """One Sequencer2D layer reads rows and columns *in parallel*: output (i, j) sees row i and
    column j only, so (0, 0) does not see (H-1, W-1); two stacked layers see the whole image."""
    m = make("sequencer", 3, 4).double()
    H, W = 5, 6
    x = torch.randn(1, 3, H, W, dtype=torch.float64)
    rows, cols = torch.arange(H)[:, None], torch.arange(W)[None, :]
    for i, j in [(0, 0), (2, 3)]:
        assert torch.equal(input_grad(m, x, i, j) > 0, (rows == i) | (cols == j))
    two = torch.nn.Sequential(m, make("sequencer", 4, 4).double())
    assert input_grad(two, x, 0, 0)[H - 1, W - 1] > 0


# ----------------------------------------------------------------------------- slow references


def cell_step(rnn, suffix: str, x: torch.Tensor, state):
    """One step of a torch.nn RNN/GRU/LSTM written out by hand (``suffix``: '' or '_reverse')."""
    w_ih, w_hh = getattr(rnn, f"weight_ih_l0{suffix}"), getattr(rnn, f"weight_hh_l0{suffix}")
    b_ih, b_hh = getattr(rnn, f"bias_ih_l0{suffix}"), getattr(rnn, f"bias_hh_l0{suffix}")
    gi, gh = x @ w_ih.T + b_ih, state[0] @ w_hh.T + b_hh
    if isinstance(rnn, torch.nn.LSTM):
        i, f, g, o = (gi + gh).chunk(4, -1)
        c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if isinstance(rnn, torch.nn.GRU):
        ir, iz, inn = gi.chunk(3, -1)
        hr, hz, hn = gh.chunk(3, -1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(inn + r * hn)
        return (1 - z) * n + z * state[0], None
    act = torch.tanh if rnn.nonlinearity == "tanh" else torch.relu
    return act(gi + gh), None


def ref_rnn(rnn, seq: torch.Tensor, reverse: bool = False, suffix: str = "") -> torch.Tensor:
    """Run one sequence ``(L, C)`` step by step; ``reverse`` reads it backwards (output in place)."""
    state = (seq.new_zeros(rnn.hidden_size), seq.new_zeros(rnn.hidden_size))
    out = [None] * seq.shape[0]
    steps = range(seq.shape[0] - 1, -1, -1) if reverse else range(seq.shape[0])
    for t in steps:
        state = cell_step(rnn, suffix, seq[t], state)
        out[t] = state[0]
    return torch.stack(out)


def ref_pass(p, seq: torch.Tensor) -> torch.Tensor:
    """Reference for one axis pass of a separable layer on a single sequence ``(L, C)``."""
    kind = type(p).__name__
    if kind == "RNNPass":
        return ref_rnn(p.rnn, seq)
    if kind == "WSBiRNN":
        return ref_rnn(p.rnn, seq) + ref_rnn(p.rnn, seq, reverse=True)
    fwd, bwd = ref_rnn(p.rnn, seq), ref_rnn(p.rnn, seq, reverse=True, suffix="_reverse")
    return fwd + bwd if p.merge == "sum" else torch.cat([fwd, bwd], -1)


def ref_along_rows(p, x: torch.Tensor) -> torch.Tensor:
    """Apply ``p`` to every row of ``x (B, C, H, W)``, one sequence at a time -> ``(B, C', H, W)``."""
    B, _, H, _ = x.shape
    out = [[ref_pass(p, x[b, :, i, :].T).T for i in range(H)] for b in range(B)]
    return torch.stack([torch.stack(rows, 1) for rows in out])


def ref_along_cols(p, x: torch.Tensor) -> torch.Tensor:
    return ref_along_rows(p, x.transpose(2, 3)).transpose(2, 3)


def ref_separable(m, x):
    return ref_along_cols(m.col, ref_along_rows(m.row, x))


def ref_sequencer(m, x):
    y = torch.cat([ref_along_rows(m.row, x), ref_along_cols(m.col, x)], 1)
    return torch.einsum("oc,bchw->bohw", m.proj.weight, y) + m.proj.bias[:, None, None]


def ref_diag_seq(seq, w, u, b, act):
    """DS-RNN along one sequence ``(L, C)``: bidirectional, shared per-channel weights."""
    L = seq.shape[0]
    fwd, bwd = [None] * L, [None] * L
    h = torch.zeros_like(seq[0])
    for t in range(L):
        h = act(w * seq[t] + u * h + b)
        fwd[t] = h
    h = torch.zeros_like(seq[0])
    for t in reversed(range(L)):
        h = act(w * seq[t] + u * h + b)
        bwd[t] = h
    return torch.stack(fwd) + torch.stack(bwd)


def ref_ds_rnn(m, x):
    act = torch.tanh if m.activation == "tanh" else torch.relu
    B, C, H, W = x.shape
    r, s = torch.empty_like(x), torch.empty_like(x)
    for b in range(B):
        for i in range(H):
            r[b, :, i, :] = ref_diag_seq(x[b, :, i, :].T, m.weight_row, m.recurrent_row, m.bias_row, act).T
    for b in range(B):
        for j in range(W):
            s[b, :, :, j] = ref_diag_seq(r[b, :, :, j].T, m.weight_col, m.recurrent_col, m.bias_col, act).T
    return torch.einsum("oc,bchw->bohw", m.pointwise.weight, s)


def ref_rnn2d_states(m, x):
    """``h[i,j] = act(W x[i,j] + b + U h[i-1,j] + V h[i,j-1])``, a double loop over the grid."""
    act = torch.tanh if m.activation == "tanh" else torch.relu
    B, _, H, W = x.shape
    hid = m.hidden_channels
    U, V = m.weight_hh[:, :hid], m.weight_hh[:, hid:]
    h = [[None] * W for _ in range(H)]
    zero = x.new_zeros(B, hid)
    for i in range(H):
        for j in range(W):
            up = h[i - 1][j] if i > 0 else zero
            left = h[i][j - 1] if j > 0 else zero
            h[i][j] = act(m.input(x[:, :, i, j]) + up @ U.T + left @ V.T)
    return torch.stack([torch.stack(row, -1) for row in h], -2)  # (B, hid, H, W)


def ref_rnn2d(m, x):
    h = ref_rnn2d_states(m, x)
    return h if m.proj is None else torch.einsum("oc,bchw->bohw", m.proj.weight, h)


def ref_rnn2d_4way(m, x):
    h = sum(ref_rnn2d_states(m, x.flip(d)).flip(d) for d in [(), (2,), (3,), (2, 3)])
    return h if m.proj is None else torch.einsum("oc,bchw->bohw", m.proj.weight, h)


REFERENCES = {
    "srnn": ref_separable,
    "sws_birnn": ref_separable,
    "sbirnn_sum": ref_separable,
    "sbirnn_cat": ref_separable,
    "sequencer": ref_sequencer,
    "ds_rnn": ref_ds_rnn,
    "rnn2d": ref_rnn2d,
    "rnn2d_4way": ref_rnn2d_4way,
}


@pytest.mark.parametrize(("layer", "cell"), COMBOS)
@pytest.mark.parametrize("hidden", [None, 8])
def test_matches_slow_reference(layer, cell, hidden):
    if layer == "ds_rnn" and hidden is not None:
        hidden = 3
    m = make(layer, 3, 4, cell, hidden_channels=hidden)
    x = torch.randn(2, 3, 4, 5)
    with torch.no_grad():
        torch.testing.assert_close(m(x), REFERENCES[layer](m, x), atol=1e-5, rtol=1e-5)


def test_reference_check_can_fail():
    # control: perturb one recurrent weight after the fact and the comparison must break
    m = make("rnn2d", 3, 4)
    x = torch.randn(2, 3, 4, 5)
    with torch.no_grad():
        y = m(x)
        m.weight_hh[0, 5] += 0.1
        assert not torch.allclose(y, ref_rnn2d(m, x), atol=1e-5)


@pytest.mark.parametrize("layer", ["conv", "dsconv"])
def test_conv_layers(layer):
    m = make(layer, 3, 4, kernel_size=5)
    x = torch.randn(2, 3, 6, 7)
    if layer == "conv":
        ref = F.conv2d(x, m.conv.weight, padding=2)
    else:
        ref = F.conv2d(F.conv2d(x, m.depthwise.weight, padding=2, groups=3), m.pointwise.weight)
    torch.testing.assert_close(m(x), ref)
    assert all(mod.bias is None for mod in m.modules() if isinstance(mod, torch.nn.Conv2d))
