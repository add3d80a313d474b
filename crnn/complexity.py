"""Complexity accounting for crnn models: the one place where parameters and MACs are counted.

Convention (MACs)
-----------------
A MAC is one multiply-accumulate **with a weight-like operand of a matrix product or a
convolution**: one per weight use per output position. Concretely, for each op in the traced graph

* convolution: ``B * prod(weight.shape) * prod(out_spatial)`` (groups and transposed convs included);
* ``linear`` / ``mm`` / ``matmul`` / ``bmm`` / ``addmm`` / ``mv`` / ``dot`` ...: output elements times
  the contracted length;
* fused RNNs (``aten::rnn_tanh``, ``aten::rnn_relu``, ``aten::gru``, ``aten::lstm``, also their
  ``*_cell`` forms): for every token, every weight matrix of every layer and direction is used
  once: ``tokens * sum(numel of the 2-D weights)``, i.e. ``L*N*D*g*H*(I + H)`` for one layer
  (``g`` = 1, 3, 4 gates); the recurrent product at the first step counts like any other;
* crnn's fast vanilla-RNN op (``prim::PythonOp._VanillaRNNFunction``, seen when a trace runs with
  ``crnn.layers.rnn_path("fast")``; by default a trace takes ``nn.RNN``): as the fused op it replaces;
  a separable layer's packed passes over several maps (``prim::PythonOp._PackedPasses``,
  ``forward_levels``): as its two passes over every map;
* ``aten::addcmul`` (``out = a + b * c``): one MAC per output element. Layers use it precisely
  where an elementwise product is a product with a *weight* (the per-channel recurrence of
  DS-RNN): addcmul is a multiply-add with a weight: counted; plain gate products are not.

Not counted: bias additions, activations, elementwise products (``mul``: gates), norms, pooling,
upsampling, reductions, softmax, data movement. fvcore's own handles for norms, pooling and
upsampling are turned off for that reason.

No silent undercount: after tracing, any op that has no handle here and is not in the explicit
allow-list of MAC-free ops (:data:`MAC_FREE_OPS`) makes :func:`count_macs` raise
:class:`UnsupportedOpError` naming it (e.g. ``aten::baddbmm``, ``aten::bilinear``, attention
kernels, any other custom ``torch.autograd.Function``: none of them is used by crnn's layers). To support
a new op, add a handle to :data:`MAC_HANDLES` (if it multiplies by weights) or its name to
:data:`MAC_FREE_OPS` (if it does not).

Counting runs in eval mode (restored afterwards) without autograd, on the inputs given: MACs
scale with the batch size of those inputs.

Layout of this module: shared helpers (:func:`counting_mode`), parameters, MACs (handles, op
lists, :func:`mac_analysis`, :func:`count_macs`), then memory and latency
(:func:`activation_memory`, :func:`cpu_latency`, :func:`module_table`; used by ``crnn-profile``;
their docstrings say exactly what is measured).
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

with warnings.catch_warnings():  # fvcore's import touches deprecated torch.jit APIs
    warnings.simplefilter("ignore")
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import einsum_flop_jit, get_shape

from crnn.layers.fast_rnn import FAST_RNN_OP
from crnn.layers.separable import PACKED_PASSES_OP

__all__ = [
    "MAC_FREE_OPS",
    "MAC_HANDLES",
    "UnsupportedOpError",
    "activation_memory",
    "count_macs",
    "count_params",
    "counting_mode",
    "cpu_latency",
    "mac_analysis",
    "module_table",
]


# ----------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def counting_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no autograd for the duration; every submodule's mode is restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for m, training in modes:
            m.training = training


# ----------------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------------


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters once)."""
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# MACs
# ----------------------------------------------------------------------------------------------


class UnsupportedOpError(ValueError):
    """The traced model ran an op whose MACs are unknown (no handle, not known to be MAC-free)."""


Handle = Callable[[list[Any], list[Any]], int]


def _shape(value: Any) -> list[int]:
    shape = get_shape(value)
    if shape is None:
        raise UnsupportedOpError(f"cannot count MACs: a tensor of unknown shape ({value.debugName()})")
    return list(shape)


def _contraction_macs(a_index: int) -> Handle:
    """Output elements x contracted length (last dim of operand ``a_index``): mm, matmul, addmm, ..."""

    def handle(inputs: list[Any], outputs: list[Any]) -> int:
        return math.prod(_shape(outputs[0])) * _shape(inputs[a_index])[-1]

    return handle


