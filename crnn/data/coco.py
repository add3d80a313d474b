"""COCO 2017 detection data (official layout) for the FCOS detector.

``<root>/annotations/instances_{train,val}2017.json``, ``<root>/train2017/``, ``<root>/val2017/``,
read with torchvision's :class:`~torchvision.datasets.CocoDetection` wrapped for transforms v2
(:func:`~torchvision.datasets.wrap_dataset_for_transforms_v2`), so boxes follow every geometric
transform (flip, IoU crop, resize).

- Images are RGB (grayscale JPEGs are converted); every image of the JSON is kept, also those
  without annotations (negatives).
- Training targets drop crowd boxes (``iscrowd=1``); COCOeval handles them from the JSON. Boxes
  that a transform makes degenerate are removed (``SanitizeBoundingBoxes``).
- Category ids (1..90 with gaps) map to contiguous labels ``0..K-1`` in the order of
  :data:`~crnn.data.coco_categories.COCO_CATEGORIES` (or of ``classes``); ``label_to_cat_id``
  maps back for evaluation. ``classes`` (names or ids, e.g. ``[person]``) restricts the detector
  to a subset; annotations of other classes are dropped (their images stay, as negatives).
- Samples are ``(image float (3, h, w) in [0, 1], target)``, the longer side resized to
  ``image_size``; ``target``: ``boxes`` (N, 4) xyxy float in those pixels, ``labels`` (N,) int64,
  ``image_id`` int, ``orig_size`` (2,) = (H, W) of the file. Batches are lists (``collate``).
- A missing file raises :class:`~crnn.data.errors.DatasetNotFoundError`, a broken annotation file
  :class:`~crnn.data.errors.CorruptDatasetError`; both name the file.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2
from torchvision.transforms import v2

from crnn.data.coco_categories import COCO_CATEGORIES, select_categories
from crnn.data.errors import CorruptDatasetError, DatasetNotFoundError

log = logging.getLogger("crnn")

__all__ = ["COCODataModule", "CocoDetectionDataset", "collate", "load_coco_json"]


def load_coco_json(path: str | Path) -> COCO:
    """A COCO instances file as a pycocotools ``COCO``; clear errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(
            f"COCO annotation file not found: {path}. Expected the official COCO 2017 layout under "
            f"{path.parent.parent}: annotations/instances_{{train,val}}2017.json, train2017/, val2017/ "
            "(from https://cocodataset.org/#download)."
        )
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptDatasetError(f"{path}: not a valid JSON file ({err})") from err
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise CorruptDatasetError(
            f"{path}: not a COCO instances file (needs lists 'images', 'annotations', 'categories')"
        )
    try:
        image_ids = {int(im["id"]) for im in data["images"]}
        for ann in data["annotations"]:
            bbox = ann["bbox"]
            if len(bbox) != 4 or int(ann["image_id"]) not in image_ids:
                raise ValueError(
                    f"annotation {ann.get('id')}: bad bbox or unknown image_id {ann['image_id']}"
                )
            int(ann["category_id"])
        for im in data["images"]:
            if not isinstance(im["file_name"], str):
                raise ValueError(f"image {im['id']}: file_name is not a string")
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptDatasetError(f"{path}: malformed COCO entry ({type(err).__name__}: {err})") from err
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


class _CocoDetection(CocoDetection):
    """torchvision ``CocoDetection`` on an already loaded ``COCO``, keeping only wanted annotations."""

    def __init__(self, image_dir: str, coco: COCO, ids: list[int], cat_ids: set[int], drop_crowd: bool):
        # VisionDataset.__init__ only; CocoDetection.__init__ would reload the JSON
        super(CocoDetection, self).__init__(image_dir)
        self.coco = coco
        self.ids = ids
        self.cat_ids = cat_ids
        self.drop_crowd = drop_crowd

    def _load_image(self, id: int):
        path = Path(self.root) / self.coco.loadImgs(id)[0]["file_name"]
        try:
            return super()._load_image(id)
        except FileNotFoundError as err:
            raise DatasetNotFoundError(
                f"COCO image not found: {path} (listed in the annotation file)"
            ) from err
        except OSError as err:
            raise CorruptDatasetError(f"{path}: unreadable image ({err})") from err

    def _load_target(self, id: int) -> list[Any]:
        anns = super()._load_target(id)
        return [
            a
            for a in anns
            if a["category_id"] in self.cat_ids and not (self.drop_crowd and a.get("iscrowd", 0))
        ]


