"""crnn.export: a trained checkpoint (or a config) -> deployable files, checked against PyTorch.

- :mod:`crnn.export.source`: the model to export (:func:`source_from_checkpoint`,
  :func:`source_from_config`) and the run's own images (:func:`normalized_images`);
- :mod:`crnn.export.unrolled`: export forms of the recurrent layers (recurrence unrolled into
  fully-connected / add / activation ops, same weights, same outputs);
- :mod:`crnn.export.onnx`: ONNX + onnxruntime check;
- :mod:`crnn.export.tflite`: float ``.tflite`` (litert-torch) and full-integer int8 (ai-edge-quantizer);
- :mod:`crnn.export.micro`: runs a ``.tflite`` in TensorFlow Lite Micro, recording the arena;
- :mod:`crnn.export.embedded`: :func:`measure_embedded`: flash, arena, float vs int8 accuracy;
- :mod:`crnn.export.cli`: the ``crnn-export`` command.

The TFLite modules need the ``embedded`` extra (``pip install -e ".[embedded]"``), imported lazily.
"""

from crnn.export.embedded import measure_embedded, missing_extra
from crnn.export.onnx import ExportCheck, check_onnx, export_and_check, export_onnx
from crnn.export.source import ExportSource, normalized_images, source_from_checkpoint, source_from_config
from crnn.export.unrolled import UnrolledPass, export_form

__all__ = [
    "ExportCheck",
    "ExportSource",
    "UnrolledPass",
    "check_onnx",
    "export_and_check",
    "export_form",
    "export_onnx",
    "source_from_checkpoint",
    "source_from_config",
    "measure_embedded",
    "missing_extra",
    "normalized_images",
]
