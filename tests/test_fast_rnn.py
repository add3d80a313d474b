"""crnn.layers.fast_rnn: the fast CPU path equals nn.RNN, and the path switch picks the right one."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from crnn.layers import (
    CELLS,
    WSBiRNN,
    build_layer,
    fast_rnn,
    get_rnn_path,
    rnn_kernel,
    rnn_path,
    run_rnn,
    run_ws_birnn,
    uses_fast_path,
)
from crnn.layers.separable import _grid_layout
from crnn.models.heads import SequenceHead

VANILLA = [c for c in CELLS if CELLS[c].gates == 1]
FAST_LAYERS = ["srnn", "sws_birnn"]


def outputs_and_grads(module: nn.Module, x: torch.Tensor, path: str) -> list[torch.Tensor]:
    x = x.detach().requires_grad_(True)
    with rnn_path(path):
        y = module(x)
        grads = torch.autograd.grad(y, [x, *module.parameters()], torch.randn_like(y))
    return [y, *grads]


def max_difference(module: nn.Module, x: torch.Tensor) -> float:
    torch.manual_seed(1)
    native = outputs_and_grads(module, x, "native")
    torch.manual_seed(1)
    fast = outputs_and_grads(module, x, "fast")
    assert len(native) == len(fast)
    return max((a - b).abs().max().item() for a, b in zip(native, fast, strict=True))


CASES = list(
    itertools.product(FAST_LAYERS, VANILLA, [(2, 3, 4, 5), (3, 2, 1, 6), (1, 4, 7, 1)], [None, 3, 9], [5, 8])
)


@pytest.mark.parametrize(("layer", "cell", "shape", "hidden", "out"), CASES)
def test_float64_equals_nn_rnn(layer, cell, shape, hidden, out):
    torch.manual_seed(0)
    m = build_layer(layer, shape[1], out, cell=cell, hidden_channels=hidden).double()
    with torch.no_grad():  # non-zero biases, so that they matter
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert max_difference(m, torch.randn(*shape, dtype=torch.float64)) < 1e-10


@pytest.mark.parametrize(("layer", "cell"), itertools.product(FAST_LAYERS, VANILLA))
def test_float32_equals_nn_rnn_to_rounding(layer, cell):
    torch.manual_seed(0)
    m = build_layer(layer, 16, 16, cell=cell)
    assert max_difference(m, torch.randn(4, 16, 9, 7)) < 1e-4  # values and grads are O(1)..O(10)


@pytest.mark.parametrize("layer", FAST_LAYERS)
def test_float32_large_products_equal_nn_rnn_to_rounding(layer):
    """Products of at least ``_ONEDNN_MIN_MACS`` run on oneDNN (where the build has it), smaller ones
    on MKL: here the row pass's steps (384 rows) and all projections take oneDNN, the column pass's
    steps (256 rows) MKL."""
    torch.manual_seed(0)
    m = build_layer(layer, 64, 64, cell="rnn_tanh")
    x = torch.randn(32, 64, 12, 8)
    assert 384 * 64 * 64 >= fast_rnn._ONEDNN_MIN_MACS > 256 * 64 * 64
    scale = max(t.abs().max().item() for t in outputs_and_grads(m, x, "native"))
    assert max_difference(m, x) < 1e-5 * scale


@pytest.mark.parametrize(("layer", "cell"), itertools.product(FAST_LAYERS, VANILLA))
def test_maps_packed_together_equal_each_map_through_nn_rnn(layer, cell):
    """``forward_levels`` packs maps of different sizes (a detection tower's pyramid levels) into one
    recurrence; in float64 it equals every map through ``nn.RNN`` on its own: outputs and all grads.
    Row lengths and column lengths order the maps differently; one map has another batch size."""
    torch.manual_seed(0)
    m = build_layer(layer, 3, 5, cell=cell).double()
    shapes = [(2, 3, 6, 4), (2, 3, 3, 5), (2, 3, 1, 1), (1, 3, 2, 3)]
    maps = [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in shapes]
    with rnn_path("fast"):
        packed = m.forward_levels(maps)
    with rnn_path("native"):
        alone = [m(x) for x in maps]
    weights = [torch.randn_like(y) for y in alone]

    def grads(outputs):
        loss = sum((y * w).sum() for y, w in zip(outputs, weights, strict=True))
        return torch.autograd.grad(loss, [*maps, *m.parameters()])

    pairs = [*zip(packed, alone, strict=True), *zip(grads(packed), grads(alone), strict=True)]
    assert max((a - b).abs().max().item() for a, b in pairs) < 1e-10


@pytest.mark.parametrize(
    "shapes",
    [((2, 6, 4), (2, 3, 5), (2, 1, 1), (1, 2, 3)), ((16, 16, 16), (16, 8, 8), (16, 4, 4)), ((3, 7, 2),)],
)
def test_packed_layouts_read_and_write_every_element_once(shapes):
    """The 2-D layers run their packed passes without index checks (``separable._PackedPasses``), which
    the layout's construction vouches for: the row pass reads every pixel once and writes every element of
    the column pass's input once, the column pass writes every element of the NCHW maps once."""
    hidden, channels = 5, 3
    layout = _grid_layout(shapes, hidden, channels)
    pixels = sum(b * h * w for b, h, w in shapes)
    assert sum(layout.row_steps) == sum(layout.col_steps) == pixels

    def written(offsets, strides, width):
        return (offsets[:, None] + torch.arange(width) * strides[:, None]).flatten().sort().values

    row_writes = written(layout.row_offsets, layout.row_strides, hidden)
    col_writes = written(layout.col_offsets, layout.col_strides, channels)
    assert torch.equal(layout.row_pixels.sort().values, torch.arange(pixels))
    assert torch.equal(row_writes, torch.arange(pixels * hidden))
    assert torch.equal(col_writes, torch.arange(pixels * channels))


@pytest.mark.parametrize(
    ("bidirectional", "cell", "readout"), itertools.product(["shared", "none"], VANILLA, ["last", "mean"])
)
def test_sequence_head_equals_nn_rnn(bidirectional, cell, readout):
    torch.manual_seed(0)
    head = SequenceHead((4, 3, 5), 6, cell=cell, hidden_size=7, bidirectional=bidirectional, readout=readout)
    assert max_difference(head.double(), torch.randn(2, 4, 3, 5, dtype=torch.float64)) < 1e-10


@pytest.mark.parametrize(("merge", "relu"), itertools.product([False, True], [False, True]))
def test_gradcheck(merge, relu):
    torch.manual_seed(0)
    rnn = nn.RNN(3, 4, nonlinearity="relu" if relu else "tanh").double()
    params = [p.detach().clone().requires_grad_(True) for p in rnn.parameters()]
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)

    with rnn_path("fast"):
        assert torch.autograd.gradcheck(lambda x, *w: run_rnn(_Module(rnn, w), x), (x, *params))
        assert torch.autograd.gradcheck(lambda x, *w: run_ws_birnn(_Module(rnn, w), x, merge), (x, *params))
    # sequences of lengths 4, 3, 1, 1 laid out step-major (as the 2-D layers pack several maps)
    steps = (4, 2, 2, 1)
    tokens = torch.randn(sum(steps), 3, dtype=torch.float64, requires_grad=True)
    for directions in (1, 2):
        assert torch.autograd.gradcheck(
            lambda x, *w, d=directions: fast_rnn.run_steps(_Module(rnn, w), x, steps, d, merge),
            (tokens, *params),
        )


