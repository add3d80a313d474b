"""Detection: COCO evaluation path, FCOS with conv / recurrent towers, complexity, training runs."""

from __future__ import annotations

import json
import os
import urllib.error
from functools import partial
from pathlib import Path

import pytest
import torch
from coco_fixtures import ground_truth_detections, write_coco_fixture
from conftest import compose
from logger_double import RecordingLogger
from omegaconf import OmegaConf
from torch import nn

from crnn import complexity
from crnn.builders import (
    ConfigError,
    build_datamodule,
    build_detector,
    build_task,
    run_labels,
    task_from_checkpoint,
)
from crnn.data import COCODataModule, SyntheticShapesDataModule, load_coco_json
from crnn.layers import LAYERS, build_layer, list_layers
from crnn.models.detection import FCOSDetector, FCOSNetwork, cifar_trunk_fpn, mobilenet_v3_fpn
from crnn.tasks import DetectionTask, schedules
from crnn.tasks.coco_eval import evaluate_detections, gather_detections, to_coco_detections

ROOT = Path(__file__).resolve().parents[1]
COCO_TINY = ROOT.parent / "shared/data/coco_tiny"
RNNS = list_layers(include_none=True)
TRUNK = {"_target_": "crnn.models.detection.cifar_trunk_fpn", "widths": [16, 32, 64], "blocks": [1, 1, 1]}
HEAD = {
    "_target_": "crnn.models.detection.FCOSDetector",
    "_partial_": True,
    "tower_depth": 2,
    "norm_groups": 8,
}


def detector(rnn: str = "none", num_classes: int = 3, size: int = 64, **head) -> FCOSDetector:
    """The small test detector, built directly (constructor injection, no config)."""
    factory = None if rnn == "none" else (lambda c_in, c_out: build_layer(rnn, c_in, c_out))
    backbone = cifar_trunk_fpn(widths=[16, 32, 64], blocks=[1, 1, 1])
    return FCOSDetector(backbone, num_classes, size, factory, **{"tower_depth": 2, "norm_groups": 8, **head})


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    return write_coco_fixture(tmp_path_factory.mktemp("coco"))


# ------------------------------------------------------------------------------------------------
# evaluation path
# ------------------------------------------------------------------------------------------------
def test_ground_truth_as_detections_scores_ap_1(coco_root):
    ann = coco_root / "annotations" / "instances_val2017.json"
    coco = load_coco_json(ann)
    metrics = evaluate_detections(coco, ground_truth_detections(ann))
    for key in ("AP", "AP50", "AP75", "AR100", "F1"):
        assert metrics[key] == pytest.approx(1.0), key
    shifted = evaluate_detections(coco, ground_truth_detections(ann, shift=6.0))
    assert 0.0 <= shifted["AP"] < 0.9 and shifted["AP75"] < 1.0
    far = evaluate_detections(coco, ground_truth_detections(ann, shift=500.0))
    assert far["AP"] == 0.0 and far["F1"] == 0.0


def test_empty_detections_give_zero_not_a_crash(coco_root):
    coco = load_coco_json(coco_root / "annotations" / "instances_val2017.json")
    metrics = evaluate_detections(coco, [])
    assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0 and metrics["F1"] == 0.0
    assert evaluate_detections(coco, [], image_ids=[])["AP"] == 0.0


def test_f1_takes_the_best_score_threshold(coco_root):
    ann = coco_root / "annotations" / "instances_val2017.json"
    coco = load_coco_json(ann)
    good = ground_truth_detections(ann, score=0.9)
    junk = [dict(d, bbox=[d["bbox"][0] + 300, *d["bbox"][1:]], score=0.1) for d in good]
    metrics = evaluate_detections(coco, good + junk)
    assert metrics["F1"] == pytest.approx(1.0) and metrics["F1_thresh"] == pytest.approx(0.9)
    # half of the objects found, no false positives: P = 1, R = 0.5 -> F1 = 2/3
    metrics = evaluate_detections(coco, good[::2])
    n = len(good)
    recall = len(good[::2]) / n
    assert metrics["F1"] == pytest.approx(2 * recall / (1 + recall))


