"""Export: the unrolled export forms of the recurrent layers, the ONNX round trip, crnn-export's CLI.

The TFLite / TensorFlow Lite Micro chain is in test_export_embedded.py (needs the embedded extra).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cifar_overrides, compose, write_checkpoint
from hydra.utils import instantiate

from crnn.builders import build_task
from crnn.export import (
    check_onnx,
    export_and_check,
    export_form,
    export_onnx,
    source_from_checkpoint,
    source_from_config,
)
from crnn.export.cli import main
from crnn.export.unrolled import DiagonalScanExportForm, UnrolledPass
from crnn.layers import build_layer, get_cell, layer_info, list_layers

# ------------------------------------------------------------------------- export forms

FUSED = [name for name in list_layers() if not layer_info(name).python_loop and layer_info(name).cells]
LOOPS = [name for name in list_layers() if layer_info(name).python_loop]


def _perturbed(layer: torch.nn.Module) -> torch.nn.Module:
    """Weights away from their init (as after training): biases and recurrent weights non-zero."""
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return layer.eval()


@pytest.mark.parametrize("name", FUSED)
def test_export_form_equals_the_training_form(name):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 7)  # H != W: rows and columns have different lengths
    for cell in layer_info(name).cells:
        layer = _perturbed(build_layer(name, 6, 8, cell=cell))
        form, report = export_form(layer)
        with torch.no_grad():
            expected, got = layer(x), form(x)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5, rtol=0), (cell, (got - expected).abs().max())
        assert report.unrolled == ["row", "col"] and not report.traced_loops
        assert not any(isinstance(m, torch.nn.RNNBase) for m in form.modules())
        assert sum(isinstance(m, UnrolledPass) for m in form.modules()) == 2
        assert any(isinstance(m, torch.nn.RNNBase) for m in layer.modules())  # the original is untouched


@pytest.mark.parametrize("name", LOOPS)
def test_python_loop_layers_export_as_they_compute(name):
    """Traced as they are; the anti-diagonal scans get their diagonals placed without one big cat."""
    torch.manual_seed(0)
    hidden = 5 if layer_info(name).family == "rnn2d" else None  # rnn2d: hid != out adds the projection
    layer = _perturbed(build_layer(name, 4, 6, hidden_channels=hidden))
    form, report = export_form(layer)
    assert report.traced_loops == [""] and not report.unrolled
    assert isinstance(form, DiagonalScanExportForm) == (layer_info(name).family == "rnn2d")
    assert report.placed_scans == ([""] if layer_info(name).family == "rnn2d" else [])
    x = torch.randn(2, 4, 3, 5)
    with torch.no_grad():
        assert torch.allclose(form(x), layer(x), atol=1e-6, rtol=0)


def test_export_form_of_a_whole_model_names_the_replaced_passes(tmp_path):
    source = source_from_config(["rnn=sws_birnn", "rnn.cell=gru", f"data.root={tmp_path / 'none'}"])
    form, report = export_form(source.module)
    assert [p.rsplit(".", 1)[1] for p in report.unrolled] == ["row", "col"]
    assert all(p.startswith("backbone.") for p in report.unrolled)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(form(x), source.module(x), atol=1e-5)


def test_a_fused_rnn_outside_a_known_pass_is_an_error():
    model = torch.nn.Sequential(torch.nn.RNN(3, 4))
    with pytest.raises(ValueError, match="without an export form: 0"):
        export_form(model)


def test_unrolled_pass_refuses_a_mismatched_mode():
    with pytest.raises(ValueError, match="does not match"):
        UnrolledPass(torch.nn.RNN(3, 4), get_cell("rnn_tanh"), "sum")


# --------------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("rnn", ["none", "sws_birnn"])
def test_onnx_round_trip_from_config(rnn, tmp_path):
    source = source_from_config([f"rnn={rnn}", f"data.root={tmp_path / 'none'}"])
    assert source.choices["rnn"] == rnn and source.name == f"resnet20-{rnn}-linear"
    result = export_and_check(source.module, source.inputs, tmp_path / f"{rnn}.onnx")
    assert result.ok and result.max_abs_diff <= 1e-4 and result.outputs == [(1, 100)]


def test_onnx_round_trip_from_checkpoint(tmp_path):
    """A checkpoint as crnn-train writes it (weights + hyper-parameters + ``crnn_config``)."""
    cfg = compose(["rnn=srnn", "rnn.cell=gru", "logger=none", f"data.root={tmp_path / 'none'}"], tmp_path)
    task = build_task(cfg, instantiate(cfg.data))
    with torch.no_grad():
        for p in task.parameters():
            p.add_(0.01 * torch.randn_like(p))  # weights that differ from a fresh init
    choices = {"backbone": "resnet20", "rnn": "srnn", "head": "linear"}
    ckpt = write_checkpoint(cfg, task, tmp_path / "checkpoints" / "best.ckpt", choices)
    source = source_from_checkpoint(ckpt)
    assert source.run_dir == tmp_path and source.stem == "resnet20-srnn-linear-best"
    x = torch.randn(1, 3, 32, 32)
    task.eval()
    with torch.no_grad():
        assert torch.allclose(source.module(x), task.net(x), atol=1e-6)  # the checkpoint's weights
    path = export_onnx(source.module, source.inputs, tmp_path / "model.onnx")
    result = check_onnx(path, source.module, source.inputs)
    assert result.ok, result.max_abs_diff


def test_onnx_check_detects_a_mismatch(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    inputs = (torch.zeros(1, 3, 8, 8),)
    path = export_onnx(model, inputs, tmp_path / "m.onnx")
    with torch.no_grad():
        model[0].bias.add_(1.0)  # PyTorch now differs from the exported graph
    assert not check_onnx(path, model, inputs).ok


@pytest.mark.slow
@pytest.mark.parametrize(
    "rnn", ["srnn", "sbirnn_cat", "sequencer", "ds_rnn", "rnn2d", "rnn2d_4way", "conv", "dsconv"]
)
def test_onnx_round_trip_every_layer(rnn, tmp_path):
    source = source_from_config([f"rnn={rnn}", f"data.root={tmp_path / 'none'}"])
    assert export_and_check(source.module, source.inputs, tmp_path / f"{rnn}.onnx").ok


# ---------------------------------------------------------------------------------- CLI


def _fake_measure_embedded(module, calibration, images, labels, **_):
    """A stand-in for :func:`crnn.export.embedded.measure_embedded` (the real one needs the embedded
    extra: test_export_embedded.py); numbers from the model's size, so each row gets its own."""
    kib = sum(p.numel() for p in module.parameters()) / 1024
    return {
        **dict(flash_kib=kib, arena_kib=kib / 10, float_acc=0.5, int8_acc=0.25, int8_agreement=0.75),
        **dict(n_calibration=len(calibration), n_eval=len(images), n_float_check=4, float_max_abs_diff=0.0),
        **dict(float_ok=True, input_dtype="int8", output_dtype="int8", export_form=[]),
    }


