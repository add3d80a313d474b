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
* a pass (every step, both directions of a weight-shared pass) and its backward are one call each,
  of one of two implementations with the same two functions:

  - **compiled** (``csrc/rnn_steps.cpp``; float32, AVX-512 or AVX2, widths multiples of 16; built
    by gcc on first use, :func:`compiled_kernel`): a step ``h = act(x W_ih^T + b + h_prev W_hh^T)``
    is one register-tiled kernel call on a block of rows (6 rows x 64 columns of accumulators with
    AVX-512, 6 x 16 with AVX2), input projection, recurrent product and activation fused: ~210
    GFLOP/s on one Zen 5 core (AVX-512) where MKL's ``addmm_`` runs the same (448, 64) @ (64, 64)
    product at ~90 and oneDNN at 65-90 (their fixed cost per call dominates at this size); ~50 on
    one Zen 3 core (AVX2), where a large MKL matmul reaches ~57. tanh is computed in registers, as
    ``m / (m + 2)`` with ``m = expm1(2|x|)`` from Cephes' ``expf`` reduction (~2 ulp; a forward pass
    ~5% faster than ``1 - 2 / (exp(2|x|) + 1)`` with a Taylor series near 0). On two or more threads
    the directions of a weight-shared pass run at once, one per thread; on one, direction 0 computes
    the input projection in its steps for both and leaves it in direction 1's states, which
    direction 1 overwrites in place.
    The backward fuses the activation's derivative into the recurrent product and accumulates the
    ``W_hh`` gradient block by block while the blocks are in cache; the ``W_ih``, bias and input
    gradients follow block by block (on one thread as soon as the last direction has passed a block:
    one pass over memory, sws_birnn's tower layer ~3% faster than three passes after both directions).
    The tokens may read their inputs through an index (a permutation of the input rows) and the
    summed states go out in any layout of elements (the implementations' ``x_index`` and
    ``out_offset, out_stride``): a gather and a scatter fused into the pass (rows moved as rows, 8
    neighbouring pixels of a strided layout as 8x8 blocks transposed in registers), with which the
    2-D layers' packed node (:class:`~crnn.layers.separable._PackedPasses`: both passes and their
    backward, one autograd node) hands the row pass's states to the column pass in its order and
    writes NCHW maps;
  - **torch** (:class:`_TorchPass`, the reference: float64, any width, any device, and the fallback
    where the compiled one cannot build): the projection is one matmul; per step one matmul
    accumulated in place (oneDNN's ``_linear_pointwise`` + ``add_`` for float32 products of at
    least ``_ONEDNN_MIN_MACS``, MKL's ``addmm_`` below) and one in-place activation, tanh in the
    sigmoid domain (``torch.tanh`` is slow on this build: with ``u_t = sigmoid(2 a_t)``,
    ``h_t = 2 u_t - 1`` and ``2 a_{t+1} = 2 P_{t+1} - 2 W_hh 1 + 4 W_hh u_t``); the backward runs
    the per-step recurrence of the pre-activation gradients, then the weight, bias and input
    gradients as one large matmul (or sum) each.

  No per-step autograd nodes in either. ``rnn_kernel`` or ``CRNN_RNN_KERNEL`` picks: ``auto``
  (compiled where it applies and builds), ``compiled`` (an error where it cannot run), ``torch``.

``torch.compile`` of the ``nn.RNN`` layer gave nothing (sws_birnn, B=128, C=64, 8x8: 51.8 ms
compiled vs 51.2 ms eager; the torch pass 27.7 ms).

In float64 (the torch pass) it equals ``nn.RNN`` to ~1e-15 (tests: 1e-10); in float32 both passes
equal it to float32 rounding. Second derivatives are not implemented: differentiating the backward
raises a clear error.

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
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = [
    "FAST_RNN_OP",
    "RNN_PATHS",
    "RNN_KERNELS",
    "compiled_kernel",
    "get_rnn_kernel",
    "get_rnn_path",
    "is_compiled",
    "pass_implementation",
    "rnn_kernel",
    "rnn_path",
    "run_rnn",
    "run_steps",
    "run_ws_birnn",
    "uses_fast_path",
]

RNN_PATHS = ("auto", "fast", "native")
RNN_KERNELS = ("auto", "compiled", "torch")


class _Setting:
    """A process-wide choice: the innermost ``with`` override, else ``$env``, else ``"auto"``."""

    def __init__(self, env: str, values: tuple[str, ...], context: str):
        self.env, self.values, self.context = env, values, context
        self.overrides: list[str] = []

    def get(self) -> str:
        value = self.overrides[-1] if self.overrides else os.environ.get(self.env, "auto")
        if value not in self.values:
            raise ValueError(f"{self.env}={value!r}: valid values are {', '.join(self.values)}")
        return value

    @contextlib.contextmanager
    def force(self, value: str) -> Iterator[None]:
        if value not in self.values:
            raise ValueError(f"{self.context}({value!r}): valid values are {', '.join(self.values)}")
        self.overrides.append(value)
        try:
            yield
        finally:
            self.overrides.pop()


_PATH = _Setting("CRNN_RNN_PATH", RNN_PATHS, "rnn_path")
_KERNEL = _Setting("CRNN_RNN_KERNEL", RNN_KERNELS, "rnn_kernel")


def get_rnn_path() -> str:
    """The path setting in force: the innermost :func:`rnn_path`, else ``$CRNN_RNN_PATH``, else auto."""
    return _PATH.get()


def rnn_path(path: str) -> contextlib.AbstractContextManager[None]:
    """Force the RNN path within the block: ``"auto"``, ``"fast"`` or ``"native"`` (``nn.RNN``)."""
    return _PATH.force(path)


def get_rnn_kernel() -> str:
    """The fast path's pass in force: the innermost :func:`rnn_kernel`, else ``$CRNN_RNN_KERNEL``,
    else auto."""
    return _KERNEL.get()


def rnn_kernel(kernel: str) -> contextlib.AbstractContextManager[None]:
    """Force the fast path's pass within the block: ``"auto"`` (compiled where it applies and
    builds), ``"compiled"`` (an error where it cannot run) or ``"torch"``."""
    return _KERNEL.force(kernel)


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
    """The fast path on the tokens ``x (T, I)``, sequences laid out step-major (block ``s``: the next
    ``steps[s]`` tokens, see :class:`_VanillaRNNFunction`), through the vanilla ``rnn``, zero initial
    state; ``directions=2``: also backwards with the same weights. ``merge``: the states summed over
    the directions, ``(T, H)``; else ``(directions, T, H)``."""
    implementation = pass_implementation(rnn, x)  # once: the backward runs the forward's
    args = (steps, rnn.mode == "RNN_RELU", directions, merge, implementation)
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


_KERNEL_SOURCE = Path(__file__).with_name("csrc") / "rnn_steps.cpp"
_log = logging.getLogger(__name__)


_ISA_FLAGS = {"AVX512": ["-mavx512f", "-mfma"], "AVX2": ["-mavx2", "-mfma"]}
"""The compiled pass's builds, by what ``torch.backends.cpu.get_cpu_capability()`` reports."""


@functools.cache
def compiled_kernel() -> tuple[ModuleType | None, str]:
    """The compiled pass (``csrc/rnn_steps.cpp``, float32; its AVX-512 or AVX2 build, whichever this CPU
    runs) and ``""``, or ``None`` and why it cannot run here. Built once per machine and instruction set
    by :func:`torch.utils.cpp_extension.load` (gcc and ninja, 30-80 s) into ``$TORCH_EXTENSIONS_DIR``
    (default ``~/.cache/torch_extensions``), then loaded from there."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in _ISA_FLAGS:
        return None, f"needs a CPU with AVX-512 or AVX2 (this one: {capability})"
    import ninja  # the build tool torch's extension builder runs, from PyPI

    torch_logger = logging.getLogger("torch.utils.cpp_extension")
    level, path = torch_logger.level, os.environ.get("PATH", "")
    torch_logger.setLevel(logging.ERROR)  # its CUDA-not-found notice: this extension is CPU code
    os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, path])
    try:
        from torch.utils import cpp_extension

        _log.info("loading crnn's compiled RNN pass, %s (built on a machine's first use) ...", capability)
        module = cpp_extension.load(
            f"crnn_rnn_steps_{capability.lower()}",
            [str(_KERNEL_SOURCE)],
            # at::parallel_for is OpenMP in torch
            extra_cflags=["-O3", *_ISA_FLAGS[capability], "-fopenmp"],
            extra_ldflags=["-fopenmp"],
        )
    except Exception as error:  # no compiler, no Python headers, ...: the torch pass runs instead
        reason = f"could not build {_KERNEL_SOURCE.name}: {type(error).__name__}: {error}"
        _log.warning("%s; the fast RNN path runs its torch pass (CRNN_RNN_KERNEL=torch hides this)", reason)
        return None, reason
    finally:
        torch_logger.setLevel(level)
        os.environ["PATH"] = path
    return module, ""


def is_compiled(implementation: Any) -> bool:
    """Whether a :func:`pass_implementation` is the compiled pass (which reads and writes any layout at
    no extra cost; the torch pass pays for every gather and scatter)."""
    return implementation is not _TorchPass


def pass_implementation(rnn: nn.RNNBase, x: Tensor) -> Any:
    """What runs the fast path's pass of ``rnn`` over inputs like ``x``: ``forward(x, x_index, w_ih,
    bias, w_hh, steps, relu, directions, merge, out_offset, out_stride) -> [states, merged]`` and
    ``backward(grad, grad_offset, grad_stride, states, x, x_index, w_ih, w_hh, steps, relu, need_grad_x)
    -> [grad_x, grad_w_ih, grad_w_hh, grad_bias]``. The compiled module (:func:`compiled_kernel`) for
    float32 CPU tensors where ``rnn``'s input and hidden widths are multiples of 16, outside tracing,
    where it builds (``rnn_kernel("compiled")``: an error where not); :class:`_TorchPass` otherwise and
    under ``rnn_kernel("torch")``."""
    kernel = get_rnn_kernel()
    if kernel == "torch":
        return _TorchPass
    hidden, width = rnn.weight_ih_l0.shape  # (hidden, input)
    if x.dtype != torch.float32 or x.device.type != "cpu" or hidden % 16 or width % 16:
        why = (
            f"float32 CPU tensors with input and hidden widths multiples of 16 only ({x.dtype} on "
            f"{x.device}, {width} -> {hidden})"
        )
    elif torch.jit.is_tracing():
        why = "not under tracing"
    else:
        module, why = compiled_kernel()
        if module is not None:
            return module
    if kernel == "compiled":
        raise RuntimeError(f"rnn_kernel('compiled'): {why}")
    return _TorchPass


class _TorchPass:
    """A pass in torch ops: the reference (float64, exact to ``nn.RNN``) and the fallback of the compiled
    one (``csrc/rnn_steps.cpp``), which has the same two functions.

    The input projection ``x W_ih^T + b`` is one matmul; tanh runs in the sigmoid domain
    (``torch.tanh`` is slow on this build): with ``u_t = sigmoid(2 a_t)`` (``a_t`` the pre-activation),
    ``h_t = 2 u_t - 1`` and ``2 a_{t+1} = 2 P_{t+1} - 2 W_hh 1 + 4 W_hh u_t``, so a step is a matmul with
    ``4 W_hh`` + ``sigmoid_``, and ``h = 2u - 1`` is formed once at the end. The gradients of ``W_hh``
    (one matmul per run of equal block sizes), ``W_ih``, the bias and ``x`` are one matmul (or sum) each.
    """

    @staticmethod
    def forward(
        x: Tensor,
        x_index: Tensor | None,
        w_ih: Tensor,
        bias: Tensor,
        w_hh: Tensor,
        steps: tuple[int, ...],
        relu: bool,
        directions: int,
        merge: bool,
        out_offset: Tensor | None,
        out_stride: Tensor | None,
    ) -> list[Tensor | None]:
        """``[states (directions, T, H), merged]`` of the pass over the tokens' rows of ``x`` (``x_index``
        picks them; else all, in order); ``merged`` (with ``merge``): the directions' sum, ``(T, H)``, or
        flat, channel ``c`` of token ``t`` at element ``out_offset[t] + c * out_stride[t]``."""
        if x_index is not None:
            x = x.index_select(0, x_index)
        scale = 1.0 if relu else 2.0  # tanh runs on 2a (sigmoid domain)
        row_sum = w_hh.sum(1)
        if not relu:
            bias = bias - row_sum  # the -2 W_hh 1 of every step but the first (x 2 below)
        start = _linear(x, w_ih * scale, bias * scale)  # (T, H): once, read by both directions
        # one copy per direction, computed in place (large fresh buffers cost page faults: few of them)
        states = start.expand(directions, *start.shape).clone() if directions == 2 else start.unsqueeze(0)
        matrix = (w_hh if relu else 4.0 * w_hh).t().contiguous()  # a step adds previous @ matrix
        first = None if relu else 2.0 * row_sum  # tanh: a sequence's first step has no previous state
        for d in range(directions):
            _forward_loop(states[d], matrix, steps, d == 1, relu, first)
        if not relu:
            states.mul_(2.0).sub_(1.0)  # u -> h = 2u - 1
        if not merge:
            return [states, None]
        merged = states[0] + states[1] if directions == 2 else states[0]
        if out_offset is None:
            return [states, merged]
        elements = _elements(out_offset, out_stride, merged.shape[1]).view(-1)
        return [states, merged.new_empty(merged.numel()).index_copy_(0, elements, merged.view(-1))]

    @staticmethod
    def backward(
        grad: Tensor,
        grad_offset: Tensor | None,
        grad_stride: Tensor | None,
        states: Tensor,
        x: Tensor,
        x_index: Tensor | None,
        w_ih: Tensor,
        w_hh: Tensor,
        steps: tuple[int, ...],
        relu: bool,
        need_grad_x: bool,
    ) -> list[Tensor | None]:
        """``[grad_x (or None), grad_w_ih, grad_w_hh, grad_bias]`` from ``grad``: the merged output's
        (``(T, H)``, or flat in the layout ``grad_offset``, ``grad_stride``), or ``(directions, T, H)``."""
        _, forward_pairs, backward_pairs = _schedule(tuple(steps))
        if grad_offset is not None:
            grad = grad[_elements(grad_offset, grad_stride, states.shape[2])]
        if grad.dim() == 2:  # the sum's gradient reaches every direction
            grad = grad.expand(len(states), *grad.shape)
        da = grad.clone(memory_format=torch.contiguous_format)  # d loss / d pre-activation, in place
        matrix = w_hh.contiguous()  # a step passes grad @ W_hh back
        for d in range(len(states)):
            _backward_loop(da[d], states[d], matrix, steps, d == 1, relu)
        grad_w_hh = w_hh.new_zeros(w_hh.shape)
        for d, pairs in enumerate((forward_pairs, backward_pairs)[: len(states)]):
            for state, following, rows in pairs:  # h[previous] pairs with da[next]; h = 0 before
                grad_w_hh.addmm_(da[d][following : following + rows].t(), states[d][state : state + rows])
        total = da[0].add_(da[1]) if len(da) == 2 else da[0]  # d loss / d projection
        tokens = x if x_index is None else x.index_select(0, x_index)
        grad_x = _linear(total, w_ih.t().contiguous()) if need_grad_x else None
        if grad_x is not None and x_index is not None:
            grad_x = x.new_zeros(x.shape).index_add_(0, x_index, grad_x)
        return [grad_x, total.t().mm(tokens), grad_w_hh, total.sum(0)]


def _elements(offset: Tensor, stride: Tensor, channels: int) -> Tensor:
    """``(T, channels)``: the element of every token's every channel in an output layout."""
    return offset[:, None] + torch.arange(channels, device=offset.device) * stride[:, None]


