#!/usr/bin/env python
"""COCO box evaluation time, pycocotools vs faster-coco-eval, on synthetic ground truth and detections
(a benchmark, not a test).

Both evaluate the same data (``loadRes`` of the result list, each dict copied one level as
``loadRes`` adds keys to it, then ``evaluate`` + ``accumulate`` + ``summarize``, from the loaded
ground-truth ``COCO``); the script prints both times, the speed-up, the 12
COCOeval numbers of each, whether all 12 are identical and how many cells of the precision arrays
differ, and crnn's ``evaluate_detections`` (faster-coco-eval plus the F1 pass) for reference.

    python scripts/bench_coco_eval.py                       # 5,000 images x 100 detections
    python scripts/bench_coco_eval.py --images 108 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import time
from typing import Any

import numpy as np

from crnn.data.coco_categories import COCO_CATEGORIES

CATEGORY_IDS = tuple(cat_id for cat_id, _ in COCO_CATEGORIES)  # COCO's 80 (ids 1..90 with gaps)


def synthetic_coco(
    n_images: int, dets_per_image: int = 100, seed: int = 0
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(ground truth dataset dict, result list)``: 0-11 objects per 640x480 image (5% crowd, 2%
    flagged ``ignore``, all sizes, COCO's 80 categories), ``dets_per_image`` detections each (about
    half jittered copies of an object, 10% of those with a wrong class, the rest random boxes),
    scores rounded to 3 decimals so that ties occur."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for image_id in range(1, n_images + 1):
        width, height = 640, 480
        images.append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id}.jpg"})
        objects = []
        for _ in range(int(rng.integers(0, 12))):
            w, h = rng.uniform(2, 320), rng.uniform(2, 320)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            cat = int(rng.choice(CATEGORY_IDS))
            ann = {
                "id": len(anns) + 1,
                "image_id": image_id,
                "category_id": cat,
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": int(rng.random() < 0.05),
            }
            if rng.random() < 0.02:
                ann["ignore"] = 1
            anns.append(ann)
            objects.append((cat, x, y, w, h))
        for _ in range(dets_per_image):
            if objects and rng.random() < 0.5:
                cat, x, y, w, h = objects[int(rng.integers(len(objects)))]
                x, y = x + rng.normal(0, 0.1 * w), y + rng.normal(0, 0.1 * h)
                w, h = w * rng.uniform(0.8, 1.2), h * rng.uniform(0.8, 1.2)
                if rng.random() < 0.1:
                    cat = int(rng.choice(CATEGORY_IDS))
            else:
                w, h = rng.uniform(2, 320), rng.uniform(2, 320)
                x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
                cat = int(rng.choice(CATEGORY_IDS))
            dets.append(
                {
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [round(float(v), 2) for v in (x, y, w, h)],
                    "score": round(float(rng.random()), 3),
                }
            )
    categories = [{"id": cat_id, "name": name} for cat_id, name in COCO_CATEGORIES]
    return {"images": images, "annotations": anns, "categories": categories}, dets


def pycocotools_eval(gt, dets):
    """pycocotools' ``COCOeval``, evaluated, accumulated and summarized."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes([dict(d) for d in dets]), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def faster_eval(gt, dets):
    """faster-coco-eval's ``COCOeval_faster``, likewise."""
    from faster_coco_eval import COCOeval_faster

    ev = COCOeval_faster(
        gt, gt.loadRes([dict(d) for d in dets]), iouType="bbox", print_function=lambda *a: None
    )
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs of each (median reported)")
    args = parser.parse_args(argv)

    from faster_coco_eval import COCO as FasterCOCO
    from pycocotools.coco import COCO

    from crnn.tasks.coco_eval import STAT_NAMES, evaluate_detections

    dataset, dets = synthetic_coco(args.images, args.detections)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(dataset)
        gt.createIndex()
    fast_gt = FasterCOCO(copy.deepcopy(dataset), print_function=lambda *a: None)
    print(f"{args.images} images, {len(dataset['annotations'])} objects, {len(dets)} detections")
    # interleaved rounds: contention on a shared machine hits all alike; wall and CPU time of each
    runs = {
        "pycocotools": lambda: pycocotools_eval(gt, dets),
        "faster-coco-eval": lambda: faster_eval(fast_gt, dets),
        "crnn evaluate_detections": lambda: evaluate_detections(gt, dets),
    }
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    results = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            results[name] = run()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    pycocotools_run, faster_run, crnn_metrics = results.values()
    reference, faster = np.asarray(pycocotools_run.stats), np.asarray(faster_run.stats)

    print(f"{'':26s} {'wall s':>8s} {'CPU s':>8s}  x pycocotools (wall, CPU)")
    base_wall, base_cpu = float(np.median(wall["pycocotools"])), float(np.median(cpu["pycocotools"]))
    for name in runs:
        w, c = float(np.median(wall[name])), float(np.median(cpu[name]))
        print(f"{name:26s} {w:8.2f} {c:8.2f}  {base_wall / w:.1f}x, {base_cpu / c:.1f}x faster")
    print("(crnn evaluate_detections: faster-coco-eval + the F1 pass, from a pycocotools COCO,")
    print(" cyclic GC paused)")
    print(f"\n{'metric':6s} {'pycocotools':>12s} {'faster':>12s} {'crnn':>12s}")
    for i, name in enumerate(STAT_NAMES):
        print(f"{name:6s} {reference[i]:12.8f} {faster[i]:12.8f} {crnn_metrics[name]:12.8f}")
    identical = bool(np.array_equal(reference, faster))
    print(
        f"\nall 12 numbers identical: {identical}  (max |difference| {np.abs(reference - faster).max():.2e})"
    )
    # pycocotools' precision is tp / (tp + fp + np.spacing(1)), faster-coco-eval's (C++ accumulate)
    # tp / (tp + fp): where only true positives precede, 1 - 2.2e-16 against 1.0; a summary number
    # averaging such a cell can differ in its last bit
    precision = pycocotools_run.eval["precision"], faster_run.eval["precision"]
    differing = int(np.count_nonzero(precision[0] != precision[1]))
    print(
        f"precision cells (IoU x recall x class x area x max dets) differing: {differing} of "
        f"{precision[0].size} (max |difference| {np.abs(precision[0] - precision[1]).max():.2e})"
    )
    print(f"F1 {crnn_metrics['F1']:.6f} at score >= {crnn_metrics['F1_thresh']}")


if __name__ == "__main__":
    main()
