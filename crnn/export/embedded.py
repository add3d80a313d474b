"""The embedded measurement: float and int8 ``.tflite``, run in TensorFlow Lite Micro, checked.

:func:`measure_embedded` takes a model and real images and returns what a microcontroller
deployment costs and how much int8 changes the answers:

* ``flash_kib``: size of the int8 flatbuffer (weights + graph: what goes to flash), as
  :func:`crnn.export.tflite.for_micro` writes it (no tensor names);
* ``arena_kib``: the tensor arena TFLM's recording allocator took for the int8 model
  (``arena_head_kib`` planned activations + ``arena_tail_kib`` persistent structures);
* ``float_max_abs_diff``: max |TFLM float - PyTorch| over the logits of ``float_check`` images,
  ``float_ok`` when within ``float_atol``;
* ``float_acc`` (PyTorch), ``int8_acc`` (TFLM int8), ``int8_acc_drop`` (float - int8, points),
  ``int8_agreement``: fraction of images whose int8 top-1 equals the float model's top-1.

Recurrent layers go through their export form first (:func:`crnn.export.unrolled.export_form`).
"""

from __future__ import annotations

import collections
import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crnn.export.micro import run_micro
from crnn.export.tflite import for_micro, nhwc, quantize_int8, to_tflite
from crnn.export.unrolled import export_form

__all__ = [
    "EXTRA_MODULES",
    "FLOAT_ATOL",
    "INSTALL_HINT",
    "measure_embedded",
    "missing_extra",
    "tflite_ops",
]

#: max |TFLM float - PyTorch| on the logits: float32 kernels reorder sums, nothing else differs
FLOAT_ATOL = 1e-3
#: the embedded extra's packages (pyproject ``embedded``), by import name
EXTRA_MODULES = ("litert_torch", "ai_edge_quantizer", "tflite_micro")
INSTALL_HINT = 'make install-embedded, or pip install -e ".[embedded]"'


def missing_extra() -> list[str]:
    """The packages of the embedded extra that are not installed (import names)."""
    return [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]


def tflite_ops(model: bytes) -> dict[str, int]:
    """Builtin operator name -> count over the model's subgraphs."""
    from tflite_micro.python.tflite_micro import runtime
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    parsed = runtime.convert_bytearray_to_object(bytearray(model))
    counts = collections.Counter(
        names[runtime.get_builtin_code_from_operator_code(parsed.operatorCodes[op.opcodeIndex])]
        for graph in parsed.subgraphs
        for op in graph.operators or []
    )
    return dict(counts.most_common())


def _top1(logits: np.ndarray) -> np.ndarray:
    return np.asarray(logits).reshape(len(logits), -1).argmax(1)


def measure_embedded(
    module: nn.Module,
    calibration_images: torch.Tensor,
    eval_images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    float_check: int = 32,
    float_atol: float = FLOAT_ATOL,
    out_dir: str | Path | None = None,
    stem: str = "model",
) -> dict[str, Any]:
    """Export ``module`` (one image ``(1, C, H, W)`` -> logits) to float and int8 ``.tflite``, run
    both in TFLM and compare with PyTorch.

    ``calibration_images`` ``(N_cal, C, H, W)`` calibrate the int8 ranges (training images, model
    input normalisation applied); ``eval_images`` ``(N, C, H, W)`` with ``labels`` ``(N,)`` give the
    accuracies and the agreement (without labels: agreement only). The float model runs on the first
    ``float_check`` eval images. With ``out_dir`` the two flatbuffers (as measured: :func:`for_micro`)
    are written there as ``<stem>.tflite`` and ``<stem>_int8.tflite``. Returns the numbers listed
    in the module docstring, plus ``export_form`` (what was unrolled), ``ops`` (int8 model's operators),
    ``input_dtype``/``output_dtype`` of the int8 model and the float model's ``float_flash_kib`` /
    ``float_arena_kib``.
    """
    if eval_images.ndim != 4 or calibration_images.ndim != 4:
        raise ValueError("calibration_images and eval_images must be (N, C, H, W) batches")
    start = time.perf_counter()
    form, report = export_form(module)
    float_model = to_tflite(form, eval_images[:1])
    convert_s = time.perf_counter() - start
    int8_model = quantize_int8(float_model, (nhwc(x[None]) for x in calibration_images))
    quantize_s = time.perf_counter() - start - convert_s
    float_model, int8_model = for_micro(float_model), for_micro(int8_model)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{stem}.tflite").write_bytes(float_model)
        (out_dir / f"{stem}_int8.tflite").write_bytes(int8_model)

    module = module.eval()
    with torch.no_grad():
        reference = torch.cat([module(x) for x in eval_images.split(64)]).numpy()
    start = time.perf_counter()
    float_run = run_micro(float_model, nhwc(eval_images[:float_check]))
    int8_run = run_micro(int8_model, nhwc(eval_images))
    micro_s = time.perf_counter() - start
    diff = float(np.abs(float_run.outputs - reference[: len(float_run.outputs)]).max())
    float_top1, int8_top1 = _top1(reference), _top1(int8_run.outputs)
    result: dict[str, Any] = {
        "flash_kib": len(int8_model) / 1024,
        "arena_kib": int8_run.arena_total / 1024,
        "arena_head_kib": int8_run.arena_head / 1024,
        "arena_tail_kib": int8_run.arena_tail / 1024,
        "float_flash_kib": len(float_model) / 1024,
        "float_arena_kib": float_run.arena_total / 1024,
        "float_max_abs_diff": diff,
        "float_atol": float_atol,
        "float_ok": diff <= float_atol,
        "n_float_check": len(float_run.outputs),
        "int8_agreement": float(np.mean(float_top1 == int8_top1)),
        "n_calibration": len(calibration_images),
        "n_eval": len(eval_images),
        "input_dtype": int8_run.input_dtype,
        "output_dtype": int8_run.output_dtype,
        "export_form": report.lines(),
        "ops": tflite_ops(int8_model),
        "seconds": {"convert": convert_s, "quantize": quantize_s, "micro": micro_s},
    }
    if labels is not None:
        truth = labels.numpy()
        result["float_acc"] = float(np.mean(float_top1 == truth))
        result["int8_acc"] = float(np.mean(int8_top1 == truth))
        result["int8_acc_drop"] = result["float_acc"] - result["int8_acc"]
    return result