def _linear_macs(inputs: list[Any], outputs: list[Any]) -> int:
    # aten::linear(input, weight (out, in), bias)
    return math.prod(_shape(outputs[0])) * _shape(inputs[1])[-1]


def _conv_macs(transposed_index: int | None, transposed: bool = False) -> Handle:
    """``B * prod(weight) * prod(spatial)``; spatial of the output (of the input if transposed)."""

    def handle(inputs: list[Any], outputs: list[Any]) -> int:
        x, w, y = _shape(inputs[0]), _shape(inputs[1]), _shape(outputs[0])
        is_t = inputs[transposed_index].toIValue() if transposed_index is not None else transposed
        spatial = (x if is_t else y)[2:]
        return x[0] * math.prod(w) * math.prod(spatial)

    return handle


def _einsum_macs(inputs: list[Any], outputs: list[Any]) -> int:
    # aten::einsum(equation, Tensor[] operands, path): for two operands every combination of
    # indices is one MAC; more operands: fvcore's estimate from numpy's contraction path
    equation = inputs[0].toIValue().replace(" ", "")
    operands = list(inputs[1].node().inputs())
    lhs = equation.split("->")[0].split(",")
    if len(operands) == 2 and "." not in equation:
        sizes: dict[str, int] = {}
        for letters, op in zip(lhs, operands, strict=True):
            sizes.update(zip(letters, _shape(op), strict=True))
        return math.prod(sizes.values())
    return int(einsum_flop_jit(inputs, outputs))


def _fused_rnn_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """aten::{rnn_tanh,rnn_relu,gru,lstm}: tokens x (sum of numel of every 2-D weight).

    ``.input`` overload: ``(input, hx, params, has_biases, ...)``, tokens = prod(input.shape[:-1]);
    ``.data`` overload (PackedSequence): ``(data, batch_sizes, hx, params, ...)``, tokens = data.shape[0].
    """
    packed = str(inputs[3].type()) == "List[Tensor]"
    params = inputs[3 if packed else 2]
    if params.node().kind() != "prim::ListConstruct":
        raise UnsupportedOpError(f"cannot read the RNN weights of {params.node().kind()}")
    x = _shape(inputs[0])
    tokens = x[0] if packed else math.prod(x[:-1])
    weights = [_shape(p) for p in params.node().inputs()]
    return tokens * sum(math.prod(s) for s in weights if len(s) == 2)  # biases are 1-D


def _fast_rnn_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """crnn's fast vanilla RNN (:mod:`crnn.layers.fast_rnn`, traced as a ``prim::PythonOp``), counted
    like the fused op it replaces: tokens x directions x (numel W_ih + numel W_hh). A weight-shared
    pass projects its input once and reads it both ways, but counts as two directions, so the count
    does not depend on the path (and equals the closed forms).

    Inputs ``(x (T, I), W_ih, W_hh, b_ih, b_hh)``; scalar arguments ``(steps, relu, directions, merge,
    implementation)``: ``sum(steps)`` tokens.
    """
    w_ih, w_hh = (_shape(v) for v in inputs[1:3])
    steps, _, directions = outputs[0].node().scalar_args()[:3]
    return directions * sum(steps) * (math.prod(w_ih) + math.prod(w_hh))


def _packed_passes_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """A separable layer over several maps on the fast path (:mod:`crnn.layers.separable`, one
    ``prim::PythonOp``), counted like :func:`_fast_rnn_macs`: every pixel of every map is a token of the
    row pass and of the column pass, so pixels x directions x numel of the two passes' weight matrices
    (each map's closed form, summed).

    Inputs ``(*indices (1-D), *maps (B_k, C, H_k, W_k), row W_ih, W_hh, b_ih, b_hh, column W_ih, W_hh,
    b_ih, b_hh)``; scalar arguments ``(steps, implementations, directions, relu)``.
    """
    *leading, row_ih, row_hh, _, _, col_ih, col_hh, _, _ = (_shape(v) for v in inputs)
    maps = [shape for shape in leading if len(shape) == 4]  # not the layout's 1-D indices before them
    directions = outputs[0].node().scalar_args()[2]
    pixels = sum(b * h * w for b, _, h, w in maps)
    return directions * pixels * sum(math.prod(w) for w in (row_ih, row_hh, col_ih, col_hh))


def _rnn_cell_macs(inputs: list[Any], outputs: list[Any]) -> int:
    # aten::{rnn_tanh,rnn_relu,gru,lstm}_cell(input, hx, w_ih, w_hh, b_ih, b_hh)
    tokens = math.prod(_shape(inputs[0])[:-1])
    return tokens * (math.prod(_shape(inputs[2])) + math.prod(_shape(inputs[3])))