def _forward_loop(
    states: Tensor, matrix: Tensor, steps: tuple[int, ...], reverse: bool, relu: bool, first: Tensor | None
) -> None:
    """One direction of the recurrence over the step-major ``states (T, H)``, in place.

    On entry ``states`` holds the step inputs, on exit the activated states. A step adds
    ``previous @ matrix`` to a block and applies relu or sigmoid. Forward: block ``s`` reads the first
    ``steps[s]`` rows of block ``s - 1``. ``reverse``: the first ``steps[s + 1]`` rows of block ``s`` read
    block ``s + 1``; its other rows (the sequences whose last token is here) start their pass and get
    ``first`` (if given), as does block 0 going forward."""
    starts = _schedule(steps)[0]
    weight = matrix.t().contiguous()  # oneDNN takes the linear layer's (out, in) weight
    activation = torch.relu_ if relu else torch.sigmoid_
    for i in range(len(steps)):
        s = len(steps) - 1 - i if reverse else i
        block = states[starts[s] : starts[s] + steps[s]]
        fed = _fed_rows(steps, s, reverse)  # rows of the block that continue a sequence
        if fed:
            source = starts[s + 1] if reverse else starts[s - 1]
            _accumulate(block[:fed], states[source : source + fed], weight)
        if first is not None and fed < len(block):
            block[fed:].add_(first)
        activation(block)


