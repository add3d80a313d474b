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
- Checked at set-up (:meth:`COCODataModule.setup`, before any training step), one message naming
  the file or id: the annotation file parses and has the COCO lists; every annotation's image id is
  in ``images`` (error); every listed image file exists (error, or with ``skip_bad_images`` the
  image is left out, with one warning); annotations with zero or negative box size and category ids
  not in ``categories`` are counted and dropped with one warning line per split (an error with
  ``strict_annotations``).
- An image that does not decode during training or evaluation raises
  :class:`~crnn.data.errors.CorruptDatasetError` naming the file (also from a worker process); with
  ``skip_bad_images`` it is left out of its batch, with a warning naming it and the running count
  (:attr:`COCODataModule.skipped_images`).
- Training order and augmentation come from ``(seed, epoch, batch, position)``
  (:mod:`crnn.data.sampling`): each sample's random transforms run on torch's CPU generator seeded
  for that sample (and restored after), so a run resumed mid-epoch sees the uninterrupted batches.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2
from torchvision.transforms import v2

from crnn.data.coco_categories import COCO_CATEGORIES, select_categories
from crnn.data.errors import CorruptDatasetError, DatasetNotFoundError
from crnn.data.sampling import (
    SAMPLE,
    DataErrorValue,
    EpochLoader,
    SeededBatch,
    SkippedSamples,
    derive_seed,
    epoch_loader,
)

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
        orphans = []
        for ann in data["annotations"]:
            if len(ann["bbox"]) != 4 or not all(isinstance(v, (int, float)) for v in ann["bbox"]):
                raise ValueError(f"annotation {ann.get('id')}: bbox {ann['bbox']} is not [x, y, w, h]")
            int(ann["category_id"])
            if int(ann["image_id"]) not in image_ids:
                orphans.append(f"annotation {ann.get('id')} -> image_id {ann['image_id']}")
        for im in data["images"]:
            if not isinstance(im["file_name"], str):
                raise ValueError(f"image {im['id']}: file_name is not a string")
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptDatasetError(f"{path}: malformed COCO entry ({type(err).__name__}: {err})") from err
    if orphans:
        raise CorruptDatasetError(
            f"{path}: {len(orphans)} annotation(s) refer to image ids not in 'images': {_first(orphans)}"
        )
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def _first(items: list[str], n: int = 3) -> str:
    """``a, b, c`` or ``a, b, c, ... (N in all)``: the first items of a list for a message."""
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _unusable_annotations(coco: COCO) -> tuple[list[str], list[str]]:
    """Annotations training cannot use: ``(zero or negative box size, category id not in 'categories')``,
    each as ``"annotation <id>: <why>"``."""
    listed = set(coco.getCatIds())
    degenerate, unknown = [], []
    for ann in coco.dataset["annotations"]:
        w, h = ann["bbox"][2:]
        if w <= 0 or h <= 0:
            degenerate.append(f"annotation {ann.get('id')}: bbox {ann['bbox']}")
        if ann["category_id"] not in listed:
            unknown.append(f"annotation {ann.get('id')}: category_id {ann['category_id']}")
    return degenerate, unknown


class _CocoDetection(CocoDetection):
    """torchvision ``CocoDetection`` on an already loaded ``COCO``, keeping only usable annotations
    (wanted categories, box of positive size, crowd boxes dropped when ``drop_crowd``)."""

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
                f"COCO image not found: {path} (image id {id}, listed in the annotation file); "
                "data.skip_bad_images=true leaves such images out"
            ) from err
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise CorruptDatasetError(
                f"{path}: cannot decode the image (image id {id}: {type(err).__name__}: {err}); "
                "data.skip_bad_images=true leaves such images out"
            ) from err

    def _load_target(self, id: int) -> list[Any]:
        return [
            a
            for a in super()._load_target(id)
            if a["category_id"] in self.cat_ids
            and a["bbox"][2] > 0
            and a["bbox"][3] > 0
            and not (self.drop_crowd and a.get("iscrowd", 0))
        ]