def _elementwise_macs(inputs: list[Any], outputs: list[Any]) -> int:
    return math.prod(_shape(outputs[0]))


MAC_HANDLES: dict[str, Handle] = {
    "aten::_convolution": _conv_macs(6),
    "aten::convolution": _conv_macs(6),
    "aten::conv1d": _conv_macs(None),
    "aten::conv2d": _conv_macs(None),
    "aten::conv3d": _conv_macs(None),
    "aten::conv_transpose1d": _conv_macs(None, transposed=True),
    "aten::conv_transpose2d": _conv_macs(None, transposed=True),
    "aten::conv_transpose3d": _conv_macs(None, transposed=True),
    "aten::linear": _linear_macs,
    "aten::mm": _contraction_macs(0),
    "aten::matmul": _contraction_macs(0),
    "aten::bmm": _contraction_macs(0),
    "aten::mv": _contraction_macs(0),
    "aten::dot": _contraction_macs(0),
    "aten::addmm": _contraction_macs(1),
    "aten::addmv": _contraction_macs(1),
    "aten::einsum": _einsum_macs,
    "aten::rnn_tanh": _fused_rnn_macs,
    "aten::rnn_relu": _fused_rnn_macs,
    "aten::gru": _fused_rnn_macs,
    "aten::lstm": _fused_rnn_macs,
    FAST_RNN_OP: _fast_rnn_macs,
    PACKED_PASSES_OP: _packed_passes_macs,
    "aten::rnn_tanh_cell": _rnn_cell_macs,
    "aten::rnn_relu_cell": _rnn_cell_macs,
    "aten::gru_cell": _rnn_cell_macs,
    "aten::lstm_cell": _rnn_cell_macs,
    "aten::addcmul": _elementwise_macs,
    "aten::addcmul_": _elementwise_macs,
}
"""Ops that multiply by weights, and how many MACs each costs (see the module docstring)."""


def _with_inplace(names: set[str]) -> frozenset[str]:
    return frozenset(names | {n + "_" for n in names})


_MAC_FREE_NAMES = """
    batch_norm group_norm layer_norm instance_norm rms_norm
    max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d max_pool2d_with_indices
    adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d
    adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d
    upsample_nearest1d upsample_nearest2d upsample_nearest3d upsample_linear1d upsample_bilinear2d
    upsample_bicubic2d upsample_trilinear3d grid_sampler affine_grid_generator pixel_shuffle pixel_unshuffle

    tanh sigmoid relu6 hardtanh leaky_relu elu selu celu gelu silu mish hardswish hardsigmoid softplus
    softsign prelu glu softmax log_softmax logsigmoid threshold

    add sub rsub mul div neg abs exp log log1p sqrt rsqrt pow square reciprocal sign clamp_min clamp_max
    maximum minimum where lt le ne logical_and logical_or logical_not isnan isfinite round trunc ceil
    frac fmod lerp sin cos erf nan_to_num
    sum mean prod amax amin argmax argmin min std var norm linalg_vector_norm cumsum all any

    flip cat concat stack index_select index_add index_fill index_put scatter scatter_add masked_select
    masked_scatter take take_along_dim repeat repeat_interleave tile expand_as view_as reshape_as clone
    unfold movedim swapaxes flatten unflatten chunk unsafe_chunk unsafe_split tensor_split diagonal
    diag_embed pad reflection_pad1d reflection_pad2d replication_pad1d replication_pad2d circular_pad2d
    fill zero copy alias lift_fresh ones_like empty_like rand randn rand_like randn_like randint randperm
    bernoulli linspace meshgrid tril triu sort argsort topk bucketize searchsorted embedding one_hot
    feature_dropout alpha_dropout feature_alpha_dropout numel dim item tensor as_tensor scalar_tensor full
    _pack_padded_sequence _pad_packed_sequence
"""
# groups above: norms, pooling and resampling (not counted by convention); activations; elementwise
# arithmetic (bias adds, gate products, residuals) and reductions; data movement, shapes, creation,
# indexing and sampling

MAC_FREE_OPS: frozenset[str] = _with_inplace(
    {f"aten::{name}" for name in _MAC_FREE_NAMES.split()}
    | {f"torchvision::{name}" for name in ("nms", "roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool")}
)
"""Ops known to do no weight multiply-adds; every other op without a handle raises."""