@pytest.mark.parametrize(("layer", "relu"), itertools.product(FAST_LAYERS, [False, True]))
def test_gradcheck_packed_levels(layer, relu):
    """The 2-D layers' packed node (``separable._PackedPasses``: the pixels gathered by the row pass,
    its states scattered in the column pass's order, the column pass's scattered into NCHW maps) over
    maps of several sizes: every map and every weight."""
    torch.manual_seed(0)
    m = build_layer(layer, 3, 4, cell="rnn_relu" if relu else "rnn_tanh").double()
    maps = [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in [(2, 3, 3, 2), (1, 3, 1, 3)]]
    # the parameters themselves are inputs: gradcheck perturbs them in place, the layer reads them
    with rnn_path("fast"):
        assert torch.autograd.gradcheck(
            lambda *inputs: tuple(m.forward_levels(list(inputs[: len(maps)]))), (*maps, *m.parameters())
        )


class _Module(nn.Module):
    """An nn.RNN whose weights are given tensors (so that gradcheck can differentiate them)."""

    def __init__(self, rnn: nn.RNN, weights):
        super().__init__()
        self.mode, self.num_layers, self.bidirectional, self.bias = rnn.mode, 1, False, True
        self.batch_first, self.proj_size = False, 0
        self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0 = weights


