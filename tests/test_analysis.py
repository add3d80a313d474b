"""Analysis tools: effective receptive fields (measured by gradients)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import compose, write_checkpoint
from hydra.utils import instantiate

from crnn.analysis.receptive_field import (
    checkpoint_erf,
    erf,
    layer_erf,
    main,
    model_erf,
    parse_layer_spec,
    radius_for_mass,
    save_heatmaps,
)
from crnn.builders import build_task

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


def test_checkpoint_erf_is_the_erf_of_the_trained_weights(tmp_path):
    """A checkpoint is read as crnn-eval reads it: its ERF is that of its weights, not of a fresh
    init; a checkpoint that would run code is refused with one line."""
    cfg = compose(["rnn=srnn", "logger=none", f"data.root={tmp_path / 'none'}"], tmp_path)
    task = build_task(cfg, instantiate(cfg.data))
    with torch.no_grad():
        for p in task.parameters():
            p.add_(0.2 * torch.randn_like(p))
    ckpt = write_checkpoint(cfg, task, tmp_path / "run" / "checkpoints" / "best.ckpt")
    rf = checkpoint_erf(ckpt, samples=2)
    expected = erf(task.net.backbone, (3, 32, 32), samples=2)
    assert rf.name == "run/best" and np.allclose(rf.grad, expected.grad)
    assert not np.allclose(rf.grad, model_erf(["rnn=srnn"], samples=2).grad)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (type(marker).touch, (marker,))

    torch.save({"crnn_config": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(SystemExit) as exit_:
        main(["--ckpt", str(tmp_path / "evil.ckpt")])
    assert exit_.value.code == 2 and not marker.exists()
