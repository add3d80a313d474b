"""TensorFlow Lite export: float through litert-torch, full-integer int8 through ai-edge-quantizer.

* Converter: ``litert-torch`` (Google's maintained PyTorch -> LiteRT/TFLite converter, formerly
  ai-edge-torch): ``torch.export`` of the module, lowered to TFLite builtin ops; no TensorFlow
  install. The model is wrapped by ``litert_torch.to_channel_last_io`` so the ``.tflite`` input is
  NHWC, the layout of a camera frame and of TFLite's own kernels (the NCHW -> NHWC transpose of the
  image is not part of the graph).
* Quantiser: ``ai-edge-quantizer`` (AEQ), the maintained LiteRT post-training quantiser, static
  ``a8w8`` recipe: int8 weights (symmetric, per output channel), int8 activations (asymmetric, per
  tensor, ranges from calibration), integer compute, and int8 graph input and output (the recipe
  quantises the graph's input/output tensors too). It quantises the float ``.tflite`` itself, op
  for op (the ``.*`` recipe covers every TFLite op the converter emitted: SLICE, TANH,
  CONCATENATION, MEAN, ...), so the int8 model is the float model that was checked against
  PyTorch. litert-torch's own PT2E quantiser also gives int8 input/output (seen on a conv + linear
  net) but annotates a fixed list of torch ops (conv, linear, add, mul, cat, pools) before
  conversion.

Both need the ``embedded`` extra (``pip install -e ".[embedded]"``); they are imported lazily.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

__all__ = ["external_buffers", "for_micro", "inline_buffers", "nhwc", "quantize_int8", "to_tflite"]


def nhwc(images: torch.Tensor) -> np.ndarray:
    """``(N, C, H, W)`` float tensor -> ``(N, H, W, C)`` float32 array (the ``.tflite`` input layout)."""
    return images.detach().permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)


def to_tflite(module: nn.Module, example: torch.Tensor) -> bytes:
    """Float ``.tflite`` flatbuffer of ``module`` (eval mode) for one ``(1, C, H, W)`` ``example``,
    with an NHWC input ``(1, H, W, C)``; the module's outputs are unchanged."""
    import litert_torch

    litert_torch.config.show_progress = False
    wrapped = litert_torch.to_channel_last_io(module.eval(), args=[0]).eval()
    with torch.no_grad():
        # one eager pass first: caches a forward fills lazily (rnn2d's diagonal schedules) then hold
        # real tensors; filled under torch.export's trace they would keep its fake tensors
        module(example)
        edge = litert_torch.convert(wrapped, (example.permute(0, 2, 3, 1).contiguous(),))
    return bytes(edge.model_content())


def quantize_int8(float_model: bytes, calibration: Iterable[np.ndarray]) -> bytes:
    """Full-integer int8 ``.tflite`` (int8 input and output) of ``float_model``, calibrated on
    ``calibration``: the model's input arrays, one ``(1, H, W, C)`` float32 array each."""
    from ai_edge_quantizer import quantizer, recipe
    from ai_edge_quantizer.utils import tfl_interpreter_utils

    arrays = [np.ascontiguousarray(x, dtype=np.float32) for x in calibration]
    if not arrays:
        raise ValueError("int8 calibration needs at least one image")
    interpreter = tfl_interpreter_utils.create_tfl_interpreter(float_model)
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        raise ValueError(
            f"expected one signature in the float model, found {list(signatures)} "
            "(quantise the converter's output, not a for_micro copy)"
        )
    ((key, signature),) = signatures.items()
    if len(signature["inputs"]) != 1:
        raise ValueError(f"expected one input, found {signature['inputs']}")
    name = signature["inputs"][0]
    samples = [{name: x} for x in arrays]
    q = quantizer.Quantizer(bytearray(float_model), recipe.static_wi8_ai8())
    with warnings.catch_warnings():
        # calibration keeps every intermediate tensor on purpose (it records their ranges)
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
        result = q.quantize(q.calibrate({key: samples}), enable_progress_report=False)
    return inline_buffers(bytes(result.quantized_model))


def external_buffers(model: bytes) -> int:
    """How many of the model's buffers are stored after the flatbuffer (``offset``/``size``)."""
    from ai_edge_litert.tools import flatbuffer_utils

    return sum(
        1 for b in flatbuffer_utils.convert_bytearray_to_object(bytearray(model)).buffers if b.offset > 1
    )


def inline_buffers(model: bytes) -> bytes:
    """``model`` with every buffer inside the flatbuffer.

    ai-edge-quantizer writes a model with 256 KiB or more of weights with its buffers appended
    after the flatbuffer (``Buffer.offset``/``size``, LiteRT's large-model layout); TensorFlow Lite
    Micro reads only inline buffers and would take those weights for empty, non-constant tensors
    (planned into the arena, never filled). Re-serialised with the buffers inline, as the
    converter writes them."""
    from ai_edge_litert.tools import flatbuffer_utils

    if not external_buffers(model):
        return model
    parsed = flatbuffer_utils.read_model_from_bytearray(bytearray(model))  # resolves offset buffers
    return bytes(flatbuffer_utils.convert_object_to_bytearray(parsed))


def for_micro(model: bytes) -> bytes:
    """The file a microcontroller gets: buffers inline, and without the strings TFLM never reads
    (tensor and subgraph names, signature defs: ``flatbuffer_utils.strip_strings``, as TensorFlow's
    ``strip_strings`` tool). The converter's tensor names are long module paths, one per tensor: in
    an unrolled recurrence (one tensor per step) they would otherwise be a good part of the flash."""
    from ai_edge_litert.tools import flatbuffer_utils

    parsed = flatbuffer_utils.read_model_from_bytearray(bytearray(model))  # resolves offset buffers
    flatbuffer_utils.strip_strings(parsed)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(parsed))
