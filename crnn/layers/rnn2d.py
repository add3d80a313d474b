"""RNN2D: a true 2-D recurrence computed along anti-diagonals (the paper's open question)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cells import VANILLA_CELLS, get_cell
from .registry import Layer2d, check_positive, register_layer

__all__ = ["RNN2D", "RNN2D4Way", "diagonal_schedule"]


class _Schedule:
    """Index tables of the anti-diagonal wavefront of an ``H x W`` grid (numpy-built, cached).

    Positions are ordered diagonal by diagonal (``d = i + j``), rows ascending within a diagonal.
    ``order[p]`` is the raster index (``i*W + j``) of diagonal-order position p and ``inverse`` its
    inverse permutation; diagonal d holds rows ``lo[d] .. lo[d] + size[d] - 1`` (``size[d]``
    consecutive positions). ``flip_order`` / ``flip_inverse`` (4 columns, one per corner:
    k = 0 none, 1 flip H, 2 flip W, 3 both) do the same for the four flipped images, in terms of
    the raster indices of the unflipped one; ``flip_inverse`` indexes the ``(P * 4)`` flattened
    (position, corner) axis.
    """

    def __init__(self, height: int, width: int, device: torch.device):
        i, j = np.divmod(np.arange(height * width), width)
        order = np.lexsort((i, i + j))  # sort by diagonal, then by row
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        self.size = np.bincount(i + j).tolist()
        self.lo = [max(0, d - width + 1) for d in range(height + width - 1)]
        self.order = torch.as_tensor(order, device=device)
        self.inverse = torch.as_tensor(inverse, device=device)
        # corner k reads the image flipped in H (k & 1) and/or W (k & 2): raster r of the flipped
        # image is raster flip_k(r) of the original (flips are involutions)
        flips = []
        for k in range(4):
            fi = height - 1 - i if k & 1 else i
            fj = width - 1 - j if k & 2 else j
            flips.append(fi * width + fj)
        flips = np.stack(flips, axis=1)  # (HW, 4)
        self.flip_order = torch.as_tensor(flips[order], device=device)  # (P, 4): raster of original
        flip_inverse = inverse[flips] * 4 + np.arange(4)  # (HW, 4): into (P * 4) flattened
        self.flip_inverse = torch.as_tensor(flip_inverse.reshape(-1), device=device)


_SCHEDULES: dict[tuple[int, int, torch.device], _Schedule] = {}


def diagonal_schedule(height: int, width: int, device: torch.device) -> _Schedule:
    key = (height, width, device)
    if key not in _SCHEDULES:
        _SCHEDULES[key] = _Schedule(height, width, device)
    return _SCHEDULES[key]


def diagonal_scan(z: Tensor, weight_hh: Tensor, sched: _Schedule, activation: str) -> Tensor:
    """Run ``h[i,j] = act(z[i,j] + [h[i-1,j], h[i,j-1]] @ weight_hh^T)`` along anti-diagonals.

    ``z``: ``(P, N, hid)`` input terms in diagonal order; returns the states ``(P, N, hid)`` in the
    same order. One ``addmm`` per diagonal over all of its cells and the whole batch: diagonal d
    needs only diagonal d-1, held as ``prev`` (rows ``lo[d-1] ..``), padded with a zero row on each
    side so that 'up' (row i-1) and 'left' (row i) of rows ``lo[d] .. hi[d]`` are two contiguous
    slices; the zero rows are the out-of-image neighbours.
    """
    act = torch.tanh if activation == "tanh" else torch.relu
    N, hid = z.shape[1], z.shape[2]
    w_t = weight_hh.t()  # (2 hid, hid)
    pad = z.new_zeros(1, N, hid)
    prev, prev_lo = z.new_zeros(0, N, hid), 0
    states = []
    # split, not z[off:off + n]: the backward of a split is one cat, that of every slice a zero-filled
    # copy of the whole z (quadratic in the number of diagonals)
    for d, (lo, n, z_d) in enumerate(zip(sched.lo, sched.size, z.split(sched.size), strict=True)):
        padded = torch.cat([pad, prev, pad]) if d else z.new_zeros(2, N, hid)  # rows prev_lo-1 ..
        s = lo - prev_lo
        up_left = torch.cat([padded[s : s + n], padded[s + 1 : s + 1 + n]], dim=-1)  # (n, N, 2 hid)
        h = act(torch.addmm(z_d.view(n * N, hid), up_left.view(n * N, 2 * hid), w_t))
        prev, prev_lo = h.view(n, N, hid), lo
        states.append(prev)
    return torch.cat(states)


class _RNN2DBase(Layer2d):
    """Weights shared by :class:`RNN2D` and :class:`RNN2D4Way`.

    ``input``: ``W, b`` as a ``Linear(C_in, hid)`` (the recurrence bias is its bias);
    ``weight_hh = [U | V]``: ``(hid, 2 hid)``, U for the neighbour above, V for the one on the
    left; ``proj``: ``Linear(hid, C_out, bias=False)`` only if ``hid != C_out`` (default
    ``hid = C_out``: no projection, the states are the output).
    """

    corners: int = 1

    def __init__(
        self, in_channels: int, out_channels: int, hidden_channels: int | None = None, cell: str = "rnn_tanh"
    ):
        super().__init__()
        hidden_channels = out_channels if hidden_channels is None else hidden_channels
        check_positive(in_channels=in_channels, out_channels=out_channels, hidden_channels=hidden_channels)
        self.activation = get_cell(cell, layer=self.layer_name, allowed=VANILLA_CELLS).activation
        self.cell_name = cell
        self.in_channels, self.out_channels, self.hidden_channels = in_channels, out_channels, hidden_channels
        hid = hidden_channels
        self.input = nn.Linear(in_channels, hid)
        # [U | V] has fan-in 2*hid: uniform(+-1/sqrt(2 hid)) is nn.RNN's init for that fan-in
        bound = 1.0 / math.sqrt(2 * hid)
        self.weight_hh = nn.Parameter(torch.empty(hid, 2 * hid).uniform_(-bound, bound))
        self.proj = nn.Linear(hid, out_channels, bias=False) if hid != out_channels else None

    def _output(self, h: Tensor, sched: _Schedule, shape: torch.Size) -> Tensor:
        """``(P, B, hid)`` states in diagonal order -> ``(B, C_out, H, W)``."""
        B, _, H, W = shape
        if self.proj is not None:
            h = self.proj(h)  # project first: a contiguous matmul, and fewer channels to reorder
        # one gather that both reorders to raster and lays channels out as NCHW
        return h.permute(1, 2, 0).index_select(2, sched.inverse).view(B, -1, H, W)

    def closed_form_params(self) -> int:
        C, O, hid = self.in_channels, self.out_channels, self.hidden_channels
        return C * hid + hid + 2 * hid * hid + (hid * O if hid != O else 0)

    def closed_form_macs(self, height: int, width: int) -> int:
        C, O, hid = self.in_channels, self.out_channels, self.hidden_channels
        per_pixel = C * hid + self.corners * 2 * hid * hid + (hid * O if hid != O else 0)
        return height * width * per_pixel

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, hidden_channels={self.hidden_channels}, "
            f"cell={self.cell_name!r}"
        )


@register_layer("rnn2d", family="rnn2d", order=9, marker="X", cells=VANILLA_CELLS, python_loop=True)
class RNN2D(_RNN2DBase):
    """2-D recurrence from the top-left corner::

        h[i, j] = act(W x[i, j] + U h[i-1, j] + V h[i, j-1] + b),   h[-1, j] = h[i, -1] = 0
        y[i, j] = P h[i, j]   (P only if hidden_channels != out_channels)

    computed along anti-diagonals ``d = i + j``: ``H + W - 1`` sequential steps, each ONE batched
    matmul over all cells of the diagonal and the batch. ``W x`` is computed for all positions up
    front. Output (i, j) depends only on inputs (<= i, <= j).

    Only vanilla cells (``rnn_tanh``, ``rnn_relu``): the equation above has no gated form here,
    ``gru``/``lstm`` are rejected.

    Shapes: ``(B, C, H, W) -> (P, B, C)`` (diagonal order) ``-> (P, B, hid) -> (B, C_out, H, W)``.

    * params: ``C*hid + hid + 2*hid^2 (+ hid*C_out if hid != C_out)``
    * MACs:   ``H*W * (C*hid + 2*hid^2 (+ hid*C_out))``: ``[U | V]`` is applied once per cell,
      border cells included (their out-of-image neighbours are zero rows of the same matmul).
    """

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        sched = diagonal_schedule(H, W, x.device)
        # (HW, B, C) view, gathered into diagonal order (one copy), then W x + b for all positions
        z = self.input(x.flatten(2).permute(2, 0, 1).index_select(0, sched.order))  # (P, B, hid)
        h = diagonal_scan(z, self.weight_hh, sched, self.activation)
        return self._output(h, sched, x.shape)


@register_layer("rnn2d_4way", family="rnn2d", order=10, marker="h", cells=VANILLA_CELLS, python_loop=True)
class RNN2D4Way(_RNN2DBase):
    """:class:`RNN2D` run from all four corners with shared weights, summed::

        y = P sum_k flip_k(RNN2D_h(flip_k(x)))   over the 4 flips (none, H, W, H and W)

    so every output sees the whole image. ``W x + b`` is computed once (it commutes with flips);
    the four flipped copies of it are stacked along the batch in diagonal order with one gather,
    scanned in one run, and summed back with one gather.

    Cells as :class:`RNN2D` (vanilla only).

    * params: ``C*hid + hid + 2*hid^2 (+ hid*C_out if hid != C_out)``
    * MACs:   ``H*W * (C*hid + 4*2*hid^2 (+ hid*C_out))``
    """

    corners = 4

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        sched = diagonal_schedule(H, W, x.device)
        z = self.input(x.flatten(2).permute(2, 0, 1))  # (HW, B, hid), raster order
        hid = z.shape[-1]
        z4 = z[sched.flip_order].view(H * W, 4 * B, hid)  # (P, 4, B, hid): corner k in batch block k
        h4 = diagonal_scan(z4, self.weight_hh, sched, self.activation)  # (P, 4B, hid)
        # one gather back to raster order, laid out as (B, hid, HW, corner); sum the corners
        h = h4.view(-1, B, hid).permute(1, 2, 0).index_select(2, sched.flip_inverse)
        h = h.view(B, hid, H, W, 4).sum(-1)  # (B, hid, H, W)
        if self.proj is not None:  # after the sum: 1x1 conv with the Linear's weight, once
            h = F.conv2d(h, self.proj.weight[:, :, None, None])
        return h
