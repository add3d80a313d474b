"""Memory, latency and per-module profiles (scratch module: to be moved into crnn.complexity).

Peak activation memory (the embedded "tensor arena")
----------------------------------------------------
:func:`activation_memory` runs one forward pass in eval mode under ``torch.no_grad()`` inside a
:class:`~torch.utils._python_dispatch.TorchDispatchMode` that sees every ATen op the model runs
(after autograd and after composite ops such as ``rnn_tanh`` or ``linear`` are decomposed, so the
per-time-step tensors of a fused RNN are visible). For every tensor an op returns it registers the
tensor's *storage* (views, in-place results and ``out=`` results share their input's storage and
are not counted again) with a weak reference to the storage (``StorageWeakRef``). Right after
each op it drops the storages whose last reference is gone and sums the bytes of those still
alive; the **peak** is the largest such sum over the pass. At that moment the op's inputs are
still alive (the op is reading them) and its outputs are allocated, which is what a memory
planner must provide for the op to run.

* Included: the input tensor(s) (alive from the start, since the caller holds them, and counted
  from the first op), every intermediate activation, tensors created inside ``forward`` (initial
  hidden states, index tensors), the output.
* Excluded: parameters and buffers (weights live in flash / a separate region on a
  microcontroller) and any view of them (e.g. the transposed weight of a ``linear``).
* Not visible: scratch memory *inside* a kernel (im2col buffers, oneDNN workspaces), allocator
  padding/fragmentation. The number is the liveness peak of the eager op sequence: an embedded
  runtime that frees each tensor after its last use and packs the arena perfectly needs at least
  this much; a real planner may need a little more (alignment, fragmentation).

Latency
-------
:func:`cpu_latency`: eval mode, ``torch.no_grad()``, ``torch.set_num_threads(threads)`` (restored
after), ``warmup`` untimed calls, then the median of ``repeats`` timed calls (``perf_counter``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from crnn.complexity import counting_mode, mac_analysis

__all__ = ["activation_memory", "cpu_latency", "module_table"]


def _storage_key(t: torch.Tensor) -> tuple[int, Any] | None:
    if not isinstance(t, torch.Tensor) or t.device.type == "meta":
        return None
    storage = t.untyped_storage()
    if storage.nbytes() == 0:
        return None
    return storage._cdata, storage


class _ArenaTracker(TorchDispatchMode):
    """Counts the bytes of live activation storages after every ATen op (see module docstring)."""

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
    """Peak bytes of activations alive at once during ``model(*inputs)`` (the tensor arena).

    Returns ``peak_bytes`` (input included, parameters and buffers excluded), ``input_bytes``,
    ``output_bytes``, ``param_bytes`` (parameters + buffers, for reference), ``total_bytes``
    (every activation ever allocated: the arena without reuse), ``peak_op`` (the ATen op after
    which the peak was reached) and ``ops`` (ATen ops run). See the module docstring for exactly
    what is counted.
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
    """Wall-clock time of ``model(*inputs)`` on the CPU: median (and min, mean, p90) over
    ``repeats`` calls after ``warmup`` untimed ones, eval mode, no autograd, ``threads`` intra-op
    threads (the process setting is restored afterwards)."""
    if repeats < 1 or warmup < 0 or threads < 1:
        raise ValueError(f"cpu_latency: need repeats >= 1, warmup >= 0, threads >= 1 (got {repeats}, {warmup}, {threads})")
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
