"""A tiny COCO 2017 data set in the official layout, written by the tests.

``<root>/annotations/instances_{train,val}2017.json`` with the official 80 categories (ids 1..90
with gaps), ``<root>/train2017/*.jpg`` and ``<root>/val2017/*.jpg``: images of several sizes, one
grayscale JPEG (mode ``L``), one image without annotations, crowd boxes, categories at both ends of
the id range (1 = person, 90 = toothbrush) and in between (18 = dog).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from crnn.data.coco_categories import COCO_CATEGORIES

# (width, height, mode, [(category_id, [x, y, w, h], iscrowd), ...]) per image
TRAIN_IMAGES = [
    (96, 64, "RGB", [(1, [10, 8, 30, 40], 0), (18, [50, 20, 40, 30], 0)]),
    (64, 80, "RGB", [(90, [5, 5, 20, 20], 0), (1, [30, 30, 30, 45], 1)]),  # a crowd box
    (72, 72, "L", [(1, [20, 10, 30, 50], 0)]),  # grayscale JPEG
    (80, 60, "RGB", []),  # no annotations
    (120, 90, "RGB", [(18, [60, 40, 50, 45], 0), (90, [5, 50, 25, 30], 0), (1, [10, 5, 20, 30], 0)]),
    (50, 70, "RGB", [(1, [5, 10, 35, 55], 0)]),
]
VAL_IMAGES = [
    (96, 64, "RGB", [(1, [12, 6, 32, 44], 0), (18, [55, 25, 35, 30], 0), (1, [0, 0, 20, 20], 1)]),
    (70, 90, "L", [(90, [10, 20, 30, 30], 0)]),
    (64, 48, "RGB", []),
    (110, 80, "RGB", [(1, [40, 10, 40, 60], 0), (18, [5, 40, 30, 30], 0)]),
]
FIRST_ID = {"train2017": 1000, "val2017": 2000}


def _draw(width: int, height: int, mode: str, anns, rng: np.random.Generator) -> Image.Image:
    pixels = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for cat, (x, y, w, h), _ in anns:
        colour = {1: (230, 40, 40), 18: (40, 230, 40), 90: (40, 40, 230)}[cat]
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=colour)
    return image.convert(mode)


def write_coco_fixture(root: Path, splits: dict[str, list] | None = None, seed: int = 0) -> Path:
    """Write the fixture under ``root`` and return ``root``."""
    root = Path(root)
    splits = splits or {"train2017": TRAIN_IMAGES, "val2017": VAL_IMAGES}
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": c, "name": n, "supercategory": "thing"} for c, n in COCO_CATEGORIES]
    ann_id = 1
    for split, entries in splits.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for k, (width, height, mode, anns) in enumerate(entries):
            image_id = FIRST_ID.get(split, 3000) + k
            name = f"{image_id:012d}.jpg"
            _draw(width, height, mode, anns, rng).save(root / split / name, quality=95)
            images.append({"id": image_id, "file_name": name, "width": width, "height": height, "license": 1})
            for cat, bbox, crowd in anns:
                x, y, w, h = bbox
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": cat,
                        "bbox": [float(v) for v in bbox],
                        "area": float(w * h),
                        "iscrowd": crowd,
                        "segmentation": {"size": [height, width], "counts": "00"}
                        if crowd
                        else [[x, y, x + w, y, x + w, y + h, x, y + h]],
                    }
                )
                ann_id += 1
        data = {"info": {"description": "crnn test fixture"}, "images": images, "annotations": annotations}
        data["categories"] = categories
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def ground_truth_detections(ann_file: Path, shift: float = 0.0, score: float = 1.0) -> list[dict]:
    """The non-crowd annotations of ``ann_file`` as COCO results (boxes moved right by ``shift``)."""
    data = json.loads(Path(ann_file).read_text())
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": [a["bbox"][0] + shift, a["bbox"][1], a["bbox"][2], a["bbox"][3]],
            "score": score,
        }
        for a in data["annotations"]
        if not a["iscrowd"]
    ]