def test_evaluation_restricted_to_images_and_categories(coco_root):
    ann = coco_root / "annotations" / "instances_val2017.json"
    coco = load_coco_json(ann)
    dets = [d for d in ground_truth_detections(ann) if d["image_id"] == 2000]
    assert evaluate_detections(coco, dets, image_ids=[2000])["AP"] == pytest.approx(1.0)
    assert evaluate_detections(coco, dets)["AR100"] < 1.0  # the other images' objects are missed
    person = [d for d in ground_truth_detections(ann) if d["category_id"] == 1]
    assert evaluate_detections(coco, person, cat_ids=[1])["AP"] == pytest.approx(1.0)


def test_to_coco_detections_maps_labels_and_scales_boxes():
    dets = to_coco_detections(
        7,
        torch.tensor([[10.0, 20.0, 30.0, 60.0]]),
        torch.tensor([0.5]),
        torch.tensor([2]),
        [1, 5, 90],
        (2.0, 0.5),
    )
    assert dets == [{"image_id": 7, "category_id": 90, "bbox": [20.0, 10.0, 40.0, 20.0], "score": 0.5}]
    assert (
        to_coco_detections(7, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), [1]) == []
    )


def _gather_worker(rank: int, world: int, init: str, ann: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    dets = ground_truth_detections(Path(ann))
    ids = sorted({d["image_id"] for d in dets} | {2002})
    # rank r holds every other image, plus (like a padding DistributedSampler) the first image again
    mine = {i: [d for d in dets if d["image_id"] == i] for i in ids[rank::world] + [ids[0]]}
    merged = gather_detections(mine)
    metrics = evaluate_detections(load_coco_json(ann), [d for v in merged.values() for d in v], merged.keys())
    Path(out, f"{rank}.json").write_text(json.dumps({"ids": sorted(merged), "AP": metrics["AP"]}))
    torch.distributed.destroy_process_group()


def test_gather_merges_and_deduplicates_per_image(coco_root, monkeypatch):
    """In-process stand-in for two ranks (the real two-process check is the slow test below)."""
    ann = coco_root / "annotations" / "instances_val2017.json"
    dets = ground_truth_detections(ann)
    by_image = {i: [d for d in dets if d["image_id"] == i] for i in (2000, 2001, 2002, 2003)}
    rank0 = {2000: by_image[2000], 2002: by_image[2002]}
    rank1 = {2001: by_image[2001], 2003: by_image[2003], 2000: by_image[2000]}  # 2000 repeated (padding)
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(
        dist, "all_gather_object", lambda parts, obj: parts.__setitem__(slice(None), [obj, rank1])
    )
    merged = gather_detections(rank0)
    assert sorted(merged) == [2000, 2001, 2002, 2003] and merged == by_image
    flat = [d for v in merged.values() for d in v]
    assert len(flat) == len(dets)
    assert evaluate_detections(load_coco_json(ann), flat, merged.keys())["AP"] == pytest.approx(1.0)


@pytest.mark.slow
def test_detections_are_gathered_across_processes(coco_root, tmp_path):
    import torch.multiprocessing as mp

    ann = coco_root / "annotations" / "instances_val2017.json"
    init = f"file://{tmp_path / 'store'}"
    mp.spawn(_gather_worker, args=(2, init, str(ann), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert results[0] == results[1]
    assert results[0]["ids"] == [2000, 2001, 2002, 2003] and results[0]["AP"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------------
def test_conv_tower_is_torchvisions_standard_tower():
    from torchvision.models.detection.fcos import FCOSClassificationHead

    net = detector(tower_depth=4, norm_groups=32)
    reference = FCOSClassificationHead(64, 1, 3, num_convs=4).conv  # GroupNorm(32), as torchvision
    for tower in (net.head.classification_tower, net.head.regression_tower):
        assert [type(m) for m in tower] == [type(m) for m in reference]
        assert [tuple(p.shape) for p in tower.parameters()] == [
            tuple(p.shape) for p in reference.parameters()
        ]
        assert sum(isinstance(m, nn.GroupNorm) and m.num_groups == 32 for m in tower) == 4


@pytest.mark.parametrize("rnn", list_layers())
def test_recurrent_tower_in_both_branches_shared_across_levels(rnn):
    net = detector(rnn)
    cls = LAYERS[rnn]
    for tower in (net.head.classification_tower, net.head.regression_tower):
        assert [type(m) for m in tower] == [cls, nn.GroupNorm, nn.ReLU] * 2
        assert not any(type(m) is nn.Conv2d for m in tower)
    net.eval()
    levels = [torch.randn(2, 64, s, s) for s in (8, 4, 2)]  # every level through the same tower
    with torch.no_grad():
        for tower in (net.head.classification_tower, net.head.regression_tower):
            together, alone = tower.forward_levels(levels), [tower(m) for m in levels]
            assert [t.shape for t in together] == [m.shape for m in levels]
            assert max((a - b).abs().max().item() for a, b in zip(together, alone, strict=True)) < 1e-5
        out = net([torch.rand(3, 64, 48)])
    assert set(out[0]) == {"boxes", "scores", "labels"}


def test_checkpoints_of_the_previous_layout_still_load(tmp_path):
    """Before the towers ran over all levels at once they were ``classification_head.conv`` /
    ``regression_head.conv``, and the task had an ``evaluation`` mapping: such checkpoints load into
    the same weights and settings, through crnn's checkpoint reader (crnn-eval, crnn-export,
    finetune) and through Lightning's resume (``on_load_checkpoint``)."""
    from crnn.builders import build_datamodule, build_task, task_from_checkpoint
    from crnn.checkpoints import CONFIG_KEY

    cfg = compose(["experiment=synthetic_shapes_detection", "rnn=srnn", f"data.root={tmp_path}"], tmp_path)
    task = build_task(cfg, build_datamodule(cfg))
    state = task.state_dict()
    old_names = {
        k.replace(".classification_tower.", ".classification_head.conv.").replace(
            ".regression_tower.", ".regression_head.conv."
        ): v
        for k, v in state.items()
    }
    assert old_names.keys() != state.keys()
    old_settings = dict(task.hparams)  # and the task's settings of then
    old_settings["task"] = {
        **old_settings["task"],
        "evaluation": {"save_detections": False, "num_log_images": 4},
    }
    del old_settings["task"]["save_detections"]
    checkpoint = {
        "state_dict": old_names,
        "hyper_parameters": old_settings,
        CONFIG_KEY: {"config": OmegaConf.to_container(cfg), "choices": {}},
    }
    torch.save(checkpoint, tmp_path / "old.ckpt")
    old_task = task_from_checkpoint(tmp_path / "old.ckpt").task
    loaded = old_task.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(v, loaded[k]) for k, v in state.items())
    assert old_task.save_detections is False

    resumed = build_task(cfg, build_datamodule(cfg))
    resumed.on_load_checkpoint(checkpoint)  # Lightning then loads checkpoint["state_dict"]
    resumed.load_state_dict(checkpoint["state_dict"])
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in state.items())


def test_recurrent_tower_init():
    """``tower_init=fcos`` (default): non-recurrent weight matrices N(0, 0.01), biases 0, recurrent
    matrices untouched; ``tower_init=layer`` keeps the layer's own initialisation."""
    torch.manual_seed(0)
    own = detector("sws_birnn", tower_init="layer")
    torch.manual_seed(0)
    fcos = detector("sws_birnn")
    a, b = own.head.classification_tower[0], fcos.head.classification_tower[0]  # built first
    for (name, p_own), (_, p_fcos) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        if "weight_hh" in name:
            assert torch.equal(p_own, p_fcos), name
        elif "weight_ih" in name:
            assert float(p_fcos.std()) == pytest.approx(0.01, rel=0.2) and float(p_own.std()) > 0.05
        else:  # biases
            assert not p_fcos.any() and p_own.any(), name
    with pytest.raises(ConfigError, match="head.tower_init must be 'fcos' or 'layer'"):
        build_detector(TRUNK, {**HEAD, "tower_init": "xavier"}, None, 3, 64)


def test_tower_width_and_depth_are_configurable():
    net = detector("srnn", num_classes=5, tower_depth=3, tower_channels=48, norm_groups=16)
    tower = net.head.regression_tower
    assert len(tower) == 9 and tower[0].in_channels == 64 and tower[0].out_channels == 48
    assert net.head.classification_head.cls_logits.in_channels == 48
    assert net.head.classification_head.cls_logits.out_channels == 5


@pytest.mark.parametrize(
    ("backbone", "head", "match"),
    [
        (TRUNK, {**HEAD, "norm_groups": 12}, "head.norm_groups=12"),
        (TRUNK, {**HEAD, "tower_dpth": 2}, "head.tower_dpth: not a setting"),
        (TRUNK, {**HEAD, "tower_depth": -1}, "head.tower_depth must be a non-negative int"),
        ({**TRUNK, "extra_levels": 3}, HEAD, "backbone.extra_levels must be 0, 1 or 2"),
        ({**TRUNK, "widths": [16, -32, 64]}, HEAD, "backbone.widths"),
    ],
)
def test_bad_configs_fail_with_a_message_naming_the_key(backbone, head, match):
    with pytest.raises(ConfigError, match=match):
        build_detector(backbone, head, None, 3, 64)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["head=linear"], "head=linear is not a detection head: task=detection takes head=fcos"),
        (["backbone=resnet20"], "backbone=resnet20 is not a detection backbone: .*cifar_trunk_fpn"),
        (["data=cifar100"], "data=cifar100 is classification data but task=detection"),
    ],
)
def test_choices_that_do_not_fit_detection_name_the_ones_that_do(overrides, match, tmp_path):
    cfg = compose(["experiment=synthetic_shapes_detection", *overrides], tmp_path)
    with pytest.raises(ConfigError, match=match):
        build_datamodule(cfg)


