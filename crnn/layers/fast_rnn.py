"""A fast CPU path for one-layer vanilla RNNs (``rnn_tanh``, ``rnn_relu``), exact to ``nn.RNN``.

PyTorch's CPU ``nn.RNN`` runs every step as its own autograd-recorded ``linear`` + activation, and
its tanh is slow on this build (torch 2.14, one (2048, 64) float32 tensor, 1 thread: ``tanh_``
~950 us, ``sigmoid_`` ~120 us, the step's matmul ~500 us). This path
(:class:`_VanillaRNNFunction`, a ``torch.autograd.Function``), every choice kept by measurement
(``scripts/bench_layers.py`` shows it beside ``nn.RNN``):

* the input projection ``x W_ih^T + b_ih + b_hh`` is ONE matmul over all steps; in a weight-shared
  bidirectional pass (the sequence and its reverse through the same weights) it is computed once
  and read forwards and backwards: half the input-projection FLOPs of the reversed copy;
* per step one fused matmul + add (oneDNN's ``_linear_pointwise.binary`` for float32, about 1.4x
  MKL's ``addmm_`` on the dev machine's AMD EPYC, where MKL takes its AVX2 path; the large
  matmuls 2x; MKL's ``addmm`` for products below ``_ONEDNN_MIN_MACS``, such as the detection
  towers' small pyramid levels, where oneDNN's fixed cost per call dominates) and one in-place
  activation, each step's state a new tensor, all stacked once (this
  beat ``addmm_`` in place into a preallocated buffer); no per-step autograd nodes;
* tanh runs in the sigmoid domain: with ``u_t = sigmoid(2 a_t)`` (``a_t`` the pre-activation),
  ``h_t = tanh(a_t) = 2 u_t - 1`` and ``2 a_{t+1} = 2 P_{t+1} - 2 W_hh 1 + 4 W_hh u_t``, so a step
  is a matmul with ``4 W_hh`` + ``sigmoid_``, and ``h = 2u - 1`` is formed once at the end;
* backward runs the per-step recurrence of the pre-activation gradients (one fused matmul + add
  and one multiply by the activation's derivative per step), then computes the gradients of
  ``W_hh``, ``W_ih``, the biases and the input as one large matmul (or sum) each over all steps.

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
import os
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = [
    "FAST_RNN_OP",
    "RNN_PATHS",
    "fast_rnn_directions",
    "get_rnn_path",
    "rnn_path",
    "run_rnn",
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
        return _VanillaRNNFunction.apply(x, *_weights(rnn), rnn.mode == "RNN_RELU", _ONE_WAY)
    return _native(rnn, x)


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
    """The weight-shared bidirectional pass: ``rnn`` over ``x (L, N, I)`` and over ``x.flip(0)``.

    ``merge=False``: ``(L, 2N, H)``, equal to ``rnn(torch.cat([x, x.flip(0)], 1))[0]`` (the reversed
    pass's states in its reading order, in ``[:, N:]``). ``merge=True``: ``(L, N, H)``, the forward
    states plus the reversed pass's states flipped back into place (the WS-BiRNN output).
    """
    if uses_fast_path(rnn, x):
        relu = rnn.mode == "RNN_RELU"
        if merge:
            return _VanillaRNNFunction.apply(x, *_weights(rnn), relu, _MERGED)
        # unbind, not pair[0] / pair[1]: its backward is one stack, a select's a zero-filled copy each
        forward, backward = _VanillaRNNFunction.apply(x, *_weights(rnn), relu, _PAIR).unbind(0)
        return torch.cat([forward, backward.flip(0)], dim=1)
    n = x.shape[1]
    y = _native(rnn, torch.cat([x, x.flip(0)], dim=1))
    if not merge:
        return y
    # unbind, not y[:, :n] / y[:, n:]: its backward is one stack, a slice's is a zero-filled copy each
    forward, backward = y.view(y.shape[0], 2, n, y.shape[-1]).unbind(1)
    return forward + backward.flip(0)


_ONE_WAY, _PAIR, _MERGED = 0, 1, 2
"""Outputs of :class:`_VanillaRNNFunction`: one direction; both directions; both, summed."""


def fast_rnn_directions(out: int) -> int:
    """Directions run by the fast op called with ``out`` (its last argument): 1 or 2."""
    return 1 if out == _ONE_WAY else 2


def _weights(rnn: nn.RNNBase) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0


_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
"""oneDNN's fp32 matmul (the op inductor uses for ``linear``), on dense tensors: about 2x the GFLOP/s
of ``torch.mm`` (MKL) for the tall-skinny products here on the dev machine (AMD EPYC, where MKL
takes its AVX2 path). float64 and builds without oneDNN use ``torch.mm``."""

_ONEDNN_MIN_MACS = 384 * 64 * 64
"""Below this many multiply-adds a oneDNN call's fixed cost (15-60 us a call on the dev machine, 1
thread, depending on its load) outweighs its speed. ``(M, 64) @ (64, 64)`` + add, medians of
interleaved rounds, oneDNN vs MKL ``addmm`` (quiet machine): M=64 17 vs 8 us, 128 20 vs 14, 256 25
vs 25, 384 30 vs 35, 512 34 vs 47, 1024 56 vs 94. The detection towers' per-step products (16 x 4..16
rows) are this small: an FCOS training step with sws_birnn towers on synthetic_shapes took 0.189 s
with this threshold vs 0.210 s with oneDNN always (scripts/bench_towers.py's models, interleaved)."""


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


def _step(base: Tensor, x: Tensor, w: Tensor) -> Tensor:
    """A new ``base + x (M, K) @ w (N, K)^T`` (one fused oneDNN call for large float32 products)."""
    if _onednn(x, w):
        return torch.ops.mkldnn._linear_pointwise.binary(x, base, w, None, "add")
    return torch.addmm(base, x, w.t())


def _recurrence(p: Tensor, first: Tensor, w_hh: Tensor, relu: bool, reverse: bool, out: Tensor) -> None:
    """The forward recurrence over ``p (L, M, H)`` (input projections; ``first``: the first step's
    replacement), read from t = 0 up (``reverse``: from L-1 down), states written to ``out (L, M, H)``
    in sequence-position order: each step one new tensor, all stacked once at the end.

    relu: ``h_t = relu(p[t] + h_prev W_hh^T)``. tanh: ``p`` holds ``2 * projection - 2 W_hh 1``,
    ``first`` is ``2 * projection`` at the first step and the states are ``u_t = sigmoid(2 a_t)``
    (``w_hh`` is then passed as ``4 W_hh``: scaling by 4 is exact).
    """
    activation = torch.relu_ if relu else torch.sigmoid_
    order = range(p.shape[0] - 1, -1, -1) if reverse else range(p.shape[0])
    states = [activation(first)]
    for t in list(order)[1:]:
        states.append(activation(_step(p[t], states[-1], w_hh)))
    torch.stack(states[::-1] if reverse else states, out=out)


def _recurrence_grad(grad: Tensor, h: Tensor, w_hh: Tensor, relu: bool, reverse: bool, out: Tensor) -> None:
    """The pre-activation gradients ``da[t] = (grad[t] + da[next] W_hh) * act'(h[t])``, from the
    last step read back to the first, written to ``out (L, M, H)``; ``act'`` is formed per step in
    one small buffer (a whole sequence's would be a large fresh allocation, whose page faults cost
    more on this machine)."""
    deriv = torch.empty_like(h[0])
    one = h.new_ones(())
    w_hh_t = w_hh.t().contiguous()
    order = range(h.shape[0]) if reverse else range(h.shape[0] - 1, -1, -1)
    da: list[Tensor] = []
    for t in order:
        da.append(_step(grad[t], da[-1], w_hh_t) if da else grad[t].clone())
        if relu:
            torch.sign(h[t], out=deriv)  # relu states are >= 0: sign is the step function's 0 / 1
        else:
            torch.addcmul(one, h[t], h[t], value=-1, out=deriv)  # tanh' = 1 - h^2
        da[-1].mul_(deriv)
    torch.stack(da if reverse else da[::-1], out=out)


class _VanillaRNNFunction(torch.autograd.Function):
    """``(x (L, N, I), W_ih, W_hh, b_ih, b_hh, relu, out) -> states``.

    ``out=_ONE_WAY``: one direction, ``(L, N, H)``. ``_PAIR``: the sequence and its reverse through
    the shared weights, ``(2, L, N, H)``, both indexed by sequence position (``[1, t]`` is the
    reversed pass's state after reading ``x[L-1] ... x[t]``): both read the one projection, and no
    flip is ever copied. ``_MERGED``: the two summed, ``(L, N, H)``.
    """

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh, relu: bool, out: int):
        L, N, In = x.shape
        H = w_hh.shape[0]
        scale = 1.0 if relu else 2.0  # tanh runs on 2a (sigmoid domain)
        row_sum = w_hh.sum(1)
        bias = (b_ih + b_hh) * scale
        if not relu:
            bias = bias - 2.0 * row_sum  # the -2 W_hh 1 of every step but the first
        x_flat = x.reshape(L * N, In)
        proj = _linear(x_flat, w_ih * scale, bias).view(L, N, H)  # scale 1 or 2: exact
        w_step = w_hh if relu else 4.0 * w_hh
        directions = (False,) if out == _ONE_WAY else (False, True)
        h = proj.new_empty(len(directions), L, N, H)
        for d, reverse in enumerate(directions):
            start = proj[-1 if reverse else 0]
            first = start.clone() if relu else start + 2.0 * row_sum
            _recurrence(proj, first, w_step, relu, reverse, out=h[d])
        if not relu:
            h.mul_(2.0).sub_(1.0)  # u -> h = 2u - 1, in place
        ctx.save_for_backward(x_flat, w_ih, w_hh, h)
        ctx.relu, ctx.out, ctx.x_shape = relu, out, x.shape
        if out == _ONE_WAY:
            return h[0]
        return h if out == _PAIR else h[0] + h[1]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x_flat, w_ih, w_hh, h = ctx.saved_tensors
        H = w_hh.shape[0]
        grad = grad.contiguous()
        da = torch.empty_like(h)
        grad_w_hh = w_hh.new_zeros(H, H)
        for d in range(len(h)):
            reverse = d == 1
            _recurrence_grad(grad[d] if ctx.out == _PAIR else grad, h[d], w_hh, ctx.relu, reverse, out=da[d])
            # h[prev] pairs with da[t]; the zero initial state adds nothing
            later, earlier = (da[d, :-1], h[d, 1:]) if reverse else (da[d, 1:], h[d, :-1])
            grad_w_hh.addmm_(later.reshape(-1, H).t(), earlier.reshape(-1, H))
        dproj = (da[0] + da[1] if len(da) == 2 else da[0]).view(-1, H)
        grad_b = dproj.sum(0)
        grad_w_ih = dproj.t().mm(x_flat)
        grad_x = _linear(dproj, w_ih.t().contiguous()).view(ctx.x_shape) if ctx.needs_input_grad[0] else None
        return grad_x, grad_w_ih, grad_w_hh, grad_b, grad_b.clone(), None, None


FAST_RNN_OP = f"prim::PythonOp.{_VanillaRNNFunction.__name__}"
"""The name of the fast op in a traced graph (fvcore's naming), for :mod:`crnn.complexity`."""