class CocoDetectionDataset(Dataset):
    """One split of a COCO-layout data set -> ``(image, target)`` (see the module docstring).

    ``coco`` (the pycocotools object of the split, all annotations, crowd included),
    ``ids`` (image ids in sample order) and ``label_to_cat_id`` are what evaluation needs.
    """

    def __init__(
        self,
        image_dir: str | Path,
        ann_file: str | Path,
        categories: Sequence[tuple[int, str]] = COCO_CATEGORIES,
        transforms: Any = None,
        drop_crowd: bool = True,
        max_images: int | None = None,
    ):
        self.image_dir, self.ann_file = Path(image_dir), Path(ann_file)
        self.coco = load_coco_json(self.ann_file)
        if not self.image_dir.is_dir():
            raise DatasetNotFoundError(
                f"COCO image folder not found: {self.image_dir} (for {self.ann_file.name})"
            )
        present = set(self.coco.getCatIds())
        missing = [(c, n) for c, n in categories if c not in present]
        if missing:
            raise CorruptDatasetError(
                f"{self.ann_file}: categories {missing} are not in its 'categories' list"
            )
        self.categories = tuple(categories)
        self.label_to_cat_id = [c for c, _ in self.categories]
        self.class_names = [n for _, n in self.categories]
        self.cat_id_to_label = {c: i for i, c in enumerate(self.label_to_cat_id)}
        ids = sorted(self.coco.imgs)
        self.ids = ids[:max_images] if max_images else ids
        base = _CocoDetection(str(self.image_dir), self.coco, self.ids, set(self.label_to_cat_id), drop_crowd)
        self._ds = wrap_dataset_for_transforms_v2(base, target_keys={"image_id", "boxes", "labels"})
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image, target = self._ds[index]
        width, height = image.size
        boxes = target.get("boxes")
        if boxes is None:
            boxes = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(height, width))
        cat = target.get("labels", torch.zeros(0, dtype=torch.int64)).tolist()
        labels = torch.tensor([self.cat_id_to_label[c] for c in cat], dtype=torch.int64)
        image = tv_tensors.Image(image)
        sample = {"boxes": boxes, "labels": labels}
        if self.transforms is not None:
            image, sample = self.transforms(image, sample)
        return image.as_subclass(torch.Tensor), {
            "boxes": sample["boxes"].as_subclass(torch.Tensor).float(),
            "labels": sample["labels"].as_subclass(torch.Tensor).long(),
            "image_id": int(target["image_id"]),
            "orig_size": torch.tensor([height, width]),
        }


def collate(
    batch: list[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """``[(image, target), ...] -> ([images], [targets])`` (torchvision detection models take lists)."""
    images, targets = zip(*batch, strict=False) if batch else ((), ())
    return list(images), list(targets)


class _WithBoxes(torch.nn.Module):
    """Apply ``transform`` with probability ``p`` to samples that have at least one box
    (``RandomIoUCrop`` needs boxes to pick a crop)."""

    def __init__(self, transform: torch.nn.Module, p: float = 1.0):
        super().__init__()
        self.transform, self.p = transform, p

    def forward(self, image, target):
        if len(target["boxes"]) == 0 or torch.rand(()) >= self.p:
            return image, target
        return self.transform(image, target)


def build_transforms(image_size: int, train: bool, hflip: float = 0.5, iou_crop: float = 0.0) -> v2.Compose:
    """transforms v2: [flip, IoU crop] -> resize longer side to ``image_size`` -> drop degenerate
    boxes -> float in [0, 1] (normalisation happens inside the model)."""
    steps: list[Any] = []
    if train and hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip))
    if train and iou_crop > 0:
        steps.append(_WithBoxes(v2.RandomIoUCrop(), p=iou_crop))
    steps += [
        v2.Resize(size=None, max_size=image_size, antialias=True),
        v2.SanitizeBoundingBoxes(min_size=1.0),
        v2.ToDtype(torch.float32, scale=True),
    ]
    return v2.Compose(steps)


class COCODataModule(L.LightningDataModule):
    """COCO 2017 detection (``data=coco``); see the module docstring.

    ``num_classes`` and ``input_shape = (3, image_size, image_size)`` are known at construction
    (no disk I/O); :meth:`setup` reads the JSON files. ``val`` is also the ``test`` split (COCO's
    test-dev has no public annotations). ``{train,val}_max_images`` cut a split to its first N
    image ids (quick runs); ``val_split: train2017`` evaluates on the training images (overfit checks).
    """

    categories: tuple[tuple[int, str], ...] = COCO_CATEGORIES

    def __init__(
        self,
        root: str,
        image_size: int = 320,
        batch_size: int = 16,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        classes: list[str | int] | None = None,
        train_split: str = "train2017",
        val_split: str = "val2017",
        train_max_images: int | None = None,
        val_max_images: int | None = None,
        hflip: float = 0.5,
        iou_crop: float = 0.0,
        pin_memory: bool = False,
    ):
        super().__init__()
        self.root = Path(root).expanduser()
        self.image_size = int(image_size)
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.selected = select_categories(list(classes) if classes else None, self.categories)
        self.train_split, self.val_split = train_split, val_split
        self.train_max_images, self.val_max_images = train_max_images, val_max_images
        self.hflip, self.iou_crop = hflip, iou_crop
        self.pin_memory = pin_memory
        self.num_classes = len(self.selected)
        self.class_names = [n for _, n in self.selected]
        self.input_shape = (3, self.image_size, self.image_size)
        self.train_set: CocoDetectionDataset | None = None
        self.val_set: CocoDetectionDataset | None = None

    def split_paths(self, split: str) -> tuple[Path, Path]:
        """``(image folder, annotation file)`` of a split such as ``train2017``."""
        return self.root / split, self.root / "annotations" / f"instances_{split}.json"

    def _dataset(self, split: str, train: bool, max_images: int | None) -> CocoDetectionDataset:
        image_dir, ann_file = self.split_paths(split)
        transforms = build_transforms(self.image_size, train, self.hflip, self.iou_crop)
        return CocoDetectionDataset(
            image_dir, ann_file, self.selected, transforms, drop_crowd=True, max_images=max_images
        )

    def prepare_data(self) -> None:
        for split in {self.train_split, self.val_split}:
            for path in self.split_paths(split):
                if not path.exists():
                    raise DatasetNotFoundError(
                        f"COCO data not found: {path}. Expected the official COCO 2017 layout under "
                        f"{self.root}: "
                        "annotations/instances_{train,val}2017.json, train2017/, val2017/ "
                        "(from https://cocodataset.org/#download); set data.root."
                    )

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._dataset(self.train_split, True, self.train_max_images)
        if stage in (None, "fit", "validate", "test", "predict") and self.val_set is None:
            self.val_set = self._dataset(self.val_split, False, self.val_max_images)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("validate")
        return self._loader(self.val_set, self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