class CocoDetectionDataset(Dataset):
    """One split of a COCO-layout data set -> ``(image, target)`` (see the module docstring).

    ``coco`` (the pycocotools object of the split, all annotations, crowd included),
    ``ids`` (image ids in sample order) and ``label_to_cat_id`` are what evaluation needs.
    The set-up checks of the module docstring run here; ``skip_bad_images`` leaves out listed images
    that are missing (here) or do not decode (in :meth:`__getitems__`), ``strict_annotations`` makes
    unusable annotations an error.
    """

    def __init__(
        self,
        image_dir: str | Path,
        ann_file: str | Path,
        categories: Sequence[tuple[int, str]] = COCO_CATEGORIES,
        transforms: Any = None,
        drop_crowd: bool = True,
        max_images: int | None = None,
        skip_bad_images: bool = False,
        strict_annotations: bool = False,
    ):
        self.image_dir, self.ann_file = Path(image_dir), Path(ann_file)
        self.skip_bad_images = skip_bad_images
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
        self._report_unusable_annotations(strict_annotations)
        self.categories = tuple(categories)
        self.label_to_cat_id = [c for c, _ in self.categories]
        self.class_names = [n for _, n in self.categories]
        self.cat_id_to_label = {c: i for i, c in enumerate(self.label_to_cat_id)}
        ids = sorted(self.coco.imgs)
        self.ids = self._with_files(ids[:max_images] if max_images else ids)
        base = _CocoDetection(str(self.image_dir), self.coco, self.ids, set(self.label_to_cat_id), drop_crowd)
        self._ds = wrap_dataset_for_transforms_v2(base, target_keys={"image_id", "boxes", "labels"})
        self.transforms = transforms

    def _report_unusable_annotations(self, strict: bool) -> None:
        degenerate, unknown = _unusable_annotations(self.coco)
        if not degenerate and not unknown:
            return
        parts = [
            f"{len(found)} {what} ({_first(found)})"
            for found, what in (
                (degenerate, "with zero or negative box size"),
                (unknown, "with a category id not in 'categories'"),
            )
            if found
        ]
        message = f"{self.ann_file}: annotations {' and '.join(parts)}"
        if strict:
            raise CorruptDatasetError(f"{message} (data.strict_annotations=true)")
        log.warning("%s: dropped from training (data.strict_annotations=true makes this an error)", message)

    def _with_files(self, ids: list[int]) -> list[int]:
        """``ids`` whose listed file exists; a missing one is an error (``skip_bad_images``: left out)."""
        on_disk = set(os.listdir(self.image_dir))  # one listing, not one stat per image
        names = {i: self.coco.imgs[i]["file_name"] for i in ids}
        missing = [i for i in ids if names[i] not in on_disk and not (self.image_dir / names[i]).is_file()]
        if not missing:
            return ids
        listed = [f"{self.image_dir / names[i]} (id {i})" for i in missing]
        message = f"{len(missing)} image file(s) listed in {self.ann_file} are missing: {_first(listed)}"
        if not self.skip_bad_images:
            raise DatasetNotFoundError(f"{message}; data.skip_bad_images=true leaves them out")
        log.warning("%s; left out (data.skip_bad_images=true)", message)
        gone = set(missing)
        return [i for i in ids if i not in gone]

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

    def _seeded_item(self, index: int, seed: int | None) -> tuple[torch.Tensor, dict[str, Any]]:
        """``self[index]`` with the random transforms drawn from ``seed`` (torch's CPU generator is
        seeded for this sample and restored after, so nothing else's draws move)."""
        if seed is None:
            return self[index]
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self[index]

    def __getitems__(self, batch: Sequence[int] | SeededBatch) -> Any:
        """A batch as a list of samples; sample ``j`` of a seeded batch draws from
        ``derive_seed(SAMPLE, batch.seed, j)``. Unreadable images: a :class:`DataErrorValue`, or with
        ``skip_bad_images`` the batch without them, as :class:`SkippedSamples`."""
        indices, seed = batch if isinstance(batch, SeededBatch) else (batch, None)
        samples, skipped = [], []
        for j, index in enumerate(indices):
            try:
                samples.append(
                    self._seeded_item(index, None if seed is None else derive_seed(SAMPLE, seed, j))
                )
            except (DatasetNotFoundError, CorruptDatasetError) as err:
                if not self.skip_bad_images:
                    return DataErrorValue.of(err)
                skipped.append(str(err))
        if skipped and not samples:
            return DataErrorValue("corrupt", f"every image of a batch is unreadable: {_first(skipped)}")
        return SkippedSamples(samples, skipped) if skipped else samples


