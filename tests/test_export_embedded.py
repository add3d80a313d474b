"""Embedded export: float and int8 TFLite (litert-torch, ai-edge-quantizer) run in TensorFlow Lite Micro.

Needs the ``embedded`` extra (``pip install -e ".[embedded]"``, installed by ``make test-full``);
skipped without it. Fast tests use a small conv + SWS-BiRNN net; the ``slow`` ones run the whole
chain (``crnn-export --format tflite --int8``) on ResNet-20 with the fixture data and, when present,
on the real CIFAR-100 records in ``../shared/data/cifar100_partial``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from torch import nn

REASON = 'needs the embedded extra: pip install -e ".[embedded]" (make install-embedded)'
pytest.importorskip("litert_torch", reason=REASON)
pytest.importorskip("ai_edge_quantizer", reason=REASON)
pytest.importorskip("tflite_micro", reason=REASON)

from crnn.export.cli import main  # noqa: E402
from crnn.export.embedded import FLOAT_ATOL, measure_embedded, tflite_ops  # noqa: E402
from crnn.export.micro import run_micro  # noqa: E402
from crnn.export.tflite import nhwc, quantize_int8  # noqa: E402
from crnn.layers import build_layer  # noqa: E402

PARTIAL = SHARED_DATA / "cifar100_partial"
#: ops of a fused sequence RNN that TFLM has no kernel for
FUSED_RNN_OPS = {
    "UNIDIRECTIONAL_SEQUENCE_RNN",
    "BIDIRECTIONAL_SEQUENCE_RNN",
    "UNIDIRECTIONAL_SEQUENCE_LSTM",
    "WHILE",
}


class TinyNet(nn.Module):
    """conv -> SWS-BiRNN (rnn_tanh) -> mean pool -> linear: ``(B, 3, 8, 8) -> (B, 10)``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.rnn = build_layer("sws_birnn", 8, 8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.rnn(torch.relu(self.conv(x))).mean((2, 3)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny net, its images and :func:`measure_embedded`'s result (one conversion for the module)."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    images, labels = torch.randn(48, 3, 8, 8), torch.arange(16) % 10
    folder = tmp_path_factory.mktemp("tiny")
    result = measure_embedded(model, images[:32], images[32:], labels, out_dir=folder, stem="tiny")
    return model, images, result, folder


def test_float_tflite_runs_in_tflite_micro_like_pytorch(tiny):
    model, images, _, folder = tiny
    float_model = (folder / "tiny.tflite").read_bytes()
    run = run_micro(float_model, nhwc(images[:4]))
    with torch.no_grad():
        expected = model(images[:4]).numpy()
    assert run.outputs.shape == (4, 10) and run.input_dtype == "float32"
    assert np.abs(run.outputs - expected).max() <= FLOAT_ATOL
    assert run.arena_total == run.arena_head + run.arena_tail > 0
    ops = tflite_ops(float_model)
    assert {"FULLY_CONNECTED", "TANH", "ADD", "CONV_2D"} <= set(ops) and not FUSED_RNN_OPS & set(ops)


def test_int8_tflite_is_full_integer_and_agrees(tiny):
    model, images, _, folder = tiny
    run = run_micro((folder / "tiny_int8.tflite").read_bytes(), nhwc(images[32:]))
    assert (run.input_dtype, run.output_dtype) == ("int8", "int8")
    with torch.no_grad():
        expected = model(images[32:]).numpy()
    assert np.mean(run.outputs.argmax(1) == expected.argmax(1)) >= 0.75
    assert np.abs(run.outputs - expected).max() < 0.1 * np.abs(expected).max() + 0.05


def test_measure_embedded_reports_the_numbers(tiny):
    _, _, result, folder = tiny
    assert result["flash_kib"] == pytest.approx((folder / "tiny_int8.tflite").stat().st_size / 1024)
    assert result["float_ok"] and result["float_max_abs_diff"] <= FLOAT_ATOL
    assert result["arena_kib"] == pytest.approx(result["arena_head_kib"] + result["arena_tail_kib"])
    assert result["int8_acc_drop"] == pytest.approx(result["float_acc"] - result["int8_acc"])
    assert (result["n_calibration"], result["n_eval"]) == (32, 16)
    assert result["export_form"][0].startswith("rnn.row: fused RNN pass -> unrolled")
    assert result["ops"]["TANH"] == 4 * 8  # 2 passes x 2 directions x 8 steps
    from tflite_micro.python.tflite_micro import runtime

    written = runtime.convert_bytearray_to_object(bytearray((folder / "tiny_int8.tflite").read_bytes()))
    assert not any(t.name for g in written.subgraphs for t in g.tensors)  # stripped for the micro


def test_int8_needs_calibration_images(tiny):
    with pytest.raises(ValueError, match="at least one image"):
        quantize_int8((tiny[3] / "tiny.tflite").read_bytes(), [])


class TinyRNN2D(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.conv, self.rnn, self.fc = (
            nn.Conv2d(3, 8, 3, padding=1),
            build_layer(name, 8, 8),
            nn.Linear(8, 10),
        )

    def forward(self, x):
        return self.fc(self.rnn(torch.relu(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize("name", ["rnn2d", "rnn2d_4way"])
def test_anti_diagonal_scans_run_in_tflite_micro(name):
    """8 x 8: 15 diagonals, more than TFLM's 10-input CONCATENATION takes; the export form places them."""
    torch.manual_seed(0)
    images = torch.randn(40, 3, 8, 8)
    result = measure_embedded(TinyRNN2D(name).eval(), images[:24], images[24:])
    assert result["float_ok"] and result["int8_agreement"] >= 0.75
    assert "diagonals placed by pad + add" in result["export_form"][0]


class ManyInputConcat(nn.Module):
    """One concatenation of 15 tensors (as the rnn2d scan's cat of its H + W - 1 diagonals)."""

    def forward(self, x):
        return torch.cat([torch.tanh(x * (i + 1)) for i in range(15)], dim=1)


def test_an_op_tflite_micro_cannot_run_is_one_clear_error():
    from crnn.export.tflite import to_tflite

    model = to_tflite(ManyInputConcat().eval(), torch.randn(1, 3, 4, 4))
    with pytest.raises(RuntimeError, match="cannot run this model.*concatenation.*kMaxInputNum"):
        run_micro(model, np.zeros((1, 4, 4, 3), np.float32))


def test_int8_model_with_large_weights_keeps_them_inline_for_tflite_micro():
    """ai-edge-quantizer appends >= 256 KiB of weights after the flatbuffer; TFLM would not read them."""
    from crnn.export.tflite import external_buffers, to_tflite

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(1024, 320)).eval()  # 328K weights
    images = torch.randn(24, 4, 16, 16)
    int8_model = quantize_int8(to_tflite(model, images[:1]), nhwc(images[:16])[:, None])
    assert external_buffers(int8_model) == 0 and len(int8_model) > 320 * 1024
    run = run_micro(int8_model, nhwc(images[16:]))
    with torch.no_grad():
        expected = model(images[16:]).numpy()
    assert run.arena_head < 64 * 1024  # the weights are not planned into the arena
    assert np.mean(run.outputs.argmax(1) == expected.argmax(1)) >= 0.75


def _run_cli(argv, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--format", "tflite", "--int8", "--out", str(tmp_path)])
    assert exit_.value.code == 0
    return json.loads((tmp_path / "embedded.json").read_text())


@pytest.mark.slow
def test_whole_chain_on_fixture_data(cifar_root, tmp_path):
    data = [
        f"data.root={cifar_root}",
        "data.verify_checksums=false",
        "data.download=false",
        "data.val_size=16",
    ]
    results = _run_cli(["-m", "rnn=none,sws_birnn", *data, "--calibration", "16", "--eval", "24"], tmp_path)
    assert [r["name"] for r in results] == ["resnet20-none-linear", "resnet20-sws_birnn-linear"]
    for r in results:
        assert r["float_ok"] and r["input_dtype"] == "int8" and r["n_eval"] == 24
        assert 0 < r["arena_kib"] < 512 and 0 < r["flash_kib"] < r["float_flash_kib"]
        assert not FUSED_RNN_OPS & set(r["ops"]) and r["int8_agreement"] >= 0.5
    assert results[0]["export_form"] == [] and len(results[1]["export_form"]) == 2
    table = (tmp_path / "embedded_table.md").read_text()
    rows = [[c.strip() for c in ln.split("|")[1:-1]] for ln in table.splitlines() if ln.startswith("| ")]
    assert [row[1:3] for row in rows[1:]] == [["none", "untrained"], ["sws_birnn", "untrained"]]


@pytest.mark.slow
@pytest.mark.skipif(not PARTIAL.is_dir(), reason=f"no real CIFAR-100 sample at {PARTIAL}")
def test_int8_agrees_with_float_on_real_images(tmp_path):
    data = ["--data", f"root={PARTIAL}", "--data", "verify_checksums=false", "--data", "download=false"]
    (result,) = _run_cli(["rnn=sws_birnn", *data, "--calibration", "64", "--eval", "128"], tmp_path)
    assert result["float_ok"] and result["n_eval"] == 128
    assert result["int8_agreement"] >= 0.8  # untrained ResNet-20 + SWS-BiRNN: 0.98 seen on 64 images


@pytest.mark.slow
def test_profile_embedded_sweep_gives_the_embedded_table(cifar_root, tmp_path, capsys):
    """``crnn-profile -m rnn=none,srnn profile.embedded=true`` for real (fixture data), then
    ``crnn-tables`` on its sweep prints the embedded table."""
    from crnn.results.cli import main as tables_main

    sweep = tmp_path / "sweep"
    overrides = [
        "rnn=none,srnn",
        "profile.embedded=true",
        "profile.calibration_images=16",
        "profile.eval_images=24",
        "profile.latency.enabled=false",
        f"data.root={cifar_root}",
        "data.verify_checksums=false",
        "data.download=false",
        "data.val_size=16",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "CI": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-m", "crnn.profile", "-m", *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/profile.json"))]
    assert [(r["rnn"], r["status"]) for r in records] == [("none", "completed"), ("srnn", "completed")]
    for r in records:
        assert 0 < r["arena_kib"] < 512 and 0 < r["flash_kib"] < r["embedded"]["float_flash_kib"]
        assert r["embedded"]["float_ok"] and r["embedded"]["n_eval"] == 24 and r["int8_agreement"] >= 0.5
        assert r["int8_acc_drop"] == pytest.approx(r["float_acc"] - r["int8_acc"])
    # the unrolled recurrence keeps one tensor and node record per step in the arena's tail
    assert records[1]["arena_kib"] > records[0]["arena_kib"]
    assert (proc.stdout + proc.stderr).count("int8 TFLM: arena") == 2

    tables_main([str(sweep), "--no-plots"])
    section = capsys.readouterr().out.split("## Embedded", 1)[1]
    rows = [[c.strip() for c in ln.split("|")[1:-1]] for ln in section.splitlines() if ln.startswith("| ")]
    assert [row[1] for row in rows[1:]] == ["none", "srnn"]
    assert [row[5] for row in rows[1:]] == [f"{r['arena_kib']:.1f}" for r in records]
