"""``crnn-export``: a checkpoint or a config -> ONNX or TensorFlow Lite (float, int8), checked.

    crnn-export --ckpt outputs/runs/<run>/checkpoints/best.ckpt                 # ONNX
    crnn-export backbone=resnet20 rnn=sws_birnn --format tflite                 # float .tflite
    crnn-export --ckpt .../best.ckpt --format tflite --int8 --calibration 200   # + int8, TFLM
    crnn-export -m rnn=none,srnn,sws_birnn --format tflite --int8 \\
        --data root=../shared/data/cifar100_partial --data verify_checksums=false

Without ``--ckpt`` the model is the one ``crnn-train <overrides>`` builds, untrained (its seeded
initialisation). ``-m`` expands comma-separated override values into one model per combination
(Hydra's override parser, as the basic sweeper: :func:`crnn.results.read.expand_sweep`).

* ``--format onnx``: :mod:`crnn.export.onnx` (onnxruntime check on a seeded random input).
* ``--format tflite``: the float ``.tflite`` (:mod:`crnn.export.tflite`), run in TensorFlow Lite
  Micro on a seeded random input and compared with PyTorch; prints its arena.
* ``--format tflite --int8``: also the full-integer int8 model calibrated on ``--calibration``
  training images of the run's data, both run in TFLM on ``--eval`` test images
  (:func:`crnn.export.embedded.measure_embedded`); prints the embedded table (params, MACs,
  flash, arena, float / int8 accuracy, agreement) and writes ``embedded.json`` and
  ``embedded_table.md`` beside the files.

Recurrent layers are exported in their unrolled export form (:mod:`crnn.export.unrolled`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crnn.checkpoints import CheckpointError
from crnn.errors import USER_ERRORS, ConfigError
from crnn.export.embedded import EXTRA_MODULES, INSTALL_HINT
from crnn.export.source import ExportSource, normalized_images, source_from_checkpoint, source_from_config
from crnn.records import strict_json, write_json_atomic
from crnn.results.read import BASE, expand_sweep
from crnn.results.render import embedded_markdown

__all__ = ["main"]

EMBEDDED_EXTRA = f"the embedded extra is not installed: {INSTALL_HINT} ({{err}})"


def _out_path(source: ExportSource, out: str | None, suffix: str, many: bool) -> Path:
    from crnn.runtime import project_root

    if out and not many and not Path(out).is_dir():
        return Path(out)
    folder = Path(out) if out else (source.run_dir or project_root() / "outputs" / "export")
    return folder / f"{source.stem}{suffix}"


def _export_onnx(source: ExportSource, path: Path, args: argparse.Namespace) -> bool:
    from crnn.export.onnx import export_and_check

    result = export_and_check(source.module, source.inputs, path, args.atol, args.opset, args.batch_size)
    shape = [args.batch_size, *source.inputs[0].shape[1:]]
    print(f"exported {path} ({path.stat().st_size / 1e6:.2f} MB), input {shape}")
    diff = result.max_abs_diff
    print(f"outputs {result.outputs}; max |onnxruntime - PyTorch| = {diff:.3g} (atol {args.atol:g})")
    return result.ok


def _export_tflite_float(source: ExportSource, path: Path, args: argparse.Namespace) -> bool:
    from crnn.export.micro import run_micro
    from crnn.export.tflite import nhwc, to_tflite
    from crnn.export.unrolled import export_form

    form, report = export_form(source.module)
    model = to_tflite(form, source.inputs[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model)
    x = torch.randn((4, *source.inputs[0].shape[1:]), generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        expected = source.module(x).numpy()
    run = run_micro(model, nhwc(x))
    diff = float(np.abs(run.outputs - expected).max())
    print(f"exported {path} ({len(model) / 1024:.1f} KiB), NHWC input {list(nhwc(x[:1]).shape)}")
    for line in report.lines():
        print(f"  {line}")
    print(
        f"tflite-micro arena {run.arena_total / 1024:.1f} KiB (head {run.arena_head / 1024:.1f}, "
        f"tail {run.arena_tail / 1024:.1f}); max |TFLM - PyTorch| = {diff:.3g} (atol {args.atol:g})"
    )
    return diff <= args.atol


def _export_tflite_int8(source: ExportSource, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    from crnn import complexity
    from crnn.export.embedded import measure_embedded

    calibration, images, labels = normalized_images(
        source.config, args.calibration, args.eval, args.seed, args.data
    )
    result = measure_embedded(
        source.module,
        calibration,
        images,
        labels,
        float_atol=args.atol,
        out_dir=path.parent,
        stem=path.stem,
    )
    result = {
        "name": source.name,
        "choices": source.choices,
        "trained": source.run_dir is not None,
        "params": complexity.count_params(source.module),
        "macs": complexity.count_macs(source.module, *source.inputs),
        **result,
    }
    print(f"exported {path.parent / (path.stem + '.tflite')} and {path.stem}_int8.tflite")
    for line in result["export_form"]:
        print(f"  {line}")
    print(
        f"float: max |TFLM - PyTorch| = {result['float_max_abs_diff']:.3g} on "
        f"{result['n_float_check']} images (atol {args.atol:g}); int8 input/output "
        f"{result['input_dtype']}/{result['output_dtype']}, calibrated on {result['n_calibration']} images"
    )
    return result


def _expanded(overrides: Sequence[str]) -> list[list[str]]:
    """``-m``: one override list per combination of the comma-separated values, as Hydra's sweeper."""
    from hydra.errors import HydraException

    try:
        return expand_sweep({}, overrides)
    except (HydraException, ValueError) as err:
        raise ConfigError(f"-m {' '.join(overrides)}: {err}") from None