def test_second_derivative_raises_clearly():
    m = build_layer("sws_birnn", 3, 4).double()
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    with rnn_path("fast"):
        (g,) = torch.autograd.grad(m(x).square().sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="once_differentiable|differentiate twice"):
            g.sum().backward()


# ------------------------------------------------------------------------------ compiled pass


def compiled_or_skip():
    module, why = fast_rnn.compiled_kernel()
    if module is None:
        pytest.skip(f"the compiled RNN pass cannot run here: {why}")


def pass_outputs_and_grads(rnn, x, steps, directions, merge, kernel):
    x = x.detach().requires_grad_(True)
    with rnn_kernel(kernel):
        y = fast_rnn.run_steps(rnn, x, steps, directions, merge)
        grads = torch.autograd.grad(y, [x, *rnn.parameters()], torch.randn_like(y, generator=GENERATOR))
    return [y, *grads]


GENERATOR = torch.Generator()
# step-major layouts: equal blocks (L, N), maps of several sizes packed (blocks shrink), single rows
LAYOUTS = [(9,) * 5, (14, 14, 9, 9, 9, 4, 1), (1, 1, 1)]


@pytest.mark.parametrize(
    ("relu", "directions", "merge", "widths", "steps", "threads"),
    itertools.product([False, True], [1, 2], [True, False], [(16, 16), (32, 80), (144, 48)], LAYOUTS, [1, 2]),
)
def test_compiled_pass_equals_torch_pass(relu, directions, merge, widths, steps, threads):
    """float32, outputs and the gradients of x and every weight, to float32 rounding; widths of one,
    several and a part of a 64-column panel (80 = 64 + 16), input wider than a panel (144); one thread
    (the projection fused into direction 0) and two (computed first, the directions at once)."""
    compiled_or_skip()
    torch.manual_seed(0)
    rnn = nn.RNN(*widths, nonlinearity="relu" if relu else "tanh")
    x = 2 * torch.randn(sum(steps), widths[0])  # pre-activations beyond tanh's linear range
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        GENERATOR.manual_seed(1)
        reference = pass_outputs_and_grads(rnn, x, steps, directions, merge, "torch")
        GENERATOR.manual_seed(1)
        compiled = pass_outputs_and_grads(rnn, x, steps, directions, merge, "compiled")
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(reference, compiled, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * a.abs().max().item())


@pytest.mark.parametrize("layer", FAST_LAYERS)
def test_compiled_packed_levels_with_an_unused_level_and_frozen_maps(layer):
    """The compiled packed passes (one autograd node for every level) where the loss reads one level
    only and the maps need no gradient: the weights' gradients equal that level through ``nn.RNN``
    alone (the unused levels' zero gradients pass through the recurrence and add nothing)."""
    compiled_or_skip()
    torch.manual_seed(0)
    m = build_layer(layer, 16, 32)
    maps = [torch.randn(2, 16, 6, 5), torch.randn(2, 16, 3, 3), torch.randn(2, 16, 1, 2)]
    with rnn_path("fast"), rnn_kernel("compiled"):
        packed = m.forward_levels(maps)[1]
        grads = torch.autograd.grad(packed.square().sum(), list(m.parameters()))
    with rnn_path("native"):
        alone = m(maps[1])
        expected = torch.autograd.grad(alone.square().sum(), list(m.parameters()))
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5 * e.abs().max().item())