def test_pretrained_weights_unavailable_offline_is_a_clear_error(monkeypatch):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"backbone\.weights=IMAGENET1K_V1.*offline"):
        mobilenet_v3_fpn(weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="neither a file nor a torchvision weights name"):
        mobilenet_v3_fpn(weights="NOT_A_WEIGHT")


def test_macs_of_recurrent_towers_follow_the_layers_closed_forms():
    """Whole-detector MACs (backbone + FPN + head, counted by crnn.complexity) change from the conv
    tower to an SRNN tower by exactly the towers' difference: 2 branches x depth x levels."""
    size, channels = 64, 64
    conv = detector("none", size=size)
    srnn = detector("srnn", size=size)
    macs = {
        k: complexity.count_macs(FCOSNetwork(m), torch.zeros(1, 3, size, size))
        for k, m in (("c", conv), ("s", srnn))
    }
    layer = srnn.head.classification_tower[0]
    diff = 0
    for stride in srnn.backbone.strides:
        h = w = size // stride
        diff += 2 * 2 * (layer.closed_form_macs(h, w) - 9 * channels * channels * h * w)
    assert macs["s"] - macs["c"] == diff
    assert complexity.count_params(FCOSNetwork(conv)) == complexity.count_params(conv)


def test_default_coco_detector_is_small_and_countable(tmp_path):
    cfg = compose(["experiment=coco_detection", "rnn=none", f"paths.data_dir={tmp_path}"], tmp_path)
    task = build_task(cfg, build_datamodule(cfg))
    assert run_labels(task) == {
        "task": "detection",
        "backbone": "mobilenet_v3_fpn",
        "rnn": "none",
        "cell": None,
        "head": "fcos",
    }
    module, inputs = task.complexity_inputs()
    assert inputs[0].shape == (1, 3, 320, 320)
    params, macs = complexity.count_params(module), complexity.count_macs(module, *inputs)
    assert 1e6 < params < 5e6 and 0.3e9 < macs < 3e9