def _backward_loop(
    grad: Tensor, states: Tensor, matrix: Tensor, steps: tuple[int, ...], reverse: bool, relu: bool
) -> None:
    """The backward of :func:`_forward_loop`, in place: ``grad (T, H)`` holds d loss / d states on entry
    and d loss / d pre-activation on exit; ``states`` are the returned states (tanh: ``h``, so
    ``tanh' = 1 - h^2``; relu: ``relu' = [h > 0]``); a step passes ``grad @ matrix`` back to the block
    it read."""
    starts = _schedule(steps)[0]
    weight = matrix.t().contiguous()
    # act' of one block at a time, in one small buffer (a whole-sequence one would be a large fresh
    # allocation, whose page faults cost more than the extra call per step)
    deriv = states.new_empty(steps[0], states.shape[1])
    one = states.new_ones(())
    for i in range(len(steps)):
        s = i if reverse else len(steps) - 1 - i
        start, rows = starts[s], steps[s]
        block, out = states[start : start + rows], deriv[:rows]
        if relu:
            torch.sign(block, out=out)  # relu states are >= 0: sign is the step function's 0 / 1
        else:
            torch.addcmul(one, block, block, value=-1, out=out)  # tanh' = 1 - h^2
        grad[start : start + rows].mul_(out)
        # the state this step read: block s - 1 going forward, block s + 1 in reverse
        fed = _fed_rows(steps, s, reverse)
        if fed:
            target = starts[s + 1] if reverse else starts[s - 1]
            _accumulate(grad[target : target + fed], grad[start : start + fed], weight)