def test_compiled_tanh_is_accurate_over_the_float_range():
    """The kernel's own tanh (one step from a zero state: h = tanh(x W^T + b)) against torch.tanh."""
    compiled_or_skip()
    a = torch.cat([torch.linspace(-12, 12, 20001), torch.logspace(-8, 0, 1000), -torch.logspace(-8, 0, 1000)])
    a = torch.cat([a, a.new_zeros((-len(a)) % 16)]).view(-1, 16)  # 16 units: one row per 16 values
    rnn = nn.RNN(16, 16)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.eye(16))
        rnn.bias_ih_l0.zero_()
        rnn.bias_hh_l0.zero_()
        with rnn_kernel("compiled"):
            h = fast_rnn.run_steps(rnn, a, (len(a),), 1)
    torch.testing.assert_close(h, torch.tanh(a), rtol=4e-7, atol=3e-7)
    # extremes (through the identity: an infinity would meet a 0 weight), and a NaN row stays NaN
    extremes = torch.tensor([3e38, -3e38, 1e30, -1e30, 9.0, -9.0, 0.0, -0.0, 1e-38, -1e-38, 1e-45, 20.0])
    a = torch.stack([torch.cat([extremes, extremes[:4]]), torch.full((16,), float("nan"))])
    with torch.no_grad(), rnn_kernel("compiled"):
        h = fast_rnn.run_steps(rnn, a, (2,), 1)
    torch.testing.assert_close(h, torch.tanh(a), rtol=4e-7, atol=0, equal_nan=True)


def test_compiled_layers_equal_nn_rnn_to_rounding():
    """The layers at the paper's width (64) through the compiled pass: values and grads vs nn.RNN."""
    compiled_or_skip()
    for layer, cell in itertools.product(FAST_LAYERS, VANILLA):
        torch.manual_seed(0)
        m = build_layer(layer, 64, 64, cell=cell)
        x = torch.randn(8, 64, 10, 7)
        with rnn_kernel("compiled"):
            scale = max(t.abs().max().item() for t in outputs_and_grads(m, x, "native"))
            assert max_difference(m, x) < 1e-5 * scale, (layer, cell)


def test_compiled_packed_levels_write_the_maps_of_nn_rnn():
    """``forward_levels`` through the compiled pass (levels packed; the row pass's states written in the
    column pass's order, rows to rows; the NCHW maps written by the column pass's strided scatter, in
    8x8 blocks where 8 pixels are neighbours, and the gradients gathered back the same ways) equals
    ``nn.RNN`` map by map."""
    compiled_or_skip()
    for layer in FAST_LAYERS:
        torch.manual_seed(0)
        m = build_layer(layer, 32, 48)
        # widths 17 and 9: runs of 8 neighbouring pixels (moved as 8x8 blocks) and runs cut short
        maps = [torch.randn(2, 32, 6, 17), torch.randn(2, 32, 3, 9), torch.randn(2, 32, 1, 2)]
        results = []
        for path, kernel in (("native", "auto"), ("fast", "compiled")):
            xs = [x.clone().requires_grad_(True) for x in maps]
            with rnn_path(path), rnn_kernel(kernel):
                ys = m.forward_levels(xs)
                GENERATOR.manual_seed(1)
                upstream = [torch.randn(y.shape, generator=GENERATOR) for y in ys]
                grads = torch.autograd.grad(ys, [*xs, *m.parameters()], upstream)
            assert all(y.is_contiguous() for y in ys)  # NCHW
            results.append([*ys, *grads])
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * a.abs().max().item())


