"""Backbones, block replacement and heads (pure torch)."""

from __future__ import annotations

import pytest
import torch

from crnn.complexity import count_macs, count_params
from crnn.layers import build_layer
from crnn.models import (
    CifarResNet,
    LinearHead,
    MobileNetV2Cifar,
    ReplacementBlock,
    SequenceHead,
    parse_replace,
)


def factory(name="srnn", **kwargs):
    return lambda c_in, c_out: build_layer(name, c_in, c_out, **kwargs)


@pytest.mark.parametrize(
    ("replace", "expected"),
    [
        ("last", {8}),
        ("stage:1", {0, 1, 2}),
        ("stage:3", {6, 7, 8}),
        ("block:3", {3}),
        ("block:-1", {8}),
        (4, {4}),
        (["block:0", "last"], {0, 8}),
        ("none", set()),
        (None, set()),
    ],
)
def test_parse_replace(replace, expected):
    assert parse_replace(replace, [3, 3, 3]) == expected


@pytest.mark.parametrize("bad", ["stage:0", "stage:4", "block:9", "first", 12])
def test_parse_replace_rejects(bad):
    with pytest.raises(ValueError, match="replace"):
        parse_replace(bad, [3, 3, 3])


@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_cifar_resnet_sizes(depth):
    net = CifarResNet(depth)
    assert len(net.blocks) == (depth - 2) // 2 and net.out_channels == 64
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 64, 8, 8)


def test_plain_backbone_ignores_replace():
    plain = CifarResNet(20, replace="stage:2", layer_factory=None)
    assert not any(isinstance(b, ReplacementBlock) for b in plain.blocks)


@pytest.mark.parametrize("replace", ["last", "stage:2", "block:3", "stage:3"])
def test_replacement_keeps_shapes_and_residual_pattern(replace):
    net = CifarResNet(20, replace=replace, layer_factory=factory("sws_birnn"))
    replaced = [i for i, b in enumerate(net.blocks) if isinstance(b, ReplacementBlock)]
    assert set(replaced) == parse_replace(replace, [3, 3, 3])
    plain = CifarResNet(20)
    for i in replaced:
        block, original = net.blocks[i], plain.blocks[i]
        # the replaced block's shortcut type is kept: identity, or strided 1x1 conv + BN
        assert type(block.shortcut) is type(original.shortcut)
        assert isinstance(block.act, torch.nn.ReLU)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 64, 8, 8)


def test_strided_replacement_downsamples_before_the_layer():
    net = CifarResNet(20, replace="block:3", layer_factory=factory("srnn"))
    block = net.blocks[3]
    assert isinstance(block.downsample, torch.nn.AvgPool2d)
    x = torch.randn(2, 16, 32, 32)
    assert block(x).shape == (2, 32, 16, 16)


def test_mobilenetv2_replacement_is_linear_bottleneck():
    net = MobileNetV2Cifar(replace=["last", "block:2"], layer_factory=factory("srnn"))
    last, residual = net.blocks[-1], net.blocks[2]
    assert last.shortcut is None and isinstance(last.act, torch.nn.Identity)  # 160 -> 320: no identity
    assert isinstance(residual.shortcut, torch.nn.Identity)  # 24 -> 24, stride 1: identity kept
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 1280, 4, 4)


def test_plain_resnet20_complexity_matches_the_published_one():
    """CIFAR-100 ResNet-20: 0.28M params, 40.8M MACs (published); within 2%."""
    from crnn.models import Classifier

    model = Classifier(CifarResNet(20), LinearHead((64, 8, 8), 100))
    assert abs(count_params(model) - 0.278e6) / 0.278e6 < 0.02
    assert abs(count_macs(model, torch.zeros(1, 3, 32, 32)) - 40.8e6) / 40.8e6 < 0.02


@pytest.mark.parametrize("scan", SequenceHead.SCANS)
@pytest.mark.parametrize("bidirectional", SequenceHead.DIRECTIONS)
@pytest.mark.parametrize("readout", SequenceHead.READOUTS)
def test_sequence_head_shapes(scan, bidirectional, readout):
    head = SequenceHead(
        (8, 3, 5), 10, cell="gru", hidden_size=6, scan=scan, bidirectional=bidirectional, readout=readout
    )
    assert head(torch.randn(4, 8, 3, 5)).shape == (4, 10)


@pytest.mark.parametrize("bidirectional", ["none", "standard", "shared"])
def test_last_readout_is_each_directions_final_state(bidirectional):
    """'last' reads the forward pass at step L-1 and the backward pass at step 0: the final
    hidden states ``h_n`` the RNN itself returns (not both directions at step L-1)."""
    head = SequenceHead((4, 2, 3), 3, cell="gru", hidden_size=5, scan="pixels", bidirectional=bidirectional)
    head.fc = torch.nn.Identity()
    x = torch.randn(2, 4, 2, 3)
    seq = head.to_sequence(x)
    if bidirectional == "shared":
        _, h_n = head.rnn(torch.cat([seq, seq.flip(0)], dim=1))
        expected = sum(h_n[0].chunk(2, dim=0))
    else:
        _, h_n = head.rnn(seq)
        expected = torch.cat(list(h_n), dim=-1)
    torch.testing.assert_close(head(x), expected)


def test_sequence_head_rejects_a_pooled_map():
    with pytest.raises(ValueError, match="spatial feature map"):
        SequenceHead((64, 1, 1), 10)


def test_cifar_resnet_starts_from_the_published_recipes_kaiming_init():
    """Every conv of the ResNet is Kaiming-normal, fan_out: std sqrt(2 / (C_out k k)); an inserted
    2-D layer keeps its own initialisation (a ConvLayer: PyTorch's, std 1 / sqrt(3 C_in k k))."""
    torch.manual_seed(0)
    net = CifarResNet(20, replace="last", layer_factory=factory("conv"))
    layer = net.blocks[-1].layer
    own = {id(p) for p in layer.parameters()}
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and id(m.weight) not in own]
    assert len(convs) == 1 + 2 * 8 + 2  # stem, 8 kept basic blocks, 2 projection shortcuts
    for conv in convs:
        c_out, c_in, k, _ = conv.weight.shape
        if conv.weight.numel() >= 2000:  # enough samples for a 10% check
            assert float(conv.weight.std()) == pytest.approx((2 / (c_out * k * k)) ** 0.5, rel=0.1)
    weight = layer.conv.weight
    c_in, k = weight.shape[1], weight.shape[2]
    assert float(weight.std()) == pytest.approx((1 / (3 * c_in * k * k)) ** 0.5, rel=0.1)
    for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        assert bool((bn.weight == 1).all()) and not bn.bias.any()
