"""Separable 2-D RNNs: a 1-D RNN along every row, then another along every column of the result.

Layout. ``torch.nn`` RNNs are sequence-first natively (``(L, N, C)``), so the ``nn.RNN`` path works
on ``(L, *batch, C)`` tensors: the row pass sees ``x.permute(3, 0, 2, 1) = (W, B, H, C)`` (rows
folded into the batch, sequences of length W) and the column pass sees its output permuted to
``(H, B, W, hidden)`` (columns folded into the batch, sequences of length H): one copy per pass
where it makes its input contiguous, plus one final copy back to ``(B, C_out, H, W)``. A
weight-shared pass runs both directions in one ``nn.RNN`` call (one cuDNN call on GPU) on the
sequence and its reverse stacked along the batch (:func:`~crnn.layers.fast_rnn.run_ws_birnn`).

On the fast CPU path (vanilla cells, :mod:`crnn.layers.fast_rnn`) a pass is one call for both
directions (one input projection read both ways), and ``forward_levels`` of :class:`SRNN` and
:class:`SWSBiRNN` runs several maps (a detection tower's pyramid levels) as one pass over their
rows and one over their columns: the same orders, laid out step-major (:class:`_GridLayout`).

Notation for the closed forms: ``C = C_in``, ``O = C_out``, ``h = hidden_channels`` (default
``C_out``), ``g`` the gate multiplier of the cell (1 rnn_tanh/rnn_relu, 3 gru, 4 lstm),
``P(I, H) = g*H*(I + H) + 2*g*H`` the parameters of one direction of a fused RNN and
``M(I, H) = g*H*(I + H)`` its MACs per token. MACs below are per sample of size ``H x W``.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .cells import get_cell, rnn_macs_per_token, rnn_params
from .fast_rnn import (
    _ints,
    _pass_backward,
    _pass_forward,
    _weights,
    is_compiled,
    pass_implementation,
    run_rnn,
    run_ws_birnn,
    uses_fast_path,
)
from .registry import ALL_CELLS, Layer2d, check_positive, register_layer

__all__ = ["SRNN", "SWSBiRNN", "SBiRNNCat", "SBiRNNSum", "WSBiRNN"]


class _AxisPass(nn.Module):
    """A 1-D recurrence along dim 0 of ``(L, *batch, C_in) -> (L, *batch, out_size)``.

    ``fast_directions``: how the fast path runs it (1: one way, 2: both ways with shared weights;
    None: never on the fast path, separate weights per direction).
    """

    out_size: int
    rnn: nn.RNNBase
    fast_directions: int | None = None

    def forward_seq_first(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def closed_form_params(self) -> int:
        raise NotImplementedError

    def macs_per_token(self) -> int:
        raise NotImplementedError


class RNNPass(_AxisPass):
    """Unidirectional fused RNN. params ``P(I, H)``, MACs/token ``M(I, H)``."""

    fast_directions = 1

    def __init__(self, input_size: int, hidden_size: int, cell: str = "rnn_tanh"):
        super().__init__()
        self.cell = get_cell(cell)
        self.input_size, self.hidden_size, self.out_size = input_size, hidden_size, hidden_size
        self.rnn = self.cell.make(input_size, hidden_size)

    def forward_seq_first(self, x: Tensor) -> Tensor:
        L, batch = x.shape[0], x.shape[1:-1]
        y = run_rnn(self.rnn, x.reshape(L, -1, x.shape[-1]))
        return y.view(L, *batch, self.out_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_seq_first(x)

    def closed_form_params(self) -> int:
        return rnn_params(self.cell, self.input_size, self.hidden_size)

    def macs_per_token(self) -> int:
        return rnn_macs_per_token(self.cell, self.input_size, self.hidden_size)


class WSBiRNN(_AxisPass):
    """Weight-shared bidirectional RNN: ``(N, L, C) -> (N, L, hidden)``.

    One RNN module (one set of weights) reads the sequence forwards and backwards; the backward
    output is flipped back into place and the two are summed::

        y = rnn(x) + flip(rnn(flip(x)))

    Half the weights and half the output width of a standard BiRNN. Both directions run in ONE
    call (:func:`crnn.layers.fast_rnn.run_ws_birnn`): for vanilla cells on CPU the fast path, which
    projects ``x`` once and reads the projection forwards and backwards; otherwise ``nn.RNN`` on
    ``x`` and ``flip(x)`` stacked along the batch. ``y`` is flip-equivariant:
    ``f(flip(x)) == flip(f(x))``.

    ``forward`` is batch-first (the public 1-D API); ``forward_seq_first`` takes
    ``(L, *batch, C)`` and is what the 2-D layers use.

    * params: ``g*H*(I + H) + 2*g*H``
    * MACs per sequence of length L: ``2 * L * g*H*(I + H)``
    """

    fast_directions = 2

    def __init__(self, input_size: int, hidden_size: int, cell: str = "rnn_tanh"):
        super().__init__()
        check_positive(input_size=input_size, hidden_size=hidden_size)
        self.cell = get_cell(cell)
        self.input_size, self.hidden_size, self.out_size = input_size, hidden_size, hidden_size
        self.rnn = self.cell.make(input_size, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, L, C) -> (N, L, hidden)`` (a transposed view of a sequence-first result)."""
        return self.forward_seq_first(x.transpose(0, 1)).transpose(0, 1)

    def forward_seq_first(self, x: Tensor) -> Tensor:
        """``(L, *batch, C) -> (L, *batch, hidden)``, any strides."""
        L, batch = x.shape[0], x.shape[1:-1]
        y = run_ws_birnn(self.rnn, x, merge=True)  # (L, N, hidden)
        return y.view(L, *batch, self.hidden_size)

    def closed_form_params(self) -> int:
        return rnn_params(self.cell, self.input_size, self.hidden_size)

    def macs_per_token(self) -> int:
        return 2 * rnn_macs_per_token(self.cell, self.input_size, self.hidden_size)

    def closed_form_macs(self, length: int) -> int:
        """MACs for one sequence of ``length`` tokens."""
        return length * self.macs_per_token()