# ------------------------------------------------------------------------------------------------
# configs and training runs
# ------------------------------------------------------------------------------------------------
def test_detection_presets_bring_the_detection_defaults(tmp_path):
    cfg = compose(["experiment=coco_detection"], tmp_path)
    assert cfg.task._target_ == "crnn.tasks.DetectionTask" and cfg.head._target_.endswith("FCOSDetector")
    assert cfg.backbone._target_.endswith("mobilenet_v3_fpn") and cfg.data.image_size == 320
    assert cfg.task.monitor == "val/AP"
    cfg = compose(["experiment=coco_detection", "backbone=resnet18_fpn", "rnn=srnn"], tmp_path)
    assert cfg.backbone._target_.endswith("resnet18_fpn") and cfg.rnn._target_ == "crnn.layers.SRNN"
    cfg = compose(["experiment=synthetic_shapes_detection"], tmp_path)
    assert cfg.backbone._target_.endswith("cifar_trunk_fpn") and cfg.data.image_size == 128
    cfg = compose(["data=coco_tiny", "experiment=coco_detection"], tmp_path)  # the command line wins
    assert Path(cfg.data.root).resolve() == COCO_TINY.resolve()


def coco_overrides(root: Path, *extra: str, size: int = 64) -> list[str]:
    return [
        "experiment=coco_detection",
        "data=coco",
        f"data.root={root}",
        f"data.image_size={size}",
        "data.batch_size=3",
        "data.num_workers=0",
        "backbone=cifar_trunk_fpn",
        "backbone.widths=[16,32,64]",
        "backbone.blocks=[1,1,1]",
        "head.tower_depth=2",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "logger=none",
        *extra,
    ]