def _table_row(result: dict[str, Any]) -> dict[str, Any]:
    """An int8 export's result as a row of :func:`crnn.results.render.embedded_markdown`."""
    return {
        **{k: result["choices"].get(k) for k in BASE},
        "weights": "trained" if result["trained"] else "untrained",
        "params": result["params"],
        "macs": result["macs"],
        "embedded": result,
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crnn-export",
        description="Export a crnn checkpoint or config to ONNX or TFLite (float, int8) and check it.",
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the model to export (when no --ckpt)")
    p.add_argument("--ckpt", action="append", default=[], help="a crnn-train checkpoint (repeatable)")
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load checkpoints that hold more than tensors and plain values (your own older files: "
        "unpickling them may run code)",
    )
    p.add_argument("-m", "--multirun", action="store_true", help="expand comma-separated override values")
    p.add_argument("--format", choices=("onnx", "tflite"), default="onnx")
    p.add_argument("--int8", action="store_true", help="tflite: also full-integer int8, measured in TFLM")
    p.add_argument("--out", help="output file (one model) or an existing folder")
    p.add_argument(
        "--atol", type=float, default=None, help="max |runtime - PyTorch| (onnx 1e-4, tflite 1e-3)"
    )
    p.add_argument("--opset", type=int, default=17, help="onnx opset")
    p.add_argument("--batch-size", type=int, default=1, help="onnx: the fixed batch size of the graph")
    p.add_argument("--calibration", type=int, default=200, help="int8: training images to calibrate on")
    p.add_argument("--eval", type=int, default=500, help="int8: test images for accuracy and agreement")
    p.add_argument("--seed", type=int, default=0, help="calibration pick / random check input")
    p.add_argument(
        "--data", action="append", default=[], metavar="KEY=VALUE", help="data node override (repeatable)"
    )
    return p


def _run(args: argparse.Namespace) -> int:
    if args.atol is None:
        args.atol = 1e-4 if args.format == "onnx" else 1e-3
    if args.int8 and args.format != "tflite":
        raise ConfigError("--int8 needs --format tflite")
    if args.ckpt:
        sources = [source_from_checkpoint(c, trust=args.trust_checkpoint) for c in args.ckpt]
    else:
        runs = _expanded(args.overrides) if args.multirun else [list(args.overrides)]
        sources = [source_from_config(o) for o in runs]
    many = len(sources) > 1
    suffix = ".onnx" if args.format == "onnx" else ".tflite"
    failed, results = [], []
    for source in sources:
        path = _out_path(source, args.out, suffix, many)
        if args.format == "onnx":
            ok = _export_onnx(source, path, args)
        elif not args.int8:
            ok = _export_tflite_float(source, path, args)
        else:
            results.append(_export_tflite_int8(source, path, args))
            ok = results[-1]["float_ok"]
        if not ok:
            failed.append(source.name)
    if results:
        table = embedded_markdown([_table_row(r) for r in results])
        print(table)
        folder = _out_path(sources[0], args.out, suffix, many).parent
        write_json_atomic(folder / "embedded.json", strict_json(results)[0])
        (folder / "embedded_table.md").write_text(table + "\n")
        print(f"wrote {folder / 'embedded.json'} and {folder / 'embedded_table.md'}")
    if failed:
        names = ", ".join(failed)
        print(f"FAILED: {names} differ from PyTorch by more than atol {args.atol:g}", file=sys.stderr)
        return 1
    print("OK")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.ckpt and args.overrides:
        parser.error("give either --ckpt or config overrides, not both")
    try:
        code = _run(args)
    except (*USER_ERRORS, CheckpointError) as err:
        # crnn.checkpoints names eval's Hydra switch; crnn-export's is a flag.
        print(
            f"crnn-export: {str(err).replace('trust_checkpoint=true', '--trust-checkpoint')}", file=sys.stderr
        )
        raise SystemExit(2) from None
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] in EXTRA_MODULES:
            print(f"crnn-export: {EMBEDDED_EXTRA.format(err=err)}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    raise SystemExit(code)
