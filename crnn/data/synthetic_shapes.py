"""``synthetic_shapes``: a generated detection data set in the official COCO layout.

Squares, circles and triangles (3 classes) of random size (``min_size``..``max_size`` px),
colour and position (non-overlapping, 0-4 per image, a few images empty) on textured backgrounds
(colour gradients, smooth noise blobs, stripes, plus pixel noise), written once as JPEGs with
``annotations/instances_{train,val}2017.json`` next to ``train2017/`` and ``val2017/``, so that
:class:`~crnn.data.coco.COCODataModule` and COCOeval read it exactly as they read COCO.

Deterministic: image ``i`` of a split is drawn from its own generator seeded by
``(seed, split, i)``. The generation settings are stored in ``<root>/synthetic_shapes.json``; a
folder made with other settings is regenerated. Generation writes to a temporary folder that is
renamed into place, so concurrent processes never see a half-written data set.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from crnn.data.coco import COCODataModule

log = logging.getLogger("crnn")

__all__ = ["SHAPE_CATEGORIES", "SyntheticShapesDataModule", "generate_synthetic_shapes"]

SHAPE_CATEGORIES: tuple[tuple[int, str], ...] = ((1, "square"), (2, "circle"), (3, "triangle"))
"""``(category_id, name)`` of the generated shapes."""

MARKER = "synthetic_shapes.json"
_SPLIT_SEED = {"train2017": 0, "val2017": 1}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured ``(size, size, 3)`` float background in [0, 255]."""
    kind = rng.integers(3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:  # linear gradient between two colours
        angle = rng.uniform(0, 2 * math.pi)
        t = np.cos(angle) * xx + np.sin(angle) * yy
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        img = c0 + (c1 - c0) * t[..., None]
    elif kind == 1:  # smooth noise blobs
        cells = int(rng.integers(3, 9))
        low = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC), dtype=np.float32)
    else:  # stripes of two colours
        angle = rng.uniform(0, math.pi)
        freq = rng.uniform(3, 12)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy))
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        img = c0 + (c1 - c0) * t[..., None]
    return img


def _shape(
    rng: np.random.Generator, kind: str, x0: float, y0: float, s: float
) -> tuple[list[float], float, list[float]]:
    """Polygon (flat xy list), area and COCO bbox [x, y, w, h] of a shape in the box (x0, y0, s)."""
    if kind == "square":
        poly = [x0, y0, x0 + s, y0, x0 + s, y0 + s, x0, y0 + s]
        return poly, s * s, [x0, y0, s, s]
    if kind == "circle":
        r, cx, cy = s / 2, x0 + s / 2, y0 + s / 2
        angles = np.linspace(0, 2 * math.pi, 24, endpoint=False)
        poly = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).ravel().tolist()
        return poly, math.pi * r * r, [x0, y0, s, s]
    # triangle: random rotation of an equilateral triangle, scaled so its bbox fits the s x s box
    rot = rng.uniform(0, 2 * math.pi)
    angles = rot + np.array([0, 2 * math.pi / 3, 4 * math.pi / 3])
    pts = np.stack([np.cos(angles), np.sin(angles)], 1)
    pts -= pts.min(0)
    pts *= s / pts.max()
    pts += [x0, y0]
    w, h = (pts.max(0) - pts.min(0)).tolist()
    x, y = pts.min(0).tolist()
    area = 0.5 * abs(np.cross(pts[1] - pts[0], pts[2] - pts[0]))
    return pts.ravel().tolist(), float(area), [x, y, w, h]


def _draw_image(rng: np.random.Generator, size: int, min_size: int, max_size: int, max_objects: int):
    bg = _background(rng, size)
    n = 0 if rng.random() < 0.05 else int(rng.integers(1, max_objects + 1))
    placed: list[tuple[float, float, float]] = []
    objects = []
    for _ in range(n):
        for _attempt in range(30):
            s = float(rng.uniform(min_size, max_size))
            x0, y0 = rng.uniform(0, size - s - 1, 2).tolist()
            if all(
                x0 + s + 2 < px or px + ps + 2 < x0 or y0 + s + 2 < py or py + ps + 2 < y0
                for px, py, ps in placed
            ):
                placed.append((x0, y0, s))
                label = int(rng.integers(len(SHAPE_CATEGORIES)))
                objects.append((label, x0, y0, s))
                break
    image = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    anns = []
    for label, x0, y0, s in objects:
        kind = SHAPE_CATEGORIES[label][1]
        poly, area, bbox = _shape(rng, kind, x0, y0, s)
        local = bg[int(y0) : int(y0 + s) + 1, int(x0) : int(x0 + s) + 1].reshape(-1, 3).mean(0)
        for _ in range(20):  # a colour that stands out from the background under the shape
            colour = rng.uniform(0, 255, 3)
            if np.abs(colour - local).sum() > 150:
                break
        fill = tuple(int(c) for c in colour)
        if kind == "circle":
            draw.ellipse([x0, y0, x0 + s, y0 + s], fill=fill)
        else:
            draw.polygon([(poly[i], poly[i + 1]) for i in range(0, len(poly), 2)], fill=fill)
        anns.append(
            {
                "category_id": SHAPE_CATEGORIES[label][0],
                "bbox": [round(v, 2) for v in bbox],
                "area": round(area, 2),
                "segmentation": [[round(v, 2) for v in poly]],
            }
        )
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), anns