@pytest.mark.parametrize("rnn", RNNS)
def test_fast_dev_run_every_tower(rnn, coco_root, tmp_path):
    from crnn.train import train

    overrides = coco_overrides(
        coco_root, f"rnn={rnn}", "trainer.fast_dev_run=true", "callbacks=none", size=32
    )
    cfg = compose(overrides, tmp_path)
    result = train(cfg)
    assert result["status"] == "completed" and result["rnn"] == rnn
    assert result["params"] > 0 and result["macs"] > 0
    assert 0.0 <= result["val/AP"] <= 1.0 and "val/F1" in result


def test_fast_dev_run_default_coco_detector(coco_root, tmp_path):
    from crnn.train import train

    overrides = [
        "experiment=coco_detection",
        f"data.root={coco_root}",
        "data.image_size=128",
        "data.num_workers=0",
        "data.batch_size=2",
        "rnn=none",
        "trainer=cpu",
        "trainer.fast_dev_run=true",
        "callbacks=none",
        "logger=csv",
    ]
    result = train(compose(overrides, tmp_path))
    assert result["status"] == "completed" and result["backbone"] == "mobilenet_v3_fpn"


def test_train_checkpoint_and_crnn_eval(coco_root, tmp_path):
    """One epoch: metrics.json holds the COCO metrics, the detections JSON is in the run folder,
    and crnn-eval on the checkpoint reproduces val/AP."""
    from crnn.eval import evaluate
    from crnn.train import train

    cfg = compose(coco_overrides(coco_root, "rnn=srnn", "trainer.limit_train_batches=2"), tmp_path)
    result = train(cfg)
    for key in (
        "val/AP",
        "val/AP50",
        "val/AP75",
        "val/APs",
        "val/APm",
        "val/APl",
        "val/AR100",
        "val/F1",
        "test/AP",
    ):
        assert key in result, key
    detections = json.loads((tmp_path / "detections_val.json").read_text())
    assert isinstance(detections, list)
    assert all({"image_id", "category_id", "bbox", "score"} <= set(d) for d in detections)
    assert {d["image_id"] for d in detections} <= {2000, 2001, 2002, 2003}
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    task = DetectionTask.load_from_checkpoint(ckpt, map_location="cpu")
    assert run_labels(task)["rnn"] == "srnn" and task.image_size == 64
    torch.testing.assert_close(task_from_checkpoint(ckpt).task.state_dict(), task.state_dict())
    evaluated = evaluate(ckpt, output_dir=tmp_path / "eval")
    assert evaluated["val/AP"] == pytest.approx(result["val/AP"], abs=1e-6)
    assert (tmp_path / "eval" / "metrics.json").is_file() and (
        tmp_path / "eval" / "detections_val.json"
    ).is_file()


class MediaLogger(RecordingLogger):
    """A logger with media on: records the images and tables it is handed."""

    def __init__(self, media: bool = True) -> None:
        super().__init__()
        self.media, self.images, self.tables = media, [], []

    def log_image(self, key, images, step=None, **kwargs) -> None:
        self.images.append((key, images, kwargs))

    def log_table(self, key, columns, data) -> None:
        self.tables.append((key, columns, data))