def _fed_rows(steps: tuple[int, ...], s: int, reverse: bool) -> int:
    """How many rows of block ``s`` continue a sequence from the neighbouring block they read."""
    if reverse:
        return steps[s + 1] if s + 1 < len(steps) else 0
    return steps[s] if s else 0


def _pass_forward(
    implementation: Any,
    x: Tensor,
    x_index: Tensor | None,
    weights: Sequence[Tensor],
    steps: tuple[int, ...],
    relu: bool,
    directions: int,
    merge: bool,
    out_layout: tuple[Tensor | None, Tensor | None],
) -> list[Tensor]:
    """``[states, merged]`` of a pass (``implementation.forward``, see :func:`pass_implementation`) with an
    ``nn.RNN``'s ``weights = (W_ih, W_hh, b_ih, b_hh)``: the two biases act as their sum."""
    w_ih, w_hh, b_ih, b_hh = weights
    return implementation.forward(
        x, x_index, w_ih, b_ih + b_hh, w_hh, steps, relu, directions, merge, *out_layout
    )


def _pass_backward(
    implementation: Any, grad: Tensor, grad_layout: tuple[Tensor | None, Tensor | None], *args: Any
) -> list[Tensor | None]:
    """``[grad_x, grad W_ih, grad W_hh, grad b_ih, grad b_hh]`` of a pass: ``implementation.backward(grad,
    *grad_layout, *args)`` (``args``: its ``states, x, x_index, w_ih, w_hh, steps, relu, need_grad_x``),
    the two biases' gradients equal, each its own tensor (in-place clipping scales each once)."""
    grad_x, grad_w_ih, grad_w_hh, grad_b = implementation.backward(grad, *grad_layout, *args)
    return [grad_x, grad_w_ih, grad_w_hh, grad_b, grad_b.clone()]