def _write_split(folder: Path, split: str, count: int, settings: dict[str, Any]) -> None:
    (folder / split).mkdir(parents=True)
    images, annotations = [], []
    size = settings["image_size"]
    for i in range(count):
        rng = np.random.default_rng([settings["seed"], _SPLIT_SEED[split], i])
        image, anns = _draw_image(
            rng, size, settings["min_size"], settings["max_size"], settings["max_objects"]
        )
        image_id = i + 1
        name = f"{image_id:012d}.jpg"
        image.save(folder / split / name, quality=92)
        images.append({"id": image_id, "file_name": name, "width": size, "height": size})
        for a in anns:
            annotations.append(a | {"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0})
    data = {
        "info": {"description": "crnn synthetic_shapes", **settings},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": n, "supercategory": "shape"} for c, n in SHAPE_CATEGORIES],
    }
    (folder / "annotations").mkdir(exist_ok=True)
    (folder / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


def check_shape_sizes(image_size: int, min_size: int, max_size: int) -> None:
    """``ValueError`` naming the keys unless the shapes fit the generated images."""
    if not 4 <= min_size <= max_size < image_size - 2:
        raise ValueError(
            f"need 4 <= data.min_size ({min_size}) <= data.max_size ({max_size}) "
            f"< data.generated_size - 2 ({image_size - 2})"
        )


def generate_synthetic_shapes(
    root: str | Path,
    num_train: int = 1000,
    num_val: int = 200,
    image_size: int = 128,
    min_size: int = 12,
    max_size: int = 80,
    max_objects: int = 4,
    seed: int = 0,
) -> Path:
    """Write the data set to ``root`` unless it is already there with the same settings."""
    root = Path(root).expanduser()
    check_shape_sizes(image_size, min_size, max_size)
    settings = {
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": int(image_size),
        "min_size": int(min_size),
        "max_size": int(max_size),
        "max_objects": int(max_objects),
        "seed": int(seed),
        "version": 1,
    }
    marker = root / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == settings:
                return root
        except json.JSONDecodeError:
            pass
        log.warning("synthetic_shapes: %s was made with other settings; regenerating", root)
    elif root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} exists and is not a synthetic_shapes folder (no {MARKER}); choose another data.root"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        log.info("synthetic_shapes: generating %d train + %d val images in %s", num_train, num_val, root)
        _write_split(tmp, "train2017", settings["num_train"], settings)
        _write_split(tmp, "val2017", settings["num_val"], settings)
        (tmp / MARKER).write_text(json.dumps(settings))
        if marker.is_file():  # stale settings: replace
            old = root.with_name(f".{root.name}.old-{os.getpid()}")
            os.replace(root, old)
            shutil.rmtree(old, ignore_errors=True)
        elif root.exists():
            root.rmdir()
        try:
            os.replace(tmp, root)
        except OSError:
            # another process finished first: use its copy if it has our settings
            if not (marker.is_file() and json.loads(marker.read_text()) == settings):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


class SyntheticShapesDataModule(COCODataModule):
    """``data=synthetic_shapes``: :class:`COCODataModule` on the generated set (3 classes).

    The set is generated in :meth:`prepare_data` (and in :meth:`setup` if absent) under ``root``.
    """

    categories = SHAPE_CATEGORIES

    def __init__(
        self,
        root: str,
        image_size: int = 128,
        num_train: int = 1000,
        num_val: int = 200,
        generated_size: int = 128,
        min_size: int = 12,
        max_size: int = 80,
        max_objects: int = 4,
        seed: int = 0,
        **kwargs: Any,
    ):
        super().__init__(root=root, image_size=image_size, **kwargs)
        check_shape_sizes(generated_size, min_size, max_size)  # a config error, before any run starts
        self.generation = {
            "num_train": num_train,
            "num_val": num_val,
            "image_size": generated_size,
            "min_size": min_size,
            "max_size": max_size,
            "max_objects": max_objects,
            "seed": seed,
        }

    def prepare_data(self) -> None:
        generate_synthetic_shapes(self.root, **self.generation)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()  # returns at once when the set is there with these settings
        super().setup(stage)
