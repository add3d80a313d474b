"""ONNX export of a crnn model with an onnxruntime check (``crnn-export --format onnx``).

What is exported is :attr:`crnn.export.source.ExportSource.module` in eval mode, at a fixed input
size (the task's ``input_shape``, batch ``batch_size``).

The exporter is PyTorch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``): it
traces one forward pass. Fused ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` calls become ONNX ``RNN`` /
``GRU`` / ``LSTM`` ops; layers whose forward is a Python loop over steps (``ds_rnn``: the
per-channel scan; ``rnn2d`` / ``rnn2d_4way``: the anti-diagonal wavefront) are **unrolled** by the
trace, so the ONNX graph is valid for that input size only (and grows with H + W). Shapes are
fixed for every model (no dynamic axes).

The check runs the ONNX file with onnxruntime (CPU) on a seeded random input and compares every
output with PyTorch's: max absolute difference <= ``atol`` (1e-4) passes.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

__all__ = ["ExportCheck", "check_onnx", "export_and_check", "export_onnx"]


@dataclass
class ExportCheck:
    path: Path
    max_abs_diff: float
    atol: float
    outputs: list[tuple[int, ...]] = field(default_factory=list)
    export_s: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.max_abs_diff <= self.atol)


def _output_names(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[str]:
    with torch.no_grad():
        outs = tree_flatten(module(*inputs))[0]
    return ["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))]


def export_onnx(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], path: str | Path, opset: int = 17
) -> Path:
    """Export ``module(*inputs)`` (eval mode, fixed shapes) to ``path`` and check it with ``onnx.checker``."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()
    try:
        names = _output_names(module, inputs)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer / deprecation warnings (loops are unrolled: documented)
            torch.onnx.export(
                module,
                tuple(inputs),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["input"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))],
                output_names=names,
                do_constant_folding=True,
            )
    finally:
        module.train(was_training)
    onnx.checker.check_model(onnx.load(str(path)))
    return path


def check_onnx(
    path: str | Path, module: nn.Module, inputs: tuple[torch.Tensor, ...], atol: float = 1e-4, seed: int = 0
) -> ExportCheck:
    """Run the ONNX file with onnxruntime on a seeded random input of the shapes of ``inputs`` and
    compare with ``module``'s outputs (eval mode)."""
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(seed)
    feeds = tuple(torch.randn(x.shape, generator=gen, dtype=x.dtype) for x in inputs)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            expected = [t.numpy() for t in tree_flatten(module(*feeds))[0]]
    finally:
        module.train(was_training)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {i.name: x.numpy() for i, x in zip(session.get_inputs(), feeds, strict=True)}
    got = session.run(None, feed)
    if len(got) != len(expected):
        raise ValueError(f"{path}: onnxruntime returned {len(got)} outputs, PyTorch {len(expected)}")
    diff = 0.0
    for a, b in zip(got, expected, strict=True):
        if a.shape != b.shape:
            raise ValueError(f"{path}: output shape {a.shape} from onnxruntime vs {b.shape} from PyTorch")
        diff = max(
            diff, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
        )
    return ExportCheck(Path(path), diff, atol, [tuple(b.shape) for b in expected])


def export_and_check(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: str | Path,
    atol: float = 1e-4,
    opset: int = 17,
    batch_size: int = 1,
) -> ExportCheck:
    if batch_size != 1:
        inputs = tuple(x.expand(batch_size, *x.shape[1:]).contiguous() for x in inputs)
    start = time.perf_counter()
    export_onnx(module, inputs, path, opset)
    elapsed = time.perf_counter() - start
    result = check_onnx(path, module, inputs, atol)
    result.export_s = elapsed
    return result