class BiRNNPass(_AxisPass):
    """Standard bidirectional fused RNN (separate forward/backward weights).

    ``merge="sum"``: the two directions' outputs are summed (width H);
    ``merge="cat"``: concatenated (width 2H). params ``2 P(I, H)``, MACs/token ``2 M(I, H)``.
    """

    def __init__(self, input_size: int, hidden_size: int, cell: str = "rnn_tanh", merge: str = "sum"):
        super().__init__()
        if merge not in ("sum", "cat"):
            raise ValueError(f"merge must be 'sum' or 'cat', got {merge!r}")
        self.cell = get_cell(cell)
        self.merge = merge
        self.input_size, self.hidden_size = input_size, hidden_size
        self.out_size = hidden_size if merge == "sum" else 2 * hidden_size
        self.rnn = self.cell.make(input_size, hidden_size, bidirectional=True)

    def forward_seq_first(self, x: Tensor) -> Tensor:
        L, batch = x.shape[0], x.shape[1:-1]
        y = run_rnn(self.rnn, x.reshape(L, -1, x.shape[-1]))  # (L, N, 2H): [forward | backward]
        if self.merge == "sum":
            forward, backward = y.view(L, -1, 2, self.hidden_size).unbind(2)
            y = forward + backward
        return y.view(L, *batch, self.out_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_seq_first(x)

    def closed_form_params(self) -> int:
        return rnn_params(self.cell, self.input_size, self.hidden_size, directions=2)

    def macs_per_token(self) -> int:
        return rnn_macs_per_token(self.cell, self.input_size, self.hidden_size, directions=2)


@dataclass(frozen=True)
class _GridLayout:
    """Where every pixel of several maps goes for the packed row and column passes.

    Maps ``shapes[k] = (B_k, H_k, W_k)`` are read column by column, one after another: pixel
    ``(k, b, h, w)`` is row ``offset_k + (w B_k + b) H_k + h`` of the concatenation of every map's
    ``(W_k, B_k, H_k, C)`` permutation. The row pass reads every map's rows as sequences along W, laid
    out step-major (:func:`~crnn.layers.fast_rnn.run_steps`): block ``s`` holds column ``s`` of every
    map at least ``s + 1`` wide, the widest maps first, each map's rows in ``(b, h)`` order (so a block
    reads one contiguous run of rows per map). It writes its states in the column pass's token order:
    the column pass, along H, columns in ``(b, w)`` order, reads them as they lie and writes NCHW maps
    of ``channels`` (one after another, flat). After the pixel copy, nothing but the passes' gathers and
    scatters (their ``x_index`` / ``out_offset, out_stride``) moves data:

    * ``row_pixels``: the pixel each token of the row pass reads;
    * ``row_offsets``: where each row-pass token's states go: its column-pass token times ``hidden``
      (channel stride 1);
    * ``col_offsets``, ``col_strides``: where each column-pass token's output goes, channel 0's element
      and the map's ``H_k W_k`` between channels.
    """

    row_steps: tuple[int, ...]
    col_steps: tuple[int, ...]
    row_pixels: Tensor
    row_offsets: Tensor
    row_strides: Tensor
    col_offsets: Tensor
    col_strides: Tensor

    def indices(self) -> tuple[Tensor, ...]:
        """The index tensors, in field order."""
        return self.row_pixels, self.row_offsets, self.row_strides, self.col_offsets, self.col_strides


def _step_major(grids: list[np.ndarray]) -> tuple[tuple[int, ...], np.ndarray]:
    """``(steps, tokens)``: grids ``(L_k, N_k)`` of token ids (``N_k`` sequences of ``L_k`` tokens each)
    laid out step-major, the longest sequences first (stable)."""
    order = sorted(range(len(grids)), key=lambda k: -len(grids[k]))
    steps, tokens = [], []
    for s in range(max(len(g) for g in grids)):
        running = [grids[k][s] for k in order if len(grids[k]) > s]
        steps.append(sum(len(r) for r in running))
        tokens += running
    return tuple(steps), np.concatenate(tokens)


@functools.lru_cache(maxsize=256)
def _grid_layout(shapes: tuple[tuple[int, int, int], ...], hidden: int, channels: int) -> _GridLayout:
    # Index bookkeeping in numpy: a trace records torch index arithmetic and sizes as tensors.
    offsets = list(itertools.accumulate([0, *(b * h * w for b, h, w in shapes[:-1])]))
    # pixel ids (b, h, w) -> row of the (W_k, B_k, H_k) concatenation
    pixels = [
        o + np.arange(b * h * w).reshape(w, b, h).transpose(1, 2, 0)
        for o, (b, h, w) in zip(offsets, shapes, strict=True)
    ]
    # rows: sequences along w, one per (b, h); columns: along h, one per (b, w)
    row_steps, row_pixels = _step_major([p.transpose(2, 0, 1).reshape(p.shape[2], -1) for p in pixels])
    col_steps, col_pixels = _step_major([p.transpose(1, 0, 2).reshape(p.shape[1], -1) for p in pixels])
    col_token = np.empty_like(col_pixels)
    col_token[col_pixels] = np.arange(len(col_pixels))  # the column-pass token of every pixel
    # pixel (k, b, h, w), channel c of the NCHW outputs: element C offset_k + (b C + c) H_k W_k + h W_k + w
    element, plane = np.empty_like(col_pixels), np.empty_like(col_pixels)
    for o, p, (b, h, w) in zip(offsets, pixels, shapes, strict=True):
        bb, hh, ww = np.indices((b, h, w))
        element[p] = channels * o + (bb * channels * h + hh) * w + ww  # channel 0's
        plane[p] = h * w
    indices = (
        row_pixels,
        hidden * col_token[row_pixels],
        np.ones_like(row_pixels),
        element[col_pixels],
        plane[col_pixels],
    )
    return _GridLayout(row_steps, col_steps, *(torch.from_numpy(i) for i in indices))


def _pixel_columns(kernel: Any, maps: tuple[Tensor, ...]) -> Tensor:
    """Maps ``(B_k, C, H_k, W_k)`` -> their pixels ``(sum_k W_k B_k H_k, C)``, column by column: map
    ``k``'s ``(W_k, B_k, H_k, C)`` permutation, one map after another (the order of :class:`_GridLayout`).
    One copy, by the compiled ``kernel`` (8x8 blocks transposed in registers) or, with ``kernel=None``,
    torch's permuting copy (an element at a time: several times slower)."""
    if kernel is not None:
        return kernel.pixel_columns([m.contiguous() for m in maps])
    x = maps[0].new_empty(sum(m.numel() for m in maps) // maps[0].shape[1], maps[0].shape[1])
    start = 0
    for m in maps:
        b, c, h, w = m.shape
        x[start : start + b * h * w].view(w, b, h, c).copy_(m.permute(3, 0, 2, 1))
        start += b * h * w
    return x


def _pixel_columns_backward(kernel: Any, grad: Tensor, shapes: list[tuple[int, ...]]) -> list[Tensor]:
    """The inverse of :func:`_pixel_columns`: the pixels' gradient back to contiguous NCHW maps of
    ``shapes`` (a permuted view would make the elementwise backward before it, e.g. ReLU's, run on
    mismatched strides)."""
    if kernel is not None:
        return kernel.pixel_columns_backward(grad.contiguous(), shapes)
    grads, start = [], 0
    for b, c, h, w in shapes:
        grads.append(grad[start : start + b * h * w].view(w, b, h, c).permute(1, 3, 2, 0).contiguous())
        start += b * h * w
    return grads


class _PackedPasses(torch.autograd.Function):
    """The fast path of a separable layer over several maps as ONE autograd node (not one per copy,
    pass and view between them: sws_birnn's fwd+bwd at a detection tower's shapes ~0.2-0.3 ms less, of
    7-9, on one Zen 5 core):
    ``(steps, implementations, directions, relu, *indices, *maps, *row weights, *column weights) ->
    maps``, where ``steps`` and ``indices`` are a :class:`_GridLayout`'s (``row_steps, col_steps`` and
    :meth:`_GridLayout.indices`, on the maps' device).

    Forward: the maps' pixels copied column by column (:func:`_pixel_columns`); the row pass, its
    tokens reading those rows through ``row_pixels``, its summed states written in the
    column pass's token order; the column pass, reading them as they lie, its summed states written as
    the NCHW maps, one after another in one buffer (returned as one view per map). Backward: the
    column pass's, the row pass's, the pixels' gradient back to NCHW maps. ``implementations``: what
    runs the row and the column pass (:func:`~crnn.layers.fast_rnn.pass_implementation`); each pass's
    weights ``(W_ih, W_hh, b_ih, b_hh)``; ``directions``: 1, or 2 (weight-shared both ways).
    """

    @staticmethod
    def forward(
        ctx,
        steps: tuple[tuple[int, ...], ...],
        implementations: tuple[Any, Any],
        directions: int,
        relu: bool,
        *tensors,
    ):
        indices, maps, row_weights, col_weights = tensors[:5], tensors[5:-8], tensors[-8:-4], tensors[-4:]
        row_pass, col_pass = implementations
        kernel = row_pass if is_compiled(row_pass) else None
        x = _pixel_columns(kernel, maps)  # (pixels, C)
        row_pixels, row_offsets, row_strides, col_offsets, col_strides = indices
        row_steps, col_steps = steps
        # the row pass writes its summed states in the column pass's token order
        row_layout = (row_offsets, row_strides)
        row_states, r = _pass_forward(
            row_pass, x, row_pixels, row_weights, row_steps, relu, directions, True, row_layout
        )
        r = r.view(len(x), -1)  # (pixels, hidden)
        # the column pass reads them as they lie and writes the NCHW maps, one after another, flat
        col_layout = (col_offsets, col_strides)
        col_states, y = _pass_forward(
            col_pass, r, None, col_weights, col_steps, relu, directions, True, col_layout
        )
        (row_ih, row_hh, *_), (col_ih, col_hh, *_) = row_weights, col_weights
        ctx.save_for_backward(x, row_states, r, col_states, row_ih, row_hh, col_ih, col_hh)
        ctx.steps, ctx.indices, ctx.implementations, ctx.kernel = steps, indices, implementations, kernel
        ctx.relu, ctx.shapes = relu, [tuple(m.shape) for m in maps]
        outputs = [(b, col_ih.shape[0], h, w) for b, _, h, w in ctx.shapes]
        parts = y.split([math.prod(shape) for shape in outputs])
        return tuple(part.view(shape) for part, shape in zip(parts, outputs, strict=True))

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Tensor) -> tuple[Tensor | None, ...]:
        x, row_states, r, col_states, row_ih, row_hh, col_ih, col_hh = ctx.saved_tensors
        row_pixels, row_offsets, row_strides, col_offsets, col_strides = ctx.indices
        (row_pass, col_pass), (row_steps, col_steps), relu = ctx.implementations, ctx.steps, ctx.relu
        need_maps = any(ctx.needs_input_grad[-8 - len(ctx.shapes) : -8])  # the maps: before the 8 weights
        grad = torch.cat([g.reshape(-1) for g in grads])  # the NCHW maps', flat
        col_args = (col_states, r, None, col_ih, col_hh, col_steps, relu, True)
        grad_r, *col_grads = _pass_backward(col_pass, grad, (col_offsets, col_strides), *col_args)
        row_args = (row_states, x, row_pixels, row_ih, row_hh, row_steps, relu, need_maps)
        grad_x, *row_grads = _pass_backward(row_pass, grad_r.view(-1), (row_offsets, row_strides), *row_args)
        grad_maps = [None] * len(ctx.shapes)
        if need_maps:
            grad_maps = _pixel_columns_backward(ctx.kernel, grad_x, ctx.shapes)
        return *(None,) * 9, *grad_maps, *row_grads, *col_grads


PACKED_PASSES_OP = f"prim::PythonOp.{_PackedPasses.__name__}"
"""Its name in a traced graph, for :mod:`crnn.complexity`."""


class _SeparableRNN2d(Layer2d):
    """Row pass then column pass: ``(B, C, H, W) -> (B, O, H, W)``; subclasses pick the passes."""

    row: _AxisPass
    col: _AxisPass

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int | None, cell: str):
        super().__init__()
        hidden_channels = out_channels if hidden_channels is None else hidden_channels
        check_positive(in_channels=in_channels, out_channels=out_channels, hidden_channels=hidden_channels)
        get_cell(cell)  # a clear error before any module is built
        self.in_channels, self.out_channels, self.hidden_channels = in_channels, out_channels, hidden_channels
        self.cell_name = cell

    def forward(self, x: Tensor) -> Tensor:
        implementations = self._fast_passes(x)
        if implementations and all(map(is_compiled, implementations)):
            # the compiled pass gathers its input and scatters its output: no copies between the passes
            return self._packed_passes([x], implementations)[0]
        # rows: sequences along W, every image row a batch element -> (W, B, H, C), a view
        r = self.row.forward_seq_first(x.permute(3, 0, 2, 1))  # (W, B, H, hidden)
        # columns: sequences along H -> (H, B, W, hidden), a view
        c = self.col.forward_seq_first(r.permute(2, 1, 0, 3))  # (H, B, W, O)
        return c.permute(1, 3, 0, 2).contiguous()  # (B, O, H, W)

    def _fast_passes(self, x: Tensor) -> tuple[Any, Any] | None:
        """What runs the row and the column pass on inputs like ``x`` where both are on the fast path
        (:func:`~crnn.layers.fast_rnn.pass_implementation`; then :meth:`_packed_passes` runs), else None.
        Chosen once per call, for both passes and their backward."""
        if not all(p.fast_directions is not None and uses_fast_path(p.rnn, x) for p in (self.row, self.col)):
            return None
        return pass_implementation(self.row.rnn, x), pass_implementation(self.col.rnn, x)

    def forward_levels(self, maps: list[Tensor]) -> list[Tensor]:
        """Every map ``(B_k, C, H_k, W_k)`` through the layer. On the fast path all maps' rows are one
        packed pass and all their columns another (:meth:`_packed_passes`): each step is one matmul
        over every map, so a detection tower's pyramid levels cost the steps of the largest one."""
        implementations = self._fast_passes(maps[0])
        return self._packed_passes(maps, implementations) if implementations else [self(m) for m in maps]

    def _packed_passes(self, maps: list[Tensor], implementations: tuple[Any, Any]) -> list[Tensor]:
        """The fast path's two passes, run by ``implementations`` (row, column), over every map's rows,
        then every map's columns (:class:`_GridLayout`), as one autograd node (:class:`_PackedPasses`):
        the maps' pixels are copied column by column (one map: one copy), the row pass writes its states
        in the column pass's order and the column pass writes the NCHW outputs."""
        shapes = tuple(_ints((m.shape[0], m.shape[2], m.shape[3])) for m in maps)
        layout = _grid_layout(shapes, self.hidden_channels, self.out_channels)
        steps = (layout.row_steps, layout.col_steps)
        args = (steps, implementations, self.row.fast_directions, self.row.rnn.mode == "RNN_RELU")
        indices = [index.to(maps[0].device) for index in layout.indices()]
        weights = (*_weights(self.row.rnn), *_weights(self.col.rnn))
        return list(_PackedPasses.apply(*args, *indices, *maps, *weights))

    def closed_form_params(self) -> int:
        return self.row.closed_form_params() + self.col.closed_form_params()

    def closed_form_macs(self, height: int, width: int) -> int:
        # every pixel is one token of each pass
        return height * width * (self.row.macs_per_token() + self.col.macs_per_token())

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, hidden_channels={self.hidden_channels}, "
            f"cell={self.cell_name!r}"
        )