def mac_analysis(model: nn.Module, *inputs: torch.Tensor) -> FlopCountAnalysis:
    """Trace ``model(*inputs)`` (eval mode, no grad) and return the analysed fvcore object.

    Use it for breakdowns (``.by_module()``, ``.by_operator()``); raises
    :class:`UnsupportedOpError` like :func:`count_macs`.
    """
    with counting_mode(model), warnings.catch_warnings(), _quiet_fvcore():
        warnings.simplefilter("ignore")
        analysis = FlopCountAnalysis(model, inputs)
        analysis.clear_op_handles()  # drops fvcore's norm / pooling / upsample counters too
        analysis.set_op_handle(**MAC_HANDLES)
        analysis.set_op_handle(**dict.fromkeys(MAC_FREE_OPS))  # None: explicitly MAC-free
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        analysis.total()  # runs the trace now, in eval mode
    unsupported: Counter[str] = analysis.unsupported_ops()
    if unsupported:
        ops = ", ".join(f"{op} (x{n})" for op, n in sorted(unsupported.items()))
        raise UnsupportedOpError(
            f"count_macs: no MAC handle for {ops} in {type(model).__name__}; add a handle to "
            "crnn.complexity.MAC_HANDLES if it multiplies by weights, or its name to MAC_FREE_OPS if not"
        )
    return analysis


def count_macs(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of ``model(*inputs)`` under the module's convention (whole batch)."""
    return int(mac_analysis(model, *inputs).total())


@contextlib.contextmanager
def _quiet_fvcore() -> Iterator[None]:
    logger = logging.getLogger("fvcore")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# ----------------------------------------------------------------------------------------------
# memory and latency (crnn-profile)
# ----------------------------------------------------------------------------------------------
#
# What the arena number means and how it is measured: :func:`activation_memory`; the latency
# protocol: :func:`cpu_latency`. Both run in :func:`counting_mode` (eval, no autograd).


def _storage_key(t: torch.Tensor) -> tuple[int, Any] | None:
    if not isinstance(t, torch.Tensor) or t.device.type == "meta":
        return None
    storage = t.untyped_storage()
    if storage.nbytes() == 0:
        return None
    return storage._cdata, storage


class _ArenaTracker(TorchDispatchMode):
    """Counts the bytes of live activation storages after every ATen op (see :func:`activation_memory`)."""

    def __init__(self, excluded: set[int]):
        super().__init__()
        self.excluded = excluded
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0
        self.peak_op = ""
        self.total_allocated = 0
        self.ops = 0

    def track(self, tensors: Sequence[Any]) -> int:
        """Register the storages of ``tensors`` (new ones only); returns the bytes added."""
        added = 0
        for t in tensors:
            key = _storage_key(t)
            if key is None or key[0] in self.excluded or key[0] in self.live:
                continue
            nbytes = key[1].nbytes()
            self.live[key[0]] = (StorageWeakRef(key[1]), nbytes)
            self.current += nbytes
            added += nbytes
        return added

    def collect(self) -> None:
        dead = [k for k, (ref, _) in self.live.items() if ref.expired()]
        for k in dead:
            self.current -= self.live.pop(k)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        self.collect()
        self.total_allocated += self.track(tree_flatten(out)[0])
        if self.current > self.peak:
            self.peak, self.peak_op = self.current, str(func.overloadpacket.__name__)
        return out


def activation_memory(model: nn.Module, *inputs: torch.Tensor) -> dict[str, Any]:
    """Peak bytes of activations alive at once during ``model(*inputs)``: the embedded "tensor
    arena" (run it on a batch of 1 for the per-image arena).

    How: one forward pass in eval mode under ``torch.no_grad()`` inside a
    :class:`~torch.utils._python_dispatch.TorchDispatchMode` that sees every ATen op the model
    runs, after autograd and after composite ops are decomposed (``linear`` -> ``t`` + ``addmm``;
    ``nn.RNN``/``GRU``/``LSTM`` -> per-step matmuls, the step outputs and their ``stack``, so
    recurrent layers are counted as that decomposition computes them). Every tensor an op returns
    is registered by its *storage* (views, in-place and ``out=`` results share their input's
    storage and are not counted again) with a weak reference to it
    (``torch.multiprocessing.reductions.StorageWeakRef``). Right after each op, storages whose
    last reference is gone are dropped and the bytes of those still alive are summed; the peak is
    the largest sum over the pass. At that moment the op's inputs are still alive (it reads them)
    and its outputs are allocated: what a memory planner must provide for the op to run.

    * Included: the input tensor(s) (alive from the start: the caller holds them), every
      intermediate activation, tensors created inside ``forward`` (initial hidden states, index
      tensors), the output.
    * Excluded: parameters and buffers (on a microcontroller they live in flash / a separate
      region) and views of them (e.g. the transposed weight of a ``linear``).
    * Not visible: scratch memory inside a kernel (im2col, oneDNN workspaces), allocator padding
      and fragmentation. So this is the liveness peak of the eager op sequence: a runtime that frees
      each tensor after its last use and packs the arena perfectly needs this much; a real planner
      may need a little more (alignment, fragmentation) or less (a fused kernel, another op order).

    Returns ``peak_bytes``, ``input_bytes``, ``output_bytes``, ``param_bytes`` (parameters +
    buffers, for reference), ``total_bytes`` (every activation ever allocated: an arena without
    reuse), ``peak_op`` (the ATen op after which the peak was reached) and ``ops`` (ATen ops run).
    """
    weights = [*model.parameters(), *model.buffers()]
    excluded = {k[0] for k in map(_storage_key, weights) if k is not None}
    param_bytes = sum({k[0]: k[1].nbytes() for k in map(_storage_key, weights) if k is not None}.values())
    with counting_mode(model):
        tracker = _ArenaTracker(excluded)
        input_bytes = tracker.track(list(inputs))
        tracker.peak = tracker.current
        with tracker:
            out = model(*inputs)
        tracker.collect()
        out_tensors = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        output_bytes = sum(t.untyped_storage().nbytes() for t in out_tensors)
    return {
        "peak_bytes": int(tracker.peak),
        "input_bytes": int(input_bytes),
        "output_bytes": int(output_bytes),
        "param_bytes": int(param_bytes),
        "total_bytes": int(tracker.total_allocated + input_bytes),
        "peak_op": tracker.peak_op,
        "ops": tracker.ops,
    }


def cpu_latency(
    model: nn.Module, *inputs: torch.Tensor, repeats: int = 50, warmup: int = 10, threads: int = 1
) -> dict[str, Any]:
    """Wall-clock time of ``model(*inputs)`` on the CPU: median (and min, mean, p90) of
    ``repeats`` timed calls (``time.perf_counter``) after ``warmup`` untimed ones, in eval mode
    without autograd, with ``torch.set_num_threads(threads)`` (the process setting is restored
    afterwards). The inputs' device is used as is (pass CPU tensors and a CPU model)."""
    if repeats < 1 or warmup < 0 or threads < 1:
        raise ValueError(
            f"cpu_latency: need repeats >= 1, warmup >= 0, threads >= 1 (got {repeats}, {warmup}, {threads})"
        )
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    times: list[float] = []
    try:
        with counting_mode(model):
            for _ in range(warmup):
                model(*inputs)
            for _ in range(repeats):
                start = time.perf_counter()
                model(*inputs)
                times.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(previous)
    ordered = sorted(times)
    return {
        "median_ms": statistics.median(times),
        "mean_ms": statistics.fmean(times),
        "min_ms": ordered[0],
        "p90_ms": ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))],
        "repeats": repeats,
        "warmup": warmup,
        "threads": threads,
    }


