"""ONNX export of a crnn model (from a checkpoint or a config) with an onnxruntime check.

    python scripts/export_onnx.py --ckpt outputs/runs/.../checkpoints/best.ckpt
    python scripts/export_onnx.py backbone=resnet20 rnn=sws_birnn --out resnet20_sws.onnx

What is exported is the module ``task.complexity_inputs()`` names (the classifier ``net`` for
classification; for detection the backbone + FPN + head network without box decoding / NMS), in
eval mode, at a fixed input size (the task's ``input_shape``, batch ``batch_size``).

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

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

__all__ = ["ExportCheck", "check_onnx", "export_onnx", "load_checkpoint", "load_config", "main"]

log = logging.getLogger("crnn.export")

#: layers whose forward is a Python loop over steps: unrolled by the trace (fixed input size)
UNROLLED_LAYERS = ("ds_rnn", "rnn2d", "rnn2d_4way")


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


def load_checkpoint(ckpt_path: str | Path) -> tuple[nn.Module, tuple[torch.Tensor, ...], dict[str, Any]]:
    """``(module, inputs, choices)`` from a crnn checkpoint (its stored config names the task)."""
    from hydra.utils import get_class

    from crnn.runtime import CONFIG_KEY
    from crnn.runtime import load_checkpoint as load_safely

    ckpt_path = Path(ckpt_path).expanduser()
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"{ckpt_path}: no such checkpoint file")
    stored = load_safely(ckpt_path).get(CONFIG_KEY)  # weights_only=True
    if stored is None:
        raise ValueError(f"{ckpt_path} holds no crnn config ({CONFIG_KEY!r}): was it written by crnn-train?")
    task = get_class(stored["config"]["task"]["_target_"]).load_from_checkpoint(
        ckpt_path, map_location="cpu", weights_only=True
    )
    module, inputs = task.complexity_inputs()
    return module, inputs, dict(stored.get("choices") or {})


def load_config(overrides: Sequence[str] = ()) -> tuple[nn.Module, tuple[torch.Tensor, ...], dict[str, Any]]:
    """``(module, inputs, choices)`` of the model ``crnn-train <overrides>`` builds (random init)."""
    from crnn.profile import build_model, compose_config
    from crnn.runtime import choices

    cfg = compose_config(list(overrides))
    _, module, inputs = build_model(cfg)
    return module, inputs, choices(cfg)


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


def main(argv: Sequence[str] | None = None) -> None:
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="export_onnx.py",
        description="Export a crnn checkpoint or config to ONNX and check it against PyTorch (onnxruntime).",
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides of the model to export (when no --ckpt)"
    )
    parser.add_argument("--ckpt", help="a crnn-train checkpoint (its stored config rebuilds the model)")
    parser.add_argument(
        "--out", help="ONNX file (default: <run>/model.onnx for --ckpt, outputs/onnx/<name>.onnx otherwise)"
    )
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--atol", type=float, default=1e-4, help="max |onnxruntime - PyTorch| allowed")
    parser.add_argument(
        "--batch-size", type=int, default=1, help="the (fixed) batch size of the exported graph"
    )
    args = parser.parse_args(argv)
    if args.ckpt and args.overrides:
        parser.error("give either --ckpt or config overrides, not both")

    from crnn.runtime import project_root

    if args.ckpt:
        module, inputs, picked = load_checkpoint(args.ckpt)
        ckpt = Path(args.ckpt)
        run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        default = run_dir / f"{ckpt.stem}.onnx"
    else:
        module, inputs, picked = load_config(args.overrides)
        name = "-".join(str(picked.get(k)) for k in ("backbone", "rnn", "head"))
        default = project_root() / "outputs" / "onnx" / f"{name}.onnx"
    out = Path(args.out) if args.out else default
    result = export_and_check(module, inputs, out, args.atol, args.opset, args.batch_size)
    shape = [args.batch_size, *inputs[0].shape[1:]]
    note = ""
    if picked.get("rnn") in UNROLLED_LAYERS:
        note = f" (rnn={picked['rnn']}: Python loop unrolled by the trace, valid for input {shape} only)"
    print(f"exported {out} ({out.stat().st_size / 1e6:.2f} MB), input {shape}{note}")
    diff = result.max_abs_diff
    print(f"outputs {result.outputs}; max |onnxruntime - PyTorch| = {diff:.3g} (atol {args.atol:g})")
    if not result.ok:
        print("FAILED: the ONNX model does not match PyTorch within atol", file=sys.stderr)
        raise SystemExit(1)
    print("OK")
