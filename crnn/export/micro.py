"""Run a ``.tflite`` in TensorFlow Lite Micro's own Python interpreter (the ``tflite-micro`` package).

The interpreter is TFLM's C++ ``MicroInterpreter`` with its reference kernels and, by default, the
``RecordingMicroAllocator``: after an invoke, ``print_allocations()`` reports what it took from the
tensor arena (to stderr, from C++)::

    [RecordingMicroAllocator] Arena allocation total 11296 bytes
    [RecordingMicroAllocator] Arena allocation head 4352 bytes
    [RecordingMicroAllocator] Arena allocation tail 6944 bytes

``total`` is the arena a microcontroller must provide (``head``: the planned, reused activation
buffers; ``tail``: persistent allocations: tensor structs, node/registration structs, kernel
scratch and quantisation data). :func:`run_micro` reads these lines from the interpreter's stderr.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["MicroRun", "run_micro"]

_ARENA_LINE = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")
#: arena handed to the interpreter: ample (the recording allocator reports what it actually used)
DEFAULT_ARENA_BYTES = 16 << 20


@dataclass
class MicroRun:
    """Outputs of ``len(inputs)`` invocations (float, dequantised for an int8 model: ``(N, *out)``)
    and the arena the interpreter allocated (bytes)."""

    outputs: np.ndarray
    arena_total: int
    arena_head: int
    arena_tail: int
    input_dtype: str
    output_dtype: str
    allocations: str  # the allocator's full report


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Capture what C/C++ code writes to file descriptor 2 (``sys.stderr`` redirection misses it)."""
    captured: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read().decode(errors="replace"))


def _quantization(details: dict) -> tuple[float, int] | None:
    scales = details["quantization_parameters"]["scales"]
    if len(scales) == 0:
        return None
    return float(scales[0]), int(details["quantization_parameters"]["zero_points"][0])


def run_micro(model: bytes, inputs: np.ndarray, arena_bytes: int = DEFAULT_ARENA_BYTES) -> MicroRun:
    """Invoke ``model`` once per row of ``inputs`` (float32 ``(N, *input_shape[1:])``) in TFLM.

    For a quantised input the floats are quantised with the input tensor's scale and zero point
    (round to nearest, saturate); a quantised output is dequantised with its own. The arena numbers
    come from the recording allocator after the first invoke (planning happens before it; later
    invokes allocate nothing)."""
    from tflite_micro import runtime

    from crnn.export.tflite import external_buffers

    if external_buffers(model):
        raise ValueError(
            "the model keeps buffers after the flatbuffer (offset/size), which tflite-micro does not "
            "read: pass it through crnn.export.tflite.inline_buffers first"
        )
    arena_bytes = max(arena_bytes, 10 * len(model))
    try:
        with _captured_stderr() as captured:
            interpreter = runtime.Interpreter.from_bytes(bytes(model), arena_size=arena_bytes)
    except RuntimeError as err:  # the reason (an unsupported op, a kernel limit) is on stderr
        reasons = [line for line in captured[0].splitlines() if line.strip()]
        raise RuntimeError(f"tflite-micro cannot run this model: {err}: {' / '.join(reasons[-4:])}") from None
    in_details, out_details = interpreter.get_input_details(0), interpreter.get_output_details(0)
    in_dtype, out_dtype = np.dtype(in_details["dtype"]), np.dtype(out_details["dtype"])
    in_q, out_q = _quantization(in_details), _quantization(out_details)
    outputs, report = [], ""
    for i, x in enumerate(np.asarray(inputs, dtype=np.float32)):
        x = x[None]
        if in_q is not None and in_dtype.kind == "i":
            info = np.iinfo(in_dtype)
            x = np.clip(np.round(x / in_q[0]) + in_q[1], info.min, info.max)
        interpreter.set_input(np.ascontiguousarray(x.astype(in_dtype)), 0)
        interpreter.invoke()
        y = np.array(interpreter.get_output(0))
        if out_q is not None and out_dtype.kind == "i":
            y = (y.astype(np.float32) - out_q[1]) * out_q[0]
        outputs.append(y.astype(np.float32)[0])
        if i == 0:
            with _captured_stderr() as captured:
                interpreter.print_allocations()
            report = captured[0]
    arena = {k: int(v) for k, v in _ARENA_LINE.findall(report)}
    if set(arena) != {"total", "head", "tail"}:
        raise RuntimeError(f"no arena report from tflite-micro's recording allocator: {report[:500]!r}")
    return MicroRun(
        np.stack(outputs) if outputs else np.zeros((0,)),
        arena["total"],
        arena["head"],
        arena["tail"],
        in_dtype.name,
        out_dtype.name,
        report,
    )