@register_layer("srnn", family="separable_rnn", order=3, marker="^", cells=ALL_CELLS, fast_path=True)
class SRNN(_SeparableRNN2d):
    """Separable RNN: a unidirectional RNN along every row, then one along every column.

    ``r[i, :] = RNN_row(x[i, :])`` (C -> h, left to right),
    ``y[:, j] = RNN_col(r[:, j])`` (h -> O, top to bottom); output ``y``, the column pass's hidden
    states (no residual, norm or extra activation). Output (i, j) sees inputs (<= i, <= j).

    * params: ``P(C, h) + P(h, O)``
    * MACs:   ``H*W * (M(C, h) + M(h, O))``
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden_channels: int | None = None, cell: str = "rnn_tanh"
    ):
        super().__init__(in_channels, out_channels, hidden_channels, cell)
        self.row = RNNPass(in_channels, self.hidden_channels, cell)
        self.col = RNNPass(self.hidden_channels, out_channels, cell)


@register_layer("sws_birnn", family="separable_rnn", order=4, marker="*", cells=ALL_CELLS, fast_path=True)
class SWSBiRNN(_SeparableRNN2d):
    """Separable weight-shared BiRNN (the paper's layer): SRNN whose passes are :class:`WSBiRNN`.

    ``r[i, :] = WSBiRNN_row(x[i, :])`` (C -> h), ``y[:, j] = WSBiRNN_col(r[:, j])`` (h -> O).
    Every output sees the whole image; the layer is flip-equivariant along H and W.

    * params: ``P(C, h) + P(h, O)``
    * MACs:   ``2 * H*W * (M(C, h) + M(h, O))``
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden_channels: int | None = None, cell: str = "rnn_tanh"
    ):
        super().__init__(in_channels, out_channels, hidden_channels, cell)
        self.row = WSBiRNN(in_channels, self.hidden_channels, cell)
        self.col = WSBiRNN(self.hidden_channels, out_channels, cell)


