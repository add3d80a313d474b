"""Every config option builds what it names; bad configs fail before any data loading, naming the key."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import CONF, cifar_overrides, compose
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from crnn.builders import ConfigError, build_datamodule, build_task, run_labels
from crnn.layers import layer_info, list_layers


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def built(overrides: list[str], tmp_path: Path):
    """The task ``crnn-train <overrides>`` builds (data constructors read no files)."""
    cfg = compose([*overrides, f"paths.data_dir={tmp_path / 'no_data'}"], tmp_path)
    return build_task(cfg, build_datamodule(cfg))


def test_every_registered_layer_has_an_rnn_option():
    assert options("rnn") == sorted(list_layers(include_none=True))


@pytest.mark.parametrize("rnn", list_layers(include_none=True))
def test_rnn_choice_builds_and_labels_its_layer(rnn, tmp_path, cifar_root):
    cfg = compose(cifar_overrides(cifar_root, f"rnn={rnn}"), tmp_path)
    task = build_task(cfg, instantiate(cfg.data))
    replaced = [m for m in task.net.backbone.blocks if type(m).__name__ == "ReplacementBlock"]
    assert len(replaced) == (0 if rnn == "none" else 1)
    labels = run_labels(task)
    assert labels["rnn"] == rnn
    assert (labels["cell"] is not None) == bool(layer_info(rnn).cells)


@pytest.mark.parametrize("backbone", options("backbone"))
def test_backbone_choice_builds_with_a_task_it_fits(backbone, tmp_path):
    """CIFAR backbones build a classifier; detection backbones a detector (their preset)."""
    preset = ["experiment=synthetic_shapes_detection"] if backbone.endswith("_fpn") else []
    task = built([*preset, f"backbone={backbone}", "rnn=none"], tmp_path)
    assert run_labels(task)["backbone"] == backbone
    assert sum(p.numel() for p in task.parameters()) > 0


@pytest.mark.parametrize("head", options("head"))
def test_head_choice_builds_with_a_task_it_fits(head, tmp_path):
    preset = ["experiment=synthetic_shapes_detection"] if head == "fcos" else []
    task = built([*preset, f"head={head}", "rnn=srnn"], tmp_path)
    assert run_labels(task)["head"] == head


@pytest.mark.parametrize("data", options("data"))
def test_data_choice_composes_without_io(data, tmp_path):
    cfg = compose([f"data={data}", f"paths.data_dir={tmp_path / 'nothing'}"], tmp_path)
    datamodule = instantiate(cfg.data)  # constructors touch no files
    assert datamodule.num_classes > 0 and len(datamodule.input_shape) == 3
    assert not (tmp_path / "nothing").exists()


@pytest.mark.parametrize("preset", options("experiment"))
def test_every_preset_builds_the_model_its_choices_name(preset, tmp_path):
    task = built([f"experiment={preset}"], tmp_path)
    picked = HydraConfig.get().runtime.choices
    labels = run_labels(task)
    assert {k: labels[k] for k in ("backbone", "rnn", "head")} == {
        k: picked[k] for k in ("backbone", "rnn", "head")
    }


@pytest.mark.parametrize("trainer", ["default", "cpu"])
def test_trainer_and_callbacks_instantiate(trainer, tmp_path):
    cfg = compose([f"trainer={trainer}"], tmp_path)
    node = dict(cfg.trainer)
    node.pop("enable_progress_bar")
    assert instantiate(node, enable_progress_bar=False, logger=False).max_epochs >= 1
    for node in (cfg.callbacks or {}).values():
        instantiate(node)


def test_the_rnn_node_is_instantiated_once(tmp_path, monkeypatch):
    """One partial of the layer class builds every replaced block's layer."""
    import crnn.builders

    keys = []
    real = crnn.builders.instantiate_node
    monkeypatch.setattr(
        crnn.builders, "instantiate_node", lambda n, k, **kw: keys.append(k) or real(n, k, **kw)
    )
    task = built(["rnn=srnn", "backbone.replace=[block:1,block:4,last]"], tmp_path)
    assert keys.count("rnn") == 1
    assert sum(type(b).__name__ == "ReplacementBlock" for b in task.net.backbone.blocks) == 3


