"""A fast CPU path for one-layer vanilla RNNs (``rnn_tanh``, ``rnn_relu``), exact to ``nn.RNN``.

PyTorch's CPU ``nn.RNN`` runs every step as its own autograd-recorded ``linear`` + activation, and
its tanh is slow on this build (torch 2.14, one (2048, 64) float32 tensor, 1 thread: ``tanh_``
~950 us, ``sigmoid_`` ~120 us, the step's matmul ~500 us). This path
(:class:`_VanillaRNNFunction`, a ``torch.autograd.Function``), every choice kept by measurement
(``scripts/bench_layers.py`` shows it beside ``nn.RNN``):

* the input projection ``x W_ih^T + b_ih + b_hh`` is ONE matmul over all steps; in a weight-shared
  bidirectional pass (the sequence and its reverse through the same weights) it is computed once
  and read forwards and backwards: half the input-projection FLOPs of the reversed copy;
* the sequences are laid out *step-major* (:class:`_VanillaRNNFunction`): one block of rows per
  step, the longer sequences first, so a step of every sequence is one matmul on a prefix of the
  neighbouring block, in place, with nothing gathered or flipped. Sequences of different lengths
  ride together: the 2-D layers pack the rows (then the columns) of several maps, e.g. a detection
  tower's pyramid levels, into one recurrence (``Layer2d.forward_levels``), whose steps are those of
  the longest sequence, not the sum over maps;
* per step one matmul accumulated in place (oneDNN's ``_linear_pointwise`` + ``add_`` for float32
  products of at least ``_ONEDNN_MIN_MACS``, MKL's ``addmm_`` below, where oneDNN's fixed cost per
  call dominates) and one in-place activation; no per-step autograd nodes;
* tanh runs in the sigmoid domain: with ``u_t = sigmoid(2 a_t)`` (``a_t`` the pre-activation),
  ``h_t = tanh(a_t) = 2 u_t - 1`` and ``2 a_{t+1} = 2 P_{t+1} - 2 W_hh 1 + 4 W_hh u_t``, so a step
  is a matmul with ``4 W_hh`` + ``sigmoid_``, and ``h = 2u - 1`` is formed once at the end;
* backward runs the per-step recurrence of the pre-activation gradients (one matmul accumulated in
  place and one multiply by the activation's derivative per step), then computes the gradients of
  ``W_hh`` (one matmul per run of equal block sizes), ``W_ih``, the biases and the input as one
  large matmul (or sum) each over all steps.

``torch.compile`` of the ``nn.RNN`` layer gave nothing (sws_birnn, B=128, C=64, 8x8: 51.8 ms
compiled vs 51.2 ms eager; this path 27.7 ms).

In float64 it equals ``nn.RNN`` to ~1e-15 (tests: 1e-10); in float32 to float32 rounding. Second
derivatives are not implemented: differentiating the backward raises a clear error.

Which path runs (:func:`rnn_path`, or the environment variable ``CRNN_RNN_PATH``):

* ``auto`` (default): the fast path for a one-layer unidirectional vanilla ``nn.RNN`` on CPU in
  float32/float64, outside autocast and outside tracing (TorchScript/ONNX export and fvcore's
  counter see the fused ``aten::rnn_*`` op, which ONNX maps to its ``RNN`` node); ``nn.RNN``
  (cuDNN on GPU) otherwise, and always for GRU/LSTM;
* ``fast``: the fast path wherever it applies (CPU or not; also under tracing, where the op is a
  ``prim::PythonOp`` that :func:`crnn.complexity.count_macs` counts with the closed form);
* ``native``: ``nn.RNN`` always.

Under autocast the ``nn.RNN`` path runs in a precision cuDNN supports (see :func:`_native`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = [
    "FAST_RNN_OP",
    "RNN_PATHS",
    "get_rnn_path",
    "rnn_path",
    "run_rnn",
    "run_steps",
    "run_ws_birnn",
    "uses_fast_path",
]

RNN_PATHS = ("auto", "fast", "native")
_ENV = "CRNN_RNN_PATH"
_path_override: list[str] = []


def get_rnn_path() -> str:
    """The path setting in force: the innermost :func:`rnn_path`, else ``$CRNN_RNN_PATH``, else auto."""
    path = _path_override[-1] if _path_override else os.environ.get(_ENV, "auto")
    if path not in RNN_PATHS:
        raise ValueError(f"{_ENV}={path!r}: valid values are {', '.join(RNN_PATHS)}")
    return path


@contextlib.contextmanager
def rnn_path(path: str) -> Iterator[None]:
    """Force the RNN path within the block: ``"auto"``, ``"fast"`` or ``"native"`` (``nn.RNN``)."""
    if path not in RNN_PATHS:
        raise ValueError(f"rnn_path({path!r}): valid values are {', '.join(RNN_PATHS)}")
    _path_override.append(path)
    try:
        yield
    finally:
        _path_override.pop()


def _applies(rnn: nn.RNNBase) -> bool:
    return (
        rnn.mode in ("RNN_TANH", "RNN_RELU")
        and rnn.num_layers == 1
        and not rnn.bidirectional
        and rnn.bias
        and not rnn.batch_first
        and rnn.proj_size == 0
    )


def uses_fast_path(rnn: nn.RNNBase, x: Tensor) -> bool:
    """Whether :func:`run_rnn` / :func:`run_ws_birnn` take the fast path for ``rnn`` on ``x``."""
    path = get_rnn_path()
    if path == "native" or not _applies(rnn):
        return False
    if path == "fast":
        return True
    tracing = torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and not tracing
        and not torch.is_autocast_enabled("cpu")
    )


def run_rnn(rnn: nn.RNNBase, x: Tensor) -> Tensor:
    """``rnn(x)[0]`` for ``x (L, N, I) -> (L, N, D*H)``, zero initial state, through the chosen path
    (any ``nn.RNN``/``GRU``/``LSTM``; the fast path where it applies)."""
    if uses_fast_path(rnn, x):
        L, N, _ = _ints(x.shape)
        return run_steps(rnn, x.reshape(L * N, -1), (N,) * L, 1).view(L, N, -1)
    return _native(rnn, x)


def run_steps(
    rnn: nn.RNNBase, x: Tensor, steps: tuple[int, ...], directions: int, merge: bool = True
) -> Tensor:
    """The fast path on sequences laid out step-major in ``x (T, I)`` (block ``s``: the next
    ``steps[s]`` rows, see :class:`_VanillaRNNFunction`), through the vanilla ``rnn``, zero initial
    state; ``directions=2``: also backwards with the same weights. ``merge``: ``(T, H)``, the states
    summed over the directions; else ``(directions, T, H)``."""
    args = (steps, rnn.mode == "RNN_RELU", directions, merge)
    return _VanillaRNNFunction.apply(x.contiguous(), *_weights(rnn), *args)


def _ints(shape: Sequence[int]) -> tuple[int, ...]:
    """Sizes as Python ints (a trace gives tensors)."""
    return tuple(int(n) for n in shape)


def _native(rnn: nn.RNNBase, x: Tensor) -> Tensor:
    """``rnn(x)[0]`` in a precision the fused kernels support under autocast.

    cuDNN's RNNs run in float32 or float16: under float16 autocast on CUDA the call is left to
    autocast (cuDNN in half precision); under any other autocast (bfloat16, ``trainer=gpu``'s
    ``bf16-mixed``, or CPU autocast) the recurrence runs in float32 with autocast off, and its
    float32 output goes on to the next (autocast) layer.
    """
    device = x.device.type
    if not torch.is_autocast_enabled(device) or (
        device == "cuda" and torch.get_autocast_dtype(device) == torch.float16
    ):
        return rnn(x)[0]
    with torch.autocast(device, enabled=False):
        return rnn(x.float())[0]


def run_ws_birnn(rnn: nn.RNNBase, x: Tensor, merge: bool) -> Tensor:
    """The weight-shared bidirectional pass: ``rnn`` over ``x (L, *batch, I)`` (any strides) and over
    ``x.flip(0)``; ``N = prod(batch)``.

    ``merge=False``: ``(2, L, N, H)``, both directions' states indexed by sequence position (``[1, t]``
    is the state after reading ``x[L-1] ... x[t]``). ``merge=True``: ``(L, N, H)``, their sum (the
    WS-BiRNN output).
    """
    L, *batch, I = _ints(x.shape)
    N = math.prod(batch)
    if uses_fast_path(rnn, x):
        y = run_steps(rnn, x.reshape(L * N, I), (N,) * L, 2, merge)
        return y.view(L, N, -1) if merge else y.view(2, L, N, -1)
    # the sequence and its reverse along the batch: the one copy, which also makes x contiguous
    y = _native(rnn, torch.cat([x, x.flip(0)], dim=1).view(L, 2 * N, I))
    # unbind, not y[:, :n] / y[:, n:]: its backward is one stack, a slice's is a zero-filled copy each
    forward, backward = y.view(L, 2, N, y.shape[-1]).unbind(1)
    return forward + backward.flip(0) if merge else torch.stack([forward, backward.flip(0)])


def _weights(rnn: nn.RNNBase) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0


_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
"""oneDNN's fp32 matmul (the op inductor uses for ``linear``), on dense tensors: faster than MKL's
``torch.mm`` / ``addmm_`` for the tall-skinny products here from a few hundred rows on (see
``_ONEDNN_MIN_MACS``; the dev machine's AMD EPYC, where MKL takes its AVX2 path). float64 and builds
without oneDNN use MKL."""

_ONEDNN_MIN_MACS = 384 * 64 * 64
"""Below this many multiply-adds a oneDNN call's fixed cost outweighs its speed. ``(M, 64) @ (64, 64)``
accumulated in place, 1 thread, CPU clock, medians of 9 rounds on the quiet dev machine, MKL
``addmm_`` vs oneDNN ``_linear_pointwise`` + ``add_``: M=64 9.3 vs 25.1 us, 128 15.2 vs 28.5, 256
27.7 vs 34.0, 384 38.6 vs 39.9, 448 45.5 vs 43.7, 512 52.2 vs 47.5, 896 86.9 vs 66.4. The detection
towers' steps (16 x 4..16 rows per level, up to 3 levels packed) fall on both sides."""


def _onednn(x: Tensor, w: Tensor) -> bool:
    """Whether ``x (M, K) @ w (N, K)^T`` runs on oneDNN. The tracer cannot record the private op's
    arguments: a traced fast path (``rnn_path("fast")``) runs on ``torch.mm``."""
    return (
        _ONEDNN
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.shape[0] * x.shape[1] * w.shape[0] >= _ONEDNN_MIN_MACS
        and not torch.jit.is_tracing()
    )


def _linear(x: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x (M, K) @ w (N, K)^T + bias`` -> ``(M, N)``."""
    if _onednn(x, w):
        return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")
    return x.mm(w.t()) if bias is None else torch.addmm(bias, x, w.t())


def _runs(pairs: list[tuple[int, int, int]]) -> tuple[tuple[int, int, int], ...]:
    """``(state row, next row, rows)`` pairings merged where both ranges continue contiguously."""
    runs: list[list[int]] = []
    for state, following, rows in pairs:
        if runs and runs[-1][0] + runs[-1][2] == state and runs[-1][1] + runs[-1][2] == following:
            runs[-1][2] += rows
        else:
            runs.append([state, following, rows])
    return tuple(tuple(r) for r in runs)


@functools.lru_cache(maxsize=256)
def _schedule(steps: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[tuple[int, int, int], ...], ...]:
    """Block starts of a step-major layout and the ``W_hh``-gradient pairings of each direction."""
    starts = tuple(itertools.accumulate((0, *steps[:-1])))
    forward = _runs([(starts[s - 1], starts[s], steps[s]) for s in range(1, len(steps))])
    backward = _runs([(starts[s + 1], starts[s], steps[s + 1]) for s in range(len(steps) - 1)])
    return starts, forward, backward


def _accumulate(out: Tensor, x: Tensor, w: Tensor) -> None:
    """``out += x (M, K) @ w (N, K)^T`` in place (oneDNN for large float32 products)."""
    if _onednn(x, w):
        out.add_(torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""))
    else:
        out.addmm_(x, w.t())


class _VanillaRNNFunction(torch.autograd.Function):
    """``(x (T, I), W_ih, W_hh, b_ih, b_hh, steps, relu, directions, merge) -> states``.

    ``x`` holds sequences in the *step-major* layout that ``steps`` describes: step ``s`` is the
    block of the next ``steps[s]`` rows, one token of every sequence at least ``s + 1`` long, the
    longer sequences first and in the same order in every block (so a block's first ``steps[s + 1]``
    rows continue in the next block; ``steps`` never increases). ``(L, N)`` sequence-first is this
    layout with ``steps = (N,) * L``; the 2-D layers lay several maps' rows or columns out this way.

    Every sequence runs through one vanilla RNN from a zero state: forwards, and with
    ``directions=2`` also backwards with the same weights (a sequence's backward pass starts at its
    last token: in the block where it is a *suffix* row, the rows after the continuing prefix). The
    states are returned in the layout of ``x``: ``(directions, T, H)``, or with ``merge`` summed
    over the directions, ``(T, H)``. Both directions read the one input projection, and nothing is
    gathered or flipped: every step is a matmul on a prefix of a neighbouring block.
    """

    @staticmethod
    def forward(
        ctx, x, w_ih, w_hh, b_ih, b_hh, steps: tuple[int, ...], relu: bool, directions: int, merge: bool
    ):
        starts, _, _ = _schedule(steps)
        scale = 1.0 if relu else 2.0  # tanh runs on 2a (sigmoid domain)
        row_sum = w_hh.sum(1)
        bias = (b_ih + b_hh) * scale
        if not relu:
            bias = bias - 2.0 * row_sum  # the -2 W_hh 1 of every step but the first
        projection = _linear(x, w_ih * scale, bias)  # (T, H): once, read by both directions
        # The states of each direction (T, H), computed in place: the forward one in the projection
        # itself, the backward one in a copy (large fresh buffers cost page faults: as few as can be).
        h = [projection] if directions == 1 else [projection.clone(), projection]
        activation = torch.relu_ if relu else torch.sigmoid_
        w_step = w_hh if relu else 4.0 * w_hh
        first_step = 2.0 * row_sum  # tanh: a sequence's first step has no previous state
        for s, (start, rows) in enumerate(zip(starts, steps, strict=True)):
            block = h[0][start : start + rows]
            if s == 0:
                if not relu:
                    block.add_(first_step)
            else:
                _accumulate(block, h[0][starts[s - 1] : starts[s - 1] + rows], w_step)
            activation(block)
        if directions == 2:
            for s in range(len(steps) - 1, -1, -1):
                start, rows = starts[s], steps[s]
                block = h[1][start : start + rows]
                going_on = steps[s + 1] if s + 1 < len(steps) else 0  # rows whose sequence started later
                if going_on:
                    _accumulate(block[:going_on], h[1][starts[s + 1] : starts[s + 1] + going_on], w_step)
                if not relu and going_on < rows:
                    block[going_on:].add_(first_step)  # the sequences that start here (their last token)
                activation(block)
        if not relu:
            for states in h:
                states.mul_(2.0).sub_(1.0)  # u -> h = 2u - 1
        ctx.save_for_backward(x, w_ih, w_hh, *h)
        ctx.steps, ctx.relu, ctx.merge = steps, relu, merge
        if merge:
            return h[0] + h[1] if directions == 2 else h[0]
        return torch.stack(h)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, w_ih, w_hh, *h = ctx.saved_tensors
        steps, relu, H = ctx.steps, ctx.relu, w_hh.shape[0]
        starts, forward_pairs, backward_pairs = _schedule(steps)
        # d loss / d pre-activation of every state of each direction (T, H), computed in place
        da = [
            (grad if ctx.merge else grad[d]).clone(memory_format=torch.contiguous_format)
            for d in range(len(h))
        ]
        # act' of one block at a time, in one small buffer (a whole-sequence one would be a large fresh
        # allocation, whose page faults cost more than the extra call per step)
        deriv = h[0].new_empty(steps[0], H)
        one = h[0].new_ones(())

        def times_deriv(d: int, start: int, rows: int) -> None:
            states, out = h[d][start : start + rows], deriv[:rows]
            if relu:
                torch.sign(states, out=out)  # relu states are >= 0: sign is the step function's 0 / 1
            else:
                torch.addcmul(one, states, states, value=-1, out=out)  # tanh' = 1 - h^2
            da[d][start : start + rows].mul_(out)

        w_hh_t = w_hh.t().contiguous()
        for s in range(len(steps) - 1, -1, -1):  # forward direction: from the last step back
            start, rows = starts[s], steps[s]
            times_deriv(0, start, rows)
            if s:
                previous = da[0][starts[s - 1] : starts[s - 1] + rows]
                _accumulate(previous, da[0][start : start + rows], w_hh_t)
        if len(h) == 2:
            for s in range(len(steps)):  # backward direction: its last step is the first block
                start, rows = starts[s], steps[s]
                times_deriv(1, start, rows)
                going_on = steps[s + 1] if s + 1 < len(steps) else 0
                if going_on:
                    later = da[1][starts[s + 1] : starts[s + 1] + going_on]
                    _accumulate(later, da[1][start : start + going_on], w_hh_t)
        grad_w_hh = w_hh.new_zeros(H, H)
        for d, pairs in enumerate((forward_pairs, backward_pairs)[: len(h)]):
            for state, following, rows in pairs:  # h[previous] pairs with da[next]; h = 0 before
                grad_w_hh.addmm_(da[d][following : following + rows].t(), h[d][state : state + rows])
        da_projection = da[0].add_(da[1]) if len(h) == 2 else da[0]
        grad_b = da_projection.sum(0)
        grad_w_ih = da_projection.t().mm(x)
        grad_x = _linear(da_projection, w_ih.t().contiguous()) if ctx.needs_input_grad[0] else None
        return grad_x, grad_w_ih, grad_w_hh, grad_b, grad_b.clone(), None, None, None, None


FAST_RNN_OP = f"prim::PythonOp.{_VanillaRNNFunction.__name__}"
"""The name of the fast op in a traced graph (fvcore's naming), for :mod:`crnn.complexity`."""