def _shapes(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, (tuple, list)):
        return [_shapes(v) for v in value]
    if isinstance(value, dict):
        return {k: _shapes(v) for k, v in value.items()}
    return None


def module_table(model: nn.Module, *inputs: torch.Tensor, analysis=None) -> list[dict[str, Any]]:
    """One row per module (``named_modules`` order, the model itself first as ``""``): ``name``,
    ``type``, ``depth`` (0 for the model), ``params`` (its parameters, submodules included),
    ``macs`` (fvcore ``by_module()`` of :func:`crnn.complexity.mac_analysis`, submodules
    included; a module called twice counts twice), ``output_shape`` (of its first call; ``None``
    if it was not called) and ``calls``."""
    analysis = analysis if analysis is not None else mac_analysis(model, *inputs)
    by_module = analysis.by_module()
    outputs: dict[str, Any] = {}
    calls: dict[str, int] = {}
    handles = []

    def hook(name: str):
        def record(module, args, output):
            calls[name] = calls.get(name, 0) + 1
            outputs.setdefault(name, _shapes(output))

        return record

    for name, module in model.named_modules():
        handles.append(module.register_forward_hook(hook(name)))
    try:
        with counting_mode(model):
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    rows = []
    for name, module in model.named_modules():
        rows.append(
            {
                "name": name,
                "type": type(module).__name__,
                "depth": 0 if name == "" else name.count(".") + 1,
                "params": sum(p.numel() for p in module.parameters()),
                "macs": int(by_module.get(name, 0)),
                "output_shape": outputs.get(name),
                "calls": calls.get(name, 0),
            }
        )
    return rows
