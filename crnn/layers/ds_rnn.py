"""DS-RNN: the recurrent analogue of a depthwise-separable convolution (the paper's open question)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .cells import VANILLA_CELLS, get_cell
from .registry import Layer2d, check_positive, register_layer

__all__ = ["DSRNN", "diagonal_birnn"]


def diagonal_birnn(x: Tensor, w: Tensor, u: Tensor, b: Tensor, activation: str) -> Tensor:
    """Weight-shared bidirectional per-channel recurrence along dim 0 of ``(L, *batch, C)``.

    ``a_t = w * x_t + b`` (all steps at once), then for the sequence and its reverse (stacked along
    the batch, one loop for both): ``h_t = act(a_t + u * h_{t-1})``, ``h_{-1} = 0``; the reverse
    states are flipped back and summed. Returns ``(L, *batch, C)``, contiguous.

    The weight products use ``torch.addcmul`` so that ``crnn.complexity`` counts them (one MAC per
    output element): ``L*N*C`` for the input term, ``2*L*N*C`` for the two recurrences.
    """
    act = torch.tanh if activation == "tanh" else torch.relu
    L, batch, n = x.shape[0], x.shape[1:-1], x.shape[1:-1].numel()
    a = torch.addcmul(b, w, x)  # input term for every step, computed once for both directions
    # forward and reverse sequences stacked along the batch; the cat is the one contiguous copy
    a = torch.cat([a, a.flip(0)], dim=1).view(L, 2 * n, x.shape[-1])
    h = a.new_zeros(a.shape[1:])
    states = []
    # the unavoidable sequential loop, each step batched over everything else; unbind (not a[t]):
    # its backward is one stack, while every a[t] would back-propagate through a zero-filled copy of a
    for a_t in a.unbind(0):
        h = act(torch.addcmul(a_t, u, h))
        states.append(h)
    y = torch.stack(states).view(L, 2, n, x.shape[-1])
    return (y[:, 0] + y[:, 1].flip(0)).view(L, *batch, x.shape[-1])


@register_layer("ds_rnn", family="diagonal_rnn", order=8, marker="P", cells=VANILLA_CELLS, python_loop=True)
class DSRNN(Layer2d):
    """Depthwise-separable RNN: per-channel bidirectional recurrences along rows, then columns,
    then a pointwise ``1 x 1`` mixing to ``C_out``.

    Each channel c has its own scalar input weight, recurrent weight and bias per pass (a diagonal
    recurrent matrix), like the per-channel filters of a depthwise conv. With ``act`` = tanh
    (``rnn_tanh``) or relu (``rnn_relu``) and ``⊙`` the per-channel product:

    Row pass (along j, for each row i; forward and backward share weights)::

        f[i, j] = act(w_r ⊙ x[i, j] + u_r ⊙ f[i, j-1] + b_r),   f[i, -1] = 0
        g[i, j] = act(w_r ⊙ x[i, j] + u_r ⊙ g[i, j+1] + b_r),   g[i, W]  = 0
        r[i, j] = f[i, j] + g[i, j]

    Column pass (along i, same form, its own ``w_c, u_c, b_c``) on ``r`` gives ``s``; then
    ``y[i, j] = P s[i, j]`` with ``P`` a ``C_out x C`` pointwise matrix (no bias: a norm follows).

    Only vanilla cells: a diagonal recurrence has no gated form here, so ``gru``/``lstm`` are
    rejected. ``hidden_channels`` must equal ``in_channels`` (a per-channel recurrence keeps the
    width), which is also its default.

    Shapes: ``(B, C, H, W) -> (W, B, H, C) -> (H, B, W, C) -> (B, C_out, H, W)``.

    * params: ``6*C + C_out*C``
    * MACs:   ``H*W * (6*C + C_out*C)`` per sample: per pass ``C`` for ``w ⊙ x`` (shared by the
      two directions) and ``2C`` for ``u ⊙ h`` (one per direction), and the pointwise mix.
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden_channels: int | None = None, cell: str = "rnn_tanh"
    ):
        super().__init__()
        check_positive(in_channels=in_channels, out_channels=out_channels)
        if hidden_channels is not None and hidden_channels != in_channels:
            raise ValueError(
                "ds_rnn is a per-channel recurrence, so hidden_channels must equal in_channels "
                f"(or be None), got hidden_channels={hidden_channels}, in_channels={in_channels}"
            )
        self.activation = get_cell(cell, layer="ds_rnn", allowed=VANILLA_CELLS).activation
        self.cell_name = cell
        self.in_channels, self.out_channels, self.hidden_channels = in_channels, out_channels, in_channels
        C = in_channels
        # init: identity input weights, zero bias, recurrent weights in [0, 0.9): a bank of leaky
        # integrators with different memory lengths; |u| < 1 keeps the recurrence contractive.
        self.weight_row = nn.Parameter(torch.ones(C))
        self.recurrent_row = nn.Parameter(torch.rand(C) * 0.9)
        self.bias_row = nn.Parameter(torch.zeros(C))
        self.weight_col = nn.Parameter(torch.ones(C))
        self.recurrent_col = nn.Parameter(torch.rand(C) * 0.9)
        self.bias_col = nn.Parameter(torch.zeros(C))
        self.pointwise = nn.Linear(C, out_channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # rows: along W, rows folded into the batch -> (W, B, H, C) (a view; copied once inside)
        r = diagonal_birnn(
            x.permute(3, 0, 2, 1), self.weight_row, self.recurrent_row, self.bias_row, self.activation
        )
        # columns: along H -> (H, B, W, C)
        s = diagonal_birnn(
            r.permute(2, 1, 0, 3), self.weight_col, self.recurrent_col, self.bias_col, self.activation
        )
        return self.pointwise(s).permute(1, 3, 0, 2).contiguous()  # (B, C_out, H, W)

    def closed_form_params(self) -> int:
        C = self.in_channels
        return 6 * C + self.out_channels * C

    def closed_form_macs(self, height: int, width: int) -> int:
        C = self.in_channels
        return height * width * (6 * C + self.out_channels * C)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, cell={self.cell_name!r}"