def _fit_with_media(coco_root, tmp_path, loggers) -> None:
    import lightning as L

    from crnn.callbacks import DetectionMedia

    dm = COCODataModule(root=str(coco_root), image_size=64, batch_size=4, num_workers=0)
    task = DetectionTask(
        detector(num_classes=80),
        input_shape=(3, 64, 64),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        scheduler=schedules.constant,
    )
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=loggers,
        callbacks=[DetectionMedia(every_n_epochs=5, num_images=2, score_thresh=0.0)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=1,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(task, datamodule=dm)


def test_detection_media_goes_to_loggers_with_media_on(coco_root, tmp_path):
    """Images with predicted and true boxes on epochs 0 and the last (not in the sanity check), the
    per-class AP table at the end; a logger with media off gets neither."""
    on, off = MediaLogger(), MediaLogger(media=False)
    _fit_with_media(coco_root, tmp_path, [on, off])
    assert not off.images and not off.tables
    assert [(key, len(images)) for key, images, _ in on.images] == [("val/images", 2)] * 2
    _, images, kwargs = on.images[0]
    assert images[0].shape[2] == 3 and max(images[0].shape[:2]) == 64 and images[0].dtype.name == "uint8"
    assert set(kwargs) == {"boxes", "caption"} and set(kwargs["boxes"][0]) == {"predictions", "ground_truth"}
    assert kwargs["boxes"][0]["ground_truth"]["box_data"]  # the true boxes of the first val image
    ((key, columns, rows),) = on.tables
    assert key == "val/per_class_AP" and columns == ["class", "AP"]
    assert len(rows) == 80 and rows[0][0] == "person"  # every category of the data, by name
    assert all(ap is None or 0.0 <= ap <= 1.0 for _, ap in rows) and None in {ap for _, ap in rows}


def test_wandb_images_with_predicted_and_true_boxes(coco_root, tmp_path, monkeypatch):
    from crnn.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    logged = []
    wandb_logger = WandbLogger(project="crnn-test", save_dir=str(tmp_path), media=True)
    monkeypatch.setattr(type(wandb_logger.experiment), "log", lambda self, data, *a, **k: logged.append(data))
    _fit_with_media(coco_root, tmp_path, [wandb_logger])
    wandb_logger.experiment.finish()
    panels = [d["val/images"] for d in logged if "val/images" in d]
    assert len(panels) == 2 and len(panels[0]) == 2
    image = panels[0][0]
    assert set(image._boxes) == {"predictions", "ground_truth"}
    assert image._boxes["ground_truth"]._val  # the true boxes of the first val image
    assert any("val/per_class_AP" in d for d in logged)


# ------------------------------------------------------------------------------------------------
# learning (slow)
# ------------------------------------------------------------------------------------------------
def _train_and_eval(
    task: DetectionTask, dm, epochs: int, tmp_path: Path, clip: float | None = None
) -> tuple[float, dict]:
    import lightning as L

    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
        check_val_every_n_epoch=10_000,
        enable_model_summary=False,
        gradient_clip_val=clip,
    )
    before = trainer.validate(task, datamodule=dm, verbose=False)[0]["val/AP50"]
    trainer.fit(task, datamodule=dm)
    after = trainer.validate(task, datamodule=dm, verbose=False)[0]
    return before, after


@pytest.mark.slow
def test_short_run_on_synthetic_shapes_beats_untrained(tmp_path):
    """About 3 CPU minutes: 4 epochs of 1000 images (measured AP50 ~0.16 vs 0.00 untrained)."""
    torch.manual_seed(0)
    dm = SyntheticShapesDataModule(
        root=str(tmp_path / "shapes"),
        image_size=128,
        num_train=1000,
        num_val=100,
        batch_size=16,
        num_workers=1,
    )
    task = DetectionTask(
        FCOSDetector(cifar_trunk_fpn(), 3, 128),
        input_shape=(3, 128, 128),
        optimizer=partial(torch.optim.AdamW, lr=2e-3, weight_decay=0.05),
        scheduler=partial(schedules.cosine, warmup_epochs=0.3, min_lr_ratio=0.01),
        save_detections=False,
    )
    before, after = _train_and_eval(task, dm, 4, tmp_path, clip=1.0)
    assert before < 0.01
    assert after["val/AP50"] > before + 0.08 and after["val/AP"] > 0.025


@pytest.mark.slow
@pytest.mark.skipif(not COCO_TINY.is_dir(), reason="../shared/data/coco_tiny is not present")
def test_overfit_coco_tiny_train_images(tmp_path):
    """Train on coco_tiny's 80 train images, evaluate on the same images (about 8 CPU minutes:
    measured AP 0.052 / AP50 0.10 after 40 epochs, 0.000 untrained)."""
    torch.manual_seed(0)
    dm = COCODataModule(
        root=str(COCO_TINY), image_size=256, batch_size=8, num_workers=1, val_split="train2017", hflip=0.0
    )
    task = DetectionTask(
        FCOSDetector(cifar_trunk_fpn(extra_levels=1), 80, 256),
        input_shape=(3, 256, 256),
        optimizer=partial(torch.optim.AdamW, lr=5e-3, weight_decay=0.0),
        scheduler=partial(schedules.cosine, warmup_epochs=1, min_lr_ratio=0.05),
        save_detections=False,
    )
    before, after = _train_and_eval(task, dm, int(os.environ.get("CRNN_OVERFIT_EPOCHS", "40")), tmp_path)
    assert before < 0.005
    assert after["val/AP50"] > 0.05 and after["val/AP"] > 0.02
