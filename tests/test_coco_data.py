"""COCO-layout data: loading, crowd / grayscale / empty images, category mapping, errors,
the generated ``synthetic_shapes`` set, and the genuine ``../shared/data/coco_tiny`` sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from coco_fixtures import write_coco_fixture

from crnn.data import (
    COCO_CATEGORIES,
    COCODataModule,
    CorruptDatasetError,
    DatasetNotFoundError,
    SyntheticShapesDataModule,
    collate,
    generate_synthetic_shapes,
    select_categories,
)

COCO_TINY = Path(__file__).resolve().parents[1].parent / "shared/data/coco_tiny"


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    return write_coco_fixture(tmp_path_factory.mktemp("coco"))


def by_id(dataset):
    return {int(t["image_id"]): (img, t) for img, t in (dataset[i] for i in range(len(dataset)))}


def test_constructor_knows_classes_and_shape_without_io(tmp_path):
    dm = COCODataModule(root=str(tmp_path / "absent"), image_size=256)
    assert dm.num_classes == 80 and dm.input_shape == (3, 256, 256)
    dm = COCODataModule(root=str(tmp_path / "absent"), classes=["person", "dog"])
    assert dm.num_classes == 2 and dm.class_names == ["person", "dog"]
    assert not (tmp_path / "absent").exists()


def test_category_ids_map_to_contiguous_labels_and_back():
    ids = [c for c, _ in COCO_CATEGORIES]
    assert len(ids) == 80 and ids[0] == 1 and ids[-1] == 90 and 12 not in ids
    selected = select_categories(None)
    label_to_cat = [c for c, _ in selected]
    cat_to_label = {c: i for i, c in enumerate(label_to_cat)}
    assert [label_to_cat[cat_to_label[c]] for c in ids] == ids
    assert sorted(cat_to_label.values()) == list(range(80))
    assert cat_to_label[90] == 79 and cat_to_label[13] == 11  # after the gap at 12
    assert select_categories(["dog", 1]) == ((18, "dog"), (1, "person"))
    with pytest.raises(ValueError, match="unicorn.*valid names: person"):
        select_categories(["unicorn"])


def test_loader_reads_fixture(coco_root):
    dm = COCODataModule(root=str(coco_root), image_size=64, batch_size=3, num_workers=0, hflip=0.0)
    dm.setup("fit")
    train, val = by_id(dm.train_set), by_id(dm.val_set)
    assert len(train) == 6 and len(val) == 4  # images without annotations are kept
    for image, target in [*train.values(), *val.values()]:
        assert image.dtype == torch.float32 and image.shape[0] == 3 and max(image.shape[1:]) == 64
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
        assert target["boxes"].shape == (len(target["labels"]), 4) and target["labels"].dtype == torch.int64
        assert (target["boxes"][:, 2:] > target["boxes"][:, :2]).all()
    # image 1000 (96x64 -> 64x42): person [10, 8, 30, 40] and dog; boxes follow the resize
    image, target = train[1000]
    assert image.shape[1:] == (42, 64) and target["orig_size"].tolist() == [64, 96]
    assert target["labels"].tolist() == [0, 16]  # person -> 0, dog (id 18, after the gap at 12) -> 16
    scale = torch.tensor([64 / 96, 42 / 64] * 2)
    torch.testing.assert_close(target["boxes"][0], torch.tensor([10.0, 8, 40, 48]) * scale)
    assert train[1001][1]["labels"].tolist() == [79]  # toothbrush (90); the crowd person is dropped
    assert train[1002][0].shape[0] == 3  # grayscale JPEG -> RGB
    assert train[1003][1]["boxes"].shape == (0, 4)  # no annotations
    # crowd boxes stay in the JSON for COCOeval
    crowd = [a for a in dm.val_set.coco.dataset["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and all(len(t["labels"]) for t in [val[2000][1]])
    images, targets = collate([dm.train_set[0], dm.train_set[1]])
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == 2
    images, targets = next(iter(dm.train_dataloader()))
    assert len(images) == 3 and {"boxes", "labels", "image_id", "orig_size"} <= set(targets[0])


def test_training_augmentation_keeps_boxes_valid(coco_root):
    dm = COCODataModule(root=str(coco_root), image_size=48, num_workers=0, hflip=1.0, iou_crop=1.0)
    dm.setup("fit")
    torch.manual_seed(0)
    for _ in range(3):
        for i in range(len(dm.train_set)):
            image, target = dm.train_set[i]
            h, w = image.shape[1:]
            assert max(h, w) == 48
            boxes = target["boxes"]
            assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes >= 0).all()
            assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()


def test_flip_mirrors_boxes(coco_root):
    plain = COCODataModule(root=str(coco_root), image_size=64, num_workers=0, hflip=0.0)
    flipped = COCODataModule(root=str(coco_root), image_size=64, num_workers=0, hflip=1.0)
    plain.setup("fit"), flipped.setup("fit")
    (a_img, a), (b_img, b) = plain.train_set[0], flipped.train_set[0]
    w = a_img.shape[-1]
    torch.testing.assert_close(b["boxes"][:, [0, 2]], w - a["boxes"][:, [2, 0]])
    torch.testing.assert_close(b_img, a_img.flip(-1))


def test_class_subset(coco_root):
    dm = COCODataModule(root=str(coco_root), image_size=64, num_workers=0, classes=["person"])
    assert dm.num_classes == 1
    dm.setup("fit")
    train = by_id(dm.train_set)
    assert len(train) == 6  # every image kept
    assert train[1000][1]["labels"].tolist() == [0]  # the dog is dropped
    assert train[1001][1]["labels"].tolist() == []  # toothbrush dropped, crowd person dropped
    assert dm.train_set.label_to_cat_id == [1]


def test_missing_files_name_the_file(tmp_path, coco_root):
    dm = COCODataModule(root=str(tmp_path / "nowhere"), num_workers=0)
    with pytest.raises(DatasetNotFoundError, match="nowhere"):
        dm.prepare_data()
    with pytest.raises(DatasetNotFoundError, match=r"instances_val2017\.json"):
        dm.setup("validate")
    # an image listed in the JSON but absent on disk: found at set-up (fit reads val too)
    root = write_coco_fixture(tmp_path / "holes")
    missing = root / "val2017" / "000000002003.jpg"
    missing.unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        COCODataModule(root=str(root), num_workers=0).setup("fit")
    msg = str(err.value)
    assert str(missing) in msg and "(id 2003)" in msg and "instances_val2017.json" in msg
    assert "data.skip_bad_images=true" in msg


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"images": [', "not a valid JSON"),
        ('{"images": []}', "not a COCO instances file"),
        ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "malformed"),
        (
            '{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 7, "image_id": 1, '
            '"category_id": 1, "bbox": [0, 0, "w", 2]}], "categories": []}',
            "annotation 7: bbox",
        ),
        ('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}', "categories"),
    ],
)
def test_corrupt_annotation_file_names_the_file(tmp_path, content, match):
    root = write_coco_fixture(tmp_path / "c")
    bad = root / "annotations" / "instances_val2017.json"
    bad.write_text(content)
    dm = COCODataModule(root=str(root), num_workers=0)
    with pytest.raises(CorruptDatasetError, match=match) as err:
        dm.setup("validate")
    assert str(bad) in str(err.value)


def test_synthetic_shapes_is_deterministic_and_coco_layout(tmp_path):
    a = generate_synthetic_shapes(tmp_path / "a", num_train=12, num_val=4, image_size=64, max_size=40, seed=3)
    b = generate_synthetic_shapes(tmp_path / "b", num_train=12, num_val=4, image_size=64, max_size=40, seed=3)
    for rel in (
        "annotations/instances_train2017.json",
        "annotations/instances_val2017.json",
        "train2017/000000000007.jpg",
    ):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c = generate_synthetic_shapes(tmp_path / "c", num_train=12, num_val=4, image_size=64, max_size=40, seed=4)
    assert (c / "train2017/000000000007.jpg").read_bytes() != (a / "train2017/000000000007.jpg").read_bytes()
    data = json.loads((a / "annotations/instances_train2017.json").read_text())
    assert [c["name"] for c in data["categories"]] == ["square", "circle", "triangle"]
    assert len(data["images"]) == 12 and len(data["annotations"]) > 12
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64 and w >= 4 and h >= 4
    # same settings: kept as is; other settings: regenerated
    stamp = (a / "train2017/000000000001.jpg").stat().st_mtime_ns
    generate_synthetic_shapes(tmp_path / "a", num_train=12, num_val=4, image_size=64, max_size=40, seed=3)
    assert (a / "train2017/000000000001.jpg").stat().st_mtime_ns == stamp
    generate_synthetic_shapes(tmp_path / "a", num_train=5, num_val=2, image_size=64, max_size=40, seed=3)
    assert len(list((a / "train2017").glob("*.jpg"))) == 5


def test_synthetic_shapes_datamodule(tmp_path):
    dm = SyntheticShapesDataModule(
        root=str(tmp_path / "shapes"),
        image_size=64,
        num_train=8,
        num_val=4,
        generated_size=64,
        max_size=40,
        batch_size=4,
        num_workers=0,
    )
    assert dm.num_classes == 3 and dm.input_shape == (3, 64, 64)
    assert not (tmp_path / "shapes").exists()  # nothing written before prepare_data
    dm.prepare_data()
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert len(images) == 4 and images[0].shape == (3, 64, 64)
    assert all(int(lb) < 3 for t in targets for lb in t["labels"])


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a synthetic_shapes folder"):
        generate_synthetic_shapes(tmp_path / "mine", num_train=2, num_val=1, image_size=64, max_size=40)


@pytest.mark.skipif(not COCO_TINY.is_dir(), reason="../shared/data/coco_tiny is not present")
def test_reads_genuine_coco_tiny():
    dm = COCODataModule(root=str(COCO_TINY), image_size=320, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 80 and len(dm.val_set) == 80
    anns = dm.train_set.coco.dataset["annotations"]
    crowd_images = {a["image_id"] for a in anns if a["iscrowd"]}
    assert crowd_images, "coco_tiny is expected to hold crowd annotations"
    n_noncrowd = {i: sum(1 for a in anns if a["image_id"] == i and not a["iscrowd"]) for i in crowd_images}
    dm_plain = COCODataModule(root=str(COCO_TINY), image_size=320, num_workers=0, hflip=0.0)
    dm_plain.setup("fit")
    for index, image_id in enumerate(dm_plain.train_set.ids):
        image, target = dm_plain.train_set[index]
        assert image.shape[0] == 3 and max(image.shape[1:]) == 320
        if image_id in crowd_images:  # crowd boxes dropped from the training targets
            assert len(target["labels"]) <= n_noncrowd[image_id]
    # every image decodes to 3 channels, whatever its JPEG colour mode
    from PIL import Image

    modes = {
        Image.open(COCO_TINY / "val2017" / im["file_name"]).mode for im in dm.val_set.coco.dataset["images"]
    }
    assert modes <= {"RGB", "L", "CMYK"}
    for i in range(len(dm.val_set)):
        assert dm.val_set[i][0].shape[0] == 3


# ------------------------------------------------------------------------------------- bad input
def _edit_annotations(root: Path, split: str, edit) -> Path:
    path = root / "annotations" / f"instances_{split}.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def test_missing_image_left_out_with_skip_bad_images(tmp_path, caplog):
    root = write_coco_fixture(tmp_path / "holes")
    (root / "val2017" / "000000002001.jpg").unlink()
    dm = COCODataModule(root=str(root), num_workers=0, skip_bad_images=True)
    with caplog.at_level("WARNING", logger="crnn"):
        dm.setup("fit")
    assert dm.val_set.ids == [2000, 2002, 2003] and len(dm.train_set) == 6
    lines = [r.getMessage() for r in caplog.records if "missing" in r.getMessage()]
    assert len(lines) == 1 and "000000002001.jpg (id 2001)" in lines[0] and "left out" in lines[0]


def test_annotation_of_an_unknown_image_id_is_an_error(tmp_path):
    root = write_coco_fixture(tmp_path / "c")
    path = _edit_annotations(root, "train2017", lambda d: d["annotations"][2].update(image_id=999))
    with pytest.raises(CorruptDatasetError) as err:
        COCODataModule(root=str(root), num_workers=0).setup("fit")
    assert str(path) in str(err.value) and "annotation 3 -> image_id 999" in str(err.value)


def _unusable(data):
    data["annotations"][0]["bbox"][2] = 0.0  # zero width
    data["annotations"][1]["bbox"][3] = -5.0  # negative height
    data["annotations"][4]["category_id"] = 999  # not in 'categories'


def test_unusable_annotations_counted_in_one_warning_per_split_or_an_error(tmp_path, caplog):
    root = write_coco_fixture(tmp_path / "c")
    path = _edit_annotations(root, "train2017", _unusable)
    with caplog.at_level("WARNING", logger="crnn"):
        dm = COCODataModule(root=str(root), num_workers=0, hflip=0.0)
        dm.setup("fit")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines  # one line for train, none for the clean val split
    assert str(path) in lines[0]
    assert (
        "2 with zero or negative box size (annotation 1: bbox [10.0, 8.0, 0.0, 40.0], annotation 2:"
        in lines[0]
    )
    assert "1 with a category id not in 'categories' (annotation 5: category_id 999)" in lines[0]
    # they do not reach the training targets: image 1000 kept no box (dog and person both degenerate)
    targets = {t["image_id"]: t for _, t in (dm.train_set[i] for i in range(len(dm.train_set)))}
    assert targets[1000]["labels"].numel() == 0 and targets[1002]["labels"].numel() == 0
    with pytest.raises(CorruptDatasetError, match=r"data.strict_annotations=true") as err:
        COCODataModule(root=str(root), num_workers=0, strict_annotations=True).setup("fit")
    assert str(path) in str(err.value) and "category_id 999" in str(err.value)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_undecodable_image_named_in_one_line_or_skipped_and_counted(tmp_path, num_workers, caplog):
    root = write_coco_fixture(tmp_path / "c")
    bad = root / "train2017" / "000000001002.jpg"
    bad.write_bytes(b"not a jpeg")
    dm = COCODataModule(root=str(root), num_workers=num_workers, batch_size=3, shuffle_seed=0)
    dm.setup("fit")  # files exist: found while loading
    with pytest.raises(CorruptDatasetError) as err:
        list(dm.train_dataloader())
    msg = str(err.value)
    assert msg.startswith(f"{bad}: cannot decode the image (image id 1002")
    assert "Traceback" not in msg and "data.skip_bad_images=true" in msg
    dm = COCODataModule(root=str(root), num_workers=num_workers, batch_size=3, skip_bad_images=True)
    dm.setup("fit")
    with caplog.at_level("WARNING", logger="crnn"):
        batches = list(dm.train_dataloader())
    assert sorted(len(images) for images, _ in batches) == [2, 3]
    assert len(dm.skipped_images) == 1 and str(bad) in dm.skipped_images[0]
    assert any("left out of its batch (1 so far)" in r.getMessage() for r in caplog.records)


def test_training_batches_depend_only_on_seed_epoch_and_index(coco_root):
    """Detection batches (order, flips, IoU crops) are a function of (seed, epoch, batch): the same from
    a fresh loader started at batch 1 (as after a resume), whatever the global RNG state."""

    def batches(epoch, first, global_seed):
        dm = COCODataModule(
            root=str(coco_root), image_size=64, batch_size=2, num_workers=0, hflip=0.5, iou_crop=0.7,
            shuffle_seed=5,
        )  # fmt: skip
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.set_epoch(epoch)
        loader.first_batch = lambda: first
        torch.manual_seed(global_seed)
        return [(torch.stack([im.sum((1, 2)) for im in ims]), [t["boxes"] for t in ts]) for ims, ts in loader]

    full = batches(epoch=1, first=0, global_seed=0)
    resumed = batches(epoch=1, first=1, global_seed=123)
    assert len(full) == 3 and len(resumed) == 2
    for (x, boxes), (x2, boxes2) in zip(full[1:], resumed, strict=True):
        assert torch.equal(x, x2) and all(torch.equal(a, b) for a, b in zip(boxes, boxes2, strict=True))
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(full, batches(2, 0, 0), strict=True))
    batches(epoch=1, first=0, global_seed=7)  # loading a whole epoch draws nothing from the global RNG:
    after = torch.random.get_rng_state()
    torch.manual_seed(7)
    assert torch.equal(after, torch.random.get_rng_state())


def test_synthetic_shape_sizes_are_a_config_error(tmp_path):
    """Sizes that do not fit the generated images fail when the DataModule is built (exit 2 in
    crnn-train), naming the keys, before anything is generated."""
    from conftest import compose

    from crnn.builders import build_datamodule
    from crnn.errors import ConfigError

    cfg = compose(
        [
            "experiment=synthetic_shapes_detection",
            f"data.root={tmp_path / 'shapes'}",
            "data.generated_size=64",
        ],
        tmp_path,
    )
    with pytest.raises(ConfigError, match=r"data\.max_size \(80\) < data\.generated_size - 2 \(62\)"):
        build_datamodule(cfg)
    assert not (tmp_path / "shapes").exists()