def test_cli_int8_multirun_writes_one_row_per_value(cifar_root, tmp_path, capsys, monkeypatch):
    """``-m rnn=none,srnn --format tflite --int8``: Hydra's sweep syntax expands to one model per value
    (a bracketed list stays one value); embedded.json and the embedded table (with its weights column)."""
    import crnn.export.embedded

    monkeypatch.setattr(crnn.export.embedded, "measure_embedded", _fake_measure_embedded)
    overrides = [*cifar_overrides(cifar_root), "rnn=none,srnn", "data.mean=[0.5,0.5,0.5]"]
    with pytest.raises(SystemExit) as exit_:
        main(["-m", *overrides, "--format", "tflite", "--int8", "--out", str(tmp_path)])
    assert exit_.value.code == 0
    results = json.loads((tmp_path / "embedded.json").read_text())
    assert [r["name"] for r in results] == ["resnet20-none-linear", "resnet20-srnn-linear"]
    assert [(r["n_calibration"], r["n_eval"]) for r in results] == [(64, 48)] * 2  # all there are
    table = (tmp_path / "embedded_table.md").read_text()
    rows = [[c.strip() for c in ln.split("|")[1:-1]] for ln in table.splitlines() if ln.startswith("| ")]
    assert rows[0][:3] == ["backbone", "layer", "weights"]
    assert [row[:3] for row in rows[1:]] == [["resnet20", "none", "untrained"], ["", "srnn", "untrained"]]
    assert "of the weights named" in table and table in capsys.readouterr().out


def test_cli_multirun_bad_sweep_is_a_config_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["-m", "rnn=none,srnn", "seed=interval(0,2)", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "seed: the basic sweeper takes only lists of values" in capsys.readouterr().err


def test_cli_onnx(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    with pytest.raises(SystemExit) as exit_:
        main(["rnn=none", f"data.root={tmp_path / 'none'}", "--out", str(out)])
    assert exit_.value.code == 0 and out.is_file()
    assert "max |onnxruntime - PyTorch|" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ckpt", "missing.ckpt"], "missing.ckpt: no such checkpoint file"),
        (["rnn=no_such_layer"], "rnn=no_such_layer"),
        (["rnn=none", "--int8"], "--int8 needs --format tflite"),
    ],
)
def test_cli_user_errors_are_one_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err


def test_a_checkpoint_that_runs_code_is_not_exported(tmp_path, capsys):
    """Export reads checkpoints as crnn-eval does (weights_only=True): a pickle that would create a
    file is refused with one message naming the switch for trusted files."""
    from pathlib import Path

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad = tmp_path / "evil.ckpt"
    torch.save({"crnn_config": Evil(), "state_dict": {}}, bad)
    with pytest.raises(ValueError, match="not loaded"):
        source_from_checkpoint(bad)
    with pytest.raises(SystemExit) as exit_:
        main(["--ckpt", str(bad)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--trust-checkpoint" in err and "Traceback" not in err
    assert not marker.exists()
