"""Every config composes and instantiates; bad configs fail before any data loading."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CONF, cifar_overrides, compose
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from crnn.builders import ConfigError, build_task, instantiate_node


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


CLASSIFICATION_DATA = ["cifar100"]


def test_every_group_has_options():
    for group in (
        "backbone",
        "rnn",
        "head",
        "data",
        "trainer",
        "logger",
        "callbacks",
        "task",
        "paths",
        "hydra",
    ):
        assert options(group), group


@pytest.mark.parametrize("rnn", options("rnn"))
def test_rnn_choice_instantiates_classifier(rnn, tmp_path, cifar_root):
    cfg = compose(cifar_overrides(cifar_root, f"rnn={rnn}"), tmp_path)
    task = build_task(cfg, instantiate(cfg.data))
    replaced = [m for m in task.net.backbone.blocks if type(m).__name__ == "ReplacementBlock"]
    assert len(replaced) == (0 if rnn == "none" else 1)


@pytest.mark.parametrize("backbone", options("backbone"))
def test_backbone_choice_instantiates(backbone, tmp_path, cifar_root):
    """CIFAR backbones build a classifier; detection backbones build with their detection data."""
    detection = backbone.endswith("_fpn")
    data = (
        ["data=synthetic_shapes", f"paths.data_dir={tmp_path}"] if detection else cifar_overrides(cifar_root)
    )
    cfg = compose([*data, f"backbone={backbone}"], tmp_path)
    task = build_task(cfg, instantiate_node(cfg.data, "data"))
    assert sum(p.numel() for p in task.parameters()) > 0


@pytest.mark.parametrize("head", options("head"))
def test_head_choice_composes(head, tmp_path, cifar_root):
    cfg = compose(cifar_overrides(cifar_root, f"head={head}"), tmp_path)
    if head in ("linear", "sequence"):
        build_task(cfg, instantiate(cfg.data))


@pytest.mark.parametrize("data", options("data"))
def test_data_choice_composes_without_io(data, tmp_path):
    cfg = compose([f"data={data}", f"paths.data_dir={tmp_path / 'nothing'}"], tmp_path)
    datamodule = instantiate(cfg.data)  # constructors touch no files
    assert datamodule.num_classes > 0 and len(datamodule.input_shape) == 3
    assert not (tmp_path / "nothing").exists()


@pytest.mark.parametrize("group", ["trainer", "logger", "callbacks", "experiment"])
def test_other_groups_compose(group, tmp_path):
    for option in options(group):
        cfg = compose([f"{group}={option}"], tmp_path)
        if group == "trainer" and option in ("default", "cpu"):
            node = dict(cfg.trainer)
            node.pop("enable_progress_bar")
            assert instantiate(node, enable_progress_bar=False, logger=False).max_epochs >= 1
        if group == "callbacks":
            for node in (cfg.callbacks or {}).values():
                instantiate(node)


def test_unknown_choice_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigCompositionException) as err:
        compose(["rnn=not_a_layer"], tmp_path)
    assert "sws_birnn" in str(err.value)


def test_unknown_key_is_rejected(tmp_path):
    with pytest.raises(ConfigCompositionException, match="not_a_key"):
        compose(["rnn.not_a_key=3"], tmp_path)


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["rnn=sequencer", "rnn.hidden_channels=30"], "hidden_channels"),
        (["rnn=srnn", "rnn.cell=transformer"], "cell"),
        (["rnn=conv", "+rnn.cell=gru"], "cell"),
        (["head=sequence", "head.scan=diagonal"], "head.scan"),
        (["backbone.replace=stage:7"], "backbone.replace"),
        (["backbone.depth=21"], "backbone.depth"),
        (["backbone=mobilenet_v3_fpn"], "not a classification backbone"),
        (["data.val_size=-3"], "data.val_size"),
        (["data=coco", "data.classes=[unicorn]"], "unicorn"),
    ],
)
def test_bad_combinations_fail_before_data_loading(overrides, names, tmp_path):
    missing = tmp_path / "no_data_here"
    cfg = compose([*overrides, f"data.root={missing}"], tmp_path)
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        build_task(cfg, instantiate_node(cfg.data, "data"))
    assert not missing.exists()


def test_default_experiment_is_the_papers(tmp_path):
    cfg = compose([], tmp_path)
    assert cfg.rnn.name == "sws_birnn" and cfg.backbone.depth == 20 and cfg.backbone.replace == "last"
    assert Path(cfg.paths.output_dir) == tmp_path
