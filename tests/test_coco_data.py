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
    # an image listed in the JSON but absent on disk
    root = write_coco_fixture(tmp_path / "holes")
    missing = next((root / "val2017").glob("*.jpg"))
    missing.unlink()
    dm = COCODataModule(root=str(root), num_workers=0)
    dm.setup("validate")
    with pytest.raises(DatasetNotFoundError, match=missing.name):
        [dm.val_set[i] for i in range(len(dm.val_set))]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"images": [', "not a valid JSON"),
        ('{"images": []}', "not a COCO instances file"),
        ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "malformed"),
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