class _VanillaRNNFunction(torch.autograd.Function):
    """``(x (T, I), W_ih, W_hh, b_ih, b_hh, steps, relu, directions, merge, implementation) -> states``.

    The tokens (the rows of ``x``) hold sequences in the *step-major* layout that ``steps`` describes:
    step ``s`` is the block of the next ``steps[s]`` rows, one token of every sequence at least
    ``s + 1`` long, the longer sequences first and in the same order in every block (so a block's
    first ``steps[s + 1]`` rows continue in the next block; ``steps`` never increases). ``(L, N)``
    sequence-first is this layout with ``steps = (N,) * L``; the 2-D layers lay several maps' rows or
    columns out this way.

    Every sequence runs through one vanilla RNN from a zero state: forwards, and with ``directions=2``
    also backwards with the same weights (a sequence's backward pass starts at its last token: in the
    block where it is a *suffix* row, the rows after the continuing prefix). The states are returned in
    the tokens' layout: ``(directions, T, H)``, or with ``merge`` summed over the directions,
    ``(T, H)``. Both directions read the one input projection, and nothing is flipped: every step is a
    product on a prefix of a neighbouring block. The pass runs compiled or in torch ops: ``implementation``,
    what :func:`pass_implementation` chose for the forward, also runs the backward.
    """

    @staticmethod
    def forward(
        ctx,
        x,
        w_ih,
        w_hh,
        b_ih,
        b_hh,
        steps: tuple[int, ...],
        relu: bool,
        directions: int,
        merge: bool,
        implementation: Any,
    ):
        weights = (w_ih, w_hh, b_ih, b_hh)
        states, merged = _pass_forward(
            implementation, x, None, weights, steps, relu, directions, merge, (None, None)
        )
        ctx.save_for_backward(x, w_ih, w_hh, states)
        ctx.steps, ctx.relu, ctx.implementation = steps, relu, implementation
        return merged if merge else states

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, w_ih, w_hh, states = ctx.saved_tensors
        args = (states, x, None, w_ih, w_hh, ctx.steps, ctx.relu, ctx.needs_input_grad[0])
        grads = _pass_backward(ctx.implementation, grad.contiguous(), (None, None), *args)
        return *grads, *(None,) * 5


FAST_RNN_OP = f"prim::PythonOp.{_VanillaRNNFunction.__name__}"
"""The name of the fast op in a traced graph (fvcore's naming), for :mod:`crnn.complexity`."""
