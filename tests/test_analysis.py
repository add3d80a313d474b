"""Analysis tools: effective receptive fields (measured by gradients) and the ONNX round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import compose
from hydra.utils import instantiate
from omegaconf import OmegaConf

from crnn.analysis.receptive_field import (
    erf,
    layer_erf,
    model_erf,
    parse_layer_spec,
    radius_for_mass,
    save_heatmaps,
)
from crnn.builders import build_task
from crnn.export import check_onnx, export_and_check, export_onnx, load_checkpoint, load_config

# ----------------------------------------------------------------------- receptive field


def test_conv3x3_map_is_exactly_3x3():
    rf = layer_erf("conv3x3", channels=4, size=9, samples=2)
    assert rf.support == (3, 3) and rf.radius95 == 1.0
    nz = np.argwhere(rf.grad > 0)
    assert nz.min(0).tolist() == [3, 3] and nz.max(0).tolist() == [5, 5]  # centred on (4, 4)
    assert rf.coverage == pytest.approx(9 / 81)


def test_larger_kernel_grows_the_field():
    rf = layer_erf("conv:kernel_size=7", channels=2, size=11, samples=2)
    assert rf.support == (7, 7) and rf.radius95 <= 3


def test_sws_birnn_covers_the_whole_map():
    rf = layer_erf("sws_birnn", channels=4, size=8, samples=2)
    assert rf.coverage == 1.0 and rf.support == (8, 8)


def test_srnn_sees_only_the_quadrant_before_it():
    rf = layer_erf("srnn", channels=4, size=8, samples=2)
    nz = rf.grad > 0
    assert nz[: 4 + 1, : 4 + 1].all() and not nz[5:, :].any() and not nz[:, 5:].any()


def test_radius_for_mass():
    g = np.zeros((7, 7))
    g[3, 3], g[3, 5] = 0.9, 0.1
    assert radius_for_mass(g, (3, 3), 0.9) == 0 and radius_for_mass(g, (3, 3), 0.95) == 2


def test_parse_layer_spec():
    assert parse_layer_spec("conv3x3") == ("conv", {"kernel_size": 3})
    assert parse_layer_spec("dsconv9x9") == ("dsconv", {"kernel_size": 9})
    assert parse_layer_spec("sws_birnn:cell=gru,hidden_channels=8") == (
        "sws_birnn",
        {"cell": "gru", "hidden_channels": 8},
    )


def test_composed_model_uses_the_backbone_feature_map(tmp_path):
    rf = model_erf(["backbone=resnet20", "rnn=sws_birnn"], samples=2)
    assert rf.input_size == (32, 32) and rf.output_size == (8, 8) and rf.centre_out == (4, 4)
    assert rf.coverage == 1.0  # the SWS-BiRNN block sees the whole image
    files = save_heatmaps([rf, layer_erf("conv3x3", 4, 9, samples=1)], tmp_path)
    assert files["comparison"].read_bytes()[:4] == b"\x89PNG"
    assert json.loads(files["json"].read_text())[0]["output_size"] == [8, 8]


def test_erf_does_not_touch_the_module():
    layer = torch.nn.Conv2d(2, 2, 3, padding=1)
    before = layer.weight.clone()
    erf(layer, (2, 5, 5), samples=1)
    assert (
        layer.weight.dtype == torch.float32
        and torch.equal(layer.weight, before)
        and layer.weight.grad is None
    )


# ----------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("rnn", ["none", "sws_birnn"])
def test_onnx_round_trip_from_config(rnn, tmp_path):
    module, inputs, picked = load_config([f"rnn={rnn}", f"data.root={tmp_path / 'none'}"])
    assert picked["rnn"] == rnn
    result = export_and_check(module, inputs, tmp_path / f"{rnn}.onnx")
    assert result.ok and result.max_abs_diff <= 1e-4 and result.outputs == [(1, 100)]


def test_onnx_round_trip_from_checkpoint(tmp_path):
    """A checkpoint as crnn-train writes it (weights + hyper-parameters + ``crnn_config``)."""
    import lightning

    cfg = compose(["rnn=srnn", "rnn.cell=gru", "logger=none", f"data.root={tmp_path / 'none'}"], tmp_path)
    task = build_task(cfg, instantiate(cfg.data))
    with torch.no_grad():
        for p in task.parameters():
            p.add_(0.01 * torch.randn_like(p))  # weights that differ from a fresh init
    ckpt = tmp_path / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir()
    torch.save(
        {
            "state_dict": task.state_dict(),
            "hyper_parameters": dict(task.hparams),
            "pytorch-lightning_version": lightning.__version__,
            "crnn_config": {"config": OmegaConf.to_container(cfg, resolve=True), "choices": {"rnn": "srnn"}},
        },
        ckpt,
    )
    module, inputs, picked = load_checkpoint(ckpt)
    x = torch.randn(1, 3, 32, 32)
    task.eval()
    module.eval()
    with torch.no_grad():
        assert torch.allclose(module(x), task.net(x), atol=1e-6)  # the checkpoint's weights
    path = export_onnx(module, inputs, tmp_path / "model.onnx")
    result = check_onnx(path, module, inputs)
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
    module, inputs, _ = load_config([f"rnn={rnn}", f"data.root={tmp_path / 'none'}"])
    assert export_and_check(module, inputs, tmp_path / f"{rnn}.onnx").ok