def collate(batch: Any) -> Any:
    """``[(image, target), ...] -> ([images], [targets])`` (torchvision detection models take lists);
    a :class:`DataErrorValue` passes through, a :class:`SkippedSamples` keeps its wrapper."""
    if isinstance(batch, DataErrorValue):
        return batch
    if isinstance(batch, SkippedSamples):
        return SkippedSamples(collate(batch.batch), batch.skipped)
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
    (no disk I/O); :meth:`setup` reads and checks the validation split for every stage, the
    training split for fit. ``val`` is also the ``test`` split (COCO's test-dev has no public
    annotations). ``{train,val}_max_images`` cut a
    split to its first N image ids (quick runs); ``val_split: train2017`` evaluates on the training
    images (overfit checks). ``shuffle_seed``: seed of the epoch orders and the augmentation
    (``None``: ``torch.initial_seed()``, the run's seed); ``skip_bad_images``, ``strict_annotations``:
    see the module docstring. Exact resume: as :class:`~crnn.data.CIFAR100DataModule` (the train
    loader starts at the batch Lightning numbers next; :mod:`crnn.data.sampling`), with each sample's
    transforms drawn from ``(seed, epoch, batch, position in batch)``.
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
        shuffle_seed: int | None = None,
        skip_bad_images: bool = False,
        strict_annotations: bool = False,
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
        self.shuffle_seed = shuffle_seed
        self.skip_bad_images, self.strict_annotations = bool(skip_bad_images), bool(strict_annotations)
        self.num_classes = len(self.selected)
        self.class_names = [n for _, n in self.selected]
        self.input_shape = (3, self.image_size, self.image_size)
        self.train_set: CocoDetectionDataset | None = None
        self.val_set: CocoDetectionDataset | None = None
        self._loaders: list[EpochLoader] = []

    def split_paths(self, split: str) -> tuple[Path, Path]:
        """``(image folder, annotation file)`` of a split such as ``train2017``."""
        return self.root / split, self.root / "annotations" / f"instances_{split}.json"

    def _dataset(self, split: str, train: bool, max_images: int | None) -> CocoDetectionDataset:
        image_dir, ann_file = self.split_paths(split)
        return CocoDetectionDataset(
            image_dir,
            ann_file,
            self.selected,
            build_transforms(self.image_size, train, self.hflip, self.iou_crop),
            drop_crowd=True,
            max_images=max_images,
            skip_bad_images=self.skip_bad_images,
            strict_annotations=self.strict_annotations,
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
        """Read and check the validation split (every stage) and the training split (``fit``), once
        each: a bad validation file stops ``fit`` here, before the first training step."""
        if self.val_set is None:
            self.val_set = self._dataset(self.val_split, False, self.val_max_images)
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = self._dataset(self.train_split, True, self.train_max_images)

    @property
    def skipped_images(self) -> list[str]:
        """Messages of the images left out of batches so far (``skip_bad_images``), all loaders."""
        return [m for loader in self._loaders for m in loader.skipped]

    def _loader(self, dataset: CocoDetectionDataset, batch_size: int, train: bool) -> EpochLoader:
        loader = epoch_loader(
            dataset,
            batch_size,
            train=train,
            trainer=self.trainer,
            shuffle_seed=self.shuffle_seed,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
        )
        self._loaders.append(loader)
        return loader

    def train_dataloader(self) -> EpochLoader:
        """Shuffled batches ``([image (3, h, w)], [target])``; see :mod:`crnn.data.sampling`."""
        if self.train_set is None:
            self.setup("fit")
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> EpochLoader:
        if self.val_set is None:
            self.setup("validate")
        return self._loader(self.val_set, self.val_batch_size, train=False)

    def test_dataloader(self) -> EpochLoader:
        return self.val_dataloader()