def test_compiled_kernel_refuses_what_it_cannot_run(monkeypatch):
    rnn = nn.RNN(16, 16)
    with rnn_kernel("compiled"), pytest.raises(RuntimeError, match="rnn_kernel\\('compiled'\\): float32 CPU"):
        fast_rnn.run_steps(rnn.double(), torch.randn(6, 16, dtype=torch.float64), (3, 3), 1)
    with rnn_kernel("compiled"), pytest.raises(RuntimeError, match="multiples of 16.*12 -> 16"):
        fast_rnn.run_steps(nn.RNN(12, 16), torch.randn(6, 12), (3, 3), 1)
    # where it cannot build, auto falls back to the torch pass and "compiled" says why
    monkeypatch.setattr(fast_rnn, "compiled_kernel", lambda: (None, "could not build rnn_steps.cpp: no gcc"))
    x = torch.randn(6, 16)
    with rnn_kernel("torch"):
        expected = fast_rnn.run_steps(rnn.float(), x, (3, 3), 2)
    torch.testing.assert_close(fast_rnn.run_steps(rnn, x, (3, 3), 2), expected, rtol=0, atol=0)
    with rnn_kernel("compiled"), pytest.raises(RuntimeError, match="no gcc"):
        fast_rnn.run_steps(rnn, x, (3, 3), 2)
    monkeypatch.setenv("CRNN_RNN_KERNEL", "fastest")
    with pytest.raises(ValueError, match="CRNN_RNN_KERNEL='fastest'.*auto, compiled, torch"):
        fast_rnn.run_steps(rnn, x, (3, 3), 2)


# ----------------------------------------------------------------------------------- path choice


def test_default_is_fast_on_cpu_for_vanilla_cells_only():
    x = torch.randn(4, 2, 3)
    assert get_rnn_path() == "auto"
    assert uses_fast_path(nn.RNN(3, 5), x)
    assert uses_fast_path(nn.RNN(3, 5, nonlinearity="relu"), x)
    assert uses_fast_path(nn.RNN(3, 5).double(), x.double())
    for gated in (nn.GRU(3, 5), nn.LSTM(3, 5)):
        assert not uses_fast_path(gated, x)
    for unusual in (nn.RNN(3, 5, num_layers=2), nn.RNN(3, 5, bidirectional=True), nn.RNN(3, 5, bias=False)):
        assert not uses_fast_path(unusual, x)
    assert not uses_fast_path(nn.RNN(3, 5).half(), x.half())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_fast_path(nn.RNN(3, 5), x)


def test_switches_force_either_path(monkeypatch):
    rnn, x = nn.RNN(3, 5), torch.randn(4, 2, 3)
    with rnn_path("native"):
        assert not uses_fast_path(rnn, x)
        with rnn_path("fast"):
            assert uses_fast_path(rnn, x)
            assert not uses_fast_path(nn.GRU(3, 5), x)  # a gated cell has no fast path
    monkeypatch.setenv("CRNN_RNN_PATH", "native")
    assert not uses_fast_path(rnn, x)
    monkeypatch.setenv("CRNN_RNN_PATH", "fastest")
    with pytest.raises(ValueError, match="CRNN_RNN_PATH='fastest'.*auto, fast, native"):
        uses_fast_path(rnn, x)
    with pytest.raises(ValueError, match="auto, fast, native"), rnn_path("quick"):
        pass


@pytest.mark.filterwarnings("ignore")
def test_tracing_takes_nn_rnn():
    """ONNX export and TorchScript traces see the fused aten::rnn_* op (ONNX maps it to RNN)."""
    m = WSBiRNN(3, 4)
    kinds = {n.kind() for n in torch.jit.trace(m, torch.randn(2, 5, 3)).inlined_graph.nodes()}
    assert "aten::rnn_tanh" in kinds and "prim::PythonOp" not in kinds


@pytest.mark.parametrize(
    ("layer", "cell"), [("sws_birnn", "rnn_tanh"), ("srnn", "gru"), ("sbirnn_sum", "lstm")]
)
def test_autocast_runs_the_recurrence_in_float32(layer, cell):
    """Under bf16 autocast (trainer=gpu's precision; CPU autocast here) the nn.RNN path runs in
    float32, a precision cuDNN supports: the output equals the float32 layer's."""
    torch.manual_seed(0)
    m = build_layer(layer, 8, 8, cell=cell)
    x = torch.randn(2, 8, 5, 6)
    with rnn_path("native"):
        expected = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = m(x)
        got.float().sum().backward()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