@register_layer("sbirnn_sum", family="separable_rnn", order=5, marker="v", cells=ALL_CELLS)
class SBiRNNSum(_SeparableRNN2d):
    """Separable BiRNN with separate forward/backward weights, directions **summed** (ablation).

    Row pass: bidirectional C -> h per direction, summed to h; column pass: bidirectional
    h -> O per direction, summed to O.

    * params: ``2 P(C, h) + 2 P(h, O)``
    * MACs:   ``2 * H*W * (M(C, h) + M(h, O))``
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden_channels: int | None = None, cell: str = "rnn_tanh"
    ):
        super().__init__(in_channels, out_channels, hidden_channels, cell)
        self.row = BiRNNPass(in_channels, self.hidden_channels, cell, merge="sum")
        self.col = BiRNNPass(self.hidden_channels, out_channels, cell, merge="sum")


@register_layer("sbirnn_cat", family="separable_rnn", order=6, marker="<", cells=ALL_CELLS)
class SBiRNNCat(_SeparableRNN2d):
    """Separable BiRNN with separate forward/backward weights, directions **concatenated** (ablation).

    Widths: the row pass has ``h`` units per direction, so its output is ``2h`` wide (concat
    doubles the width of the pass); the column pass reads ``2h`` and has ``O // 2`` units per
    direction so that the layer outputs ``O`` channels (``O`` must be even).

    * params: ``2 P(C, h) + 2 P(2h, O/2)``
    * MACs:   ``2 * H*W * (M(C, h) + M(2h, O/2))``
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden_channels: int | None = None, cell: str = "rnn_tanh"
    ):
        super().__init__(in_channels, out_channels, hidden_channels, cell)
        if out_channels % 2:
            raise ValueError(
                f"sbirnn_cat needs an even out_channels (the column pass concatenates two directions of "
                f"out_channels // 2), got out_channels={out_channels}"
            )
        self.row = BiRNNPass(in_channels, self.hidden_channels, cell, merge="cat")
        self.col = BiRNNPass(2 * self.hidden_channels, out_channels // 2, cell, merge="cat")