def test_labels_come_from_what_was_built(tmp_path):
    """The label of a run is read from its model, so it cannot disagree with it."""
    labels = run_labels(built(["rnn=sws_birnn", "rnn._target_=crnn.layers.SRNN", "rnn.cell=gru"], tmp_path))
    assert (labels["rnn"], labels["cell"]) == ("srnn", "gru")
    assert run_labels(built(["backbone=resnet20", "backbone.depth=32"], tmp_path))["backbone"] == "resnet32"
    assert run_labels(built(["rnn=srnn", "backbone.replace=none"], tmp_path))["rnn"] == "none"


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["rnn=sequencer", "rnn.hidden_channels=30"], "hidden_channels"),
        (["rnn=srnn", "rnn.cell=transformer"], "cell"),
        (["rnn=conv", "+rnn.cell=gru"], "rnn.cell: not a setting of crnn.layers.ConvLayer"),
        (["rnn=sws_birnn", "+rnn.name=srnn"], "rnn.name: not a setting of crnn.layers.SWSBiRNN"),
        (["rnn=conv", "rnn._target_=torch.nn.Conv2d"], "not a registered layer of crnn.layers"),
        (["rnn=srnn", "+rnn.in_channels=3"], "rnn.in_channels is set by crnn"),
        (["head=sequence", "head.scan=diagonal"], "head.scan must be 'pixels', 'rows' or 'cols'"),
        (["head=sequence", "head.hidden_size=0"], "head.hidden_size must be a positive int, got 0"),
        (
            ["head=fcos"],
            "head=fcos is not a classification head: task=classification takes head=linear, sequence",
        ),
        (["backbone.replace=stage:7"], "backbone.replace"),
        (["backbone.depth=21"], "backbone.depth"),
        (["backbone.width=-16"], "backbone.width must be a positive int, got -16"),
        (["backbone.width=wide"], "backbone.width must be a valid integer"),
        (["backbone=mobilenet_v3_fpn"], "not a classification backbone"),
        (["task/optimizer=sgd", "+task.optimizer.betas=[0.9,0.99]"], "task.optimizer.betas: not a setting"),
        (["task.optimizer.lr=fast"], "task.optimizer.lr"),
        (
            ["task/scheduler=multistep", "task.scheduler.gamma=-1"],
            "task.scheduler.gamma must be a non-negative",
        ),
        (["task.label_smoothing=2"], "task.label_smoothing"),
        (["data.val_size=-3"], "data.val_size"),
        (["data=coco"], "data=coco is detection data but task=classification: add experiment=coco_detection"),
        (["experiment=coco_detection", "data.classes=[unicorn]"], "unicorn"),
        (["data=synthetic_shapes"], "add experiment=synthetic_shapes_detection"),
    ],
)
def test_bad_combinations_fail_before_data_loading(overrides, names, tmp_path):
    missing = tmp_path / "no_data_here"
    cfg = compose([*overrides, f"data.root={missing}"], tmp_path)
    with pytest.raises(ConfigError, match=names.replace(".", r"\.").replace("[", r"\[")):
        build_task(cfg, build_datamodule(cfg))
    assert not missing.exists()


def test_default_experiment_is_the_papers(tmp_path):
    task = built([], tmp_path)
    assert run_labels(task) == {
        "task": "classification",
        "backbone": "resnet20",
        "rnn": "sws_birnn",
        "cell": "rnn_tanh",
        "head": "linear",
    }
    assert [type(b).__name__ for b in task.net.backbone.blocks][-1] == "ReplacementBlock"  # replace=last
    assert Path(HydraConfig.get().runtime.output_dir) == tmp_path


@pytest.mark.parametrize(
    ("overrides", "optimizer", "settings"),
    [
        (
            [],
            torch.optim.SGD,
            {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "fused": True},
        ),
        (["task.optimizer.lr=0.05"], torch.optim.SGD, {"lr": 0.05}),
        (["task/optimizer=adamw"], torch.optim.AdamW, {"lr": 2e-3, "betas": (0.9, 0.999), "fused": True}),
        # fused but where Lightning refuses it: clipping under mixed precision (test_train runs it)
        (["trainer.gradient_clip_val=1.0"], torch.optim.SGD, {"fused": True}),
        (["trainer.precision=bf16-mixed"], torch.optim.SGD, {"fused": True}),
        (
            ["trainer.precision=bf16-mixed", "trainer.gradient_clip_val=1.0"],
            torch.optim.SGD,
            {"fused": False},
        ),
        (
            ["task/optimizer=adamw", "trainer.precision=16-mixed", "trainer.gradient_clip_val=0.5"],
            torch.optim.AdamW,
            {"fused": False},
        ),
        (
            ["task/optimizer=adamw", "task.optimizer.betas=[0.8,0.9]"],
            torch.optim.AdamW,
            {"betas": (0.8, 0.9)},
        ),
    ],
)
def test_optimizer_is_the_configured_torch_class(overrides, optimizer, settings, tmp_path):
    task = built(overrides, tmp_path)
    built_optimizer = task.optimizer_factory(task.parameters())
    assert type(built_optimizer) is optimizer
    group = built_optimizer.param_groups[0]
    assert {k: tuple(group[k]) if k == "betas" else group[k] for k in settings} == settings


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # 10 steps per epoch, 100 steps, lr 0.1: warm-up over epoch 1, then the schedule
        ([], {0: 0.01, 9: 0.1, 55: 0.05, 99: 0.05 * (1 + math.cos(math.pi * 89 / 90))}),
        (
            ["task/scheduler=multistep", "task.scheduler.milestones=[3,6]"],
            {9: 0.1, 29: 0.1, 30: 0.02, 60: 0.004},
        ),
        (["task/scheduler=constant", "task.scheduler.warmup_epochs=0"], {0: 0.1, 99: 0.1}),
    ],
)
def test_scheduler_is_the_configured_schedule(overrides, expected, tmp_path):
    task = built(overrides, tmp_path)
    optimizer = task.optimizer_factory(task.parameters())
    schedule = task.scheduler_factory(optimizer, total_steps=100, steps_per_epoch=10)
    seen = {}
    for step in range(100):
        seen[step] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        schedule.step()
    assert [seen[s] for s in expected] == pytest.approx(list(expected.values()))
