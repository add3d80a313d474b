"""COCO box evaluation with faster-coco-eval (a maintained drop-in COCOeval, C++ matching and
accumulation, the same 12 numbers as pycocotools: tests/test_coco_eval.py), shared by training,
``crnn-eval`` and the tests.

- :func:`to_coco_detections`: model outputs (xyxy boxes, contiguous labels) -> COCO results
  (``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``).
- :func:`evaluate_detections`: COCOeval (``iouType="bbox"``) over the given images and categories
  -> ``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl`` (pycocotools' 12
  summary numbers, -1 where undefined, e.g. no small objects) plus ``F1`` (micro-averaged over
  classes, at the score threshold that maximises it, IoU 0.5, area all, 100 detections per image)
  and ``F1_thresh``. An empty result list gives 0 (not a crash); COCOeval's printing goes to the
  ``crnn`` logger. ``python scripts/bench_coco_eval.py`` times it against pycocotools.
- :func:`gather_detections`: all processes' results, deduplicated per image (distributed samplers
  repeat images to even out shards).
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from faster_coco_eval import COCO, COCOeval_faster

log = logging.getLogger("crnn")

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
"""Names of ``COCOeval.stats`` in order."""


def to_coco_detections(
    image_id: int,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    label_to_cat_id: Sequence[int],
    scale: tuple[float, float] = (1.0, 1.0),
) -> list[dict[str, Any]]:
    """One image's detections as COCO results.

    ``boxes`` (N, 4) xyxy in model-input pixels; ``scale = (sx, sy)`` maps them to the original
    image (original size / input size); ``labels`` are contiguous (index into ``label_to_cat_id``).
    """
    if len(boxes) == 0:
        return []
    b = boxes.detach().float().cpu().clone()
    b[:, 0::2] *= scale[0]
    b[:, 1::2] *= scale[1]
    b[:, 2:] -= b[:, :2]
    cat = [int(label_to_cat_id[i]) for i in labels.detach().cpu().tolist()]
    return [
        {
            "image_id": int(image_id),
            "category_id": c,
            "bbox": [round(v, 2) for v in box],
            "score": round(s, 5),
        }
        for box, s, c in zip(b.tolist(), scores.detach().float().cpu().tolist(), cat, strict=False)
    ]


def _as_faster_coco(coco: Any) -> COCO:
    """faster-coco-eval's ``COCO`` of a ground truth given as one, or as a pycocotools ``COCO`` (its
    ``dataset``, the annotation dicts copied one level: evaluation writes flags into them)."""
    if isinstance(coco, COCO):
        return coco
    dataset = dict(coco.dataset, annotations=[dict(a) for a in coco.dataset.get("annotations", [])])
    return COCO(dataset, print_function=log.debug)


def f1_at_best_threshold(coco_eval: COCOeval_faster, iou: float = 0.5) -> tuple[float, float, float, float]:
    """``(F1, score threshold, precision, recall)`` maximising F1 at IoU ``iou`` (area all, 100
    detections per image and category, as COCOeval keeps), all categories pooled.

    faster-coco-eval keeps its per-image results in C++ (no ``evalImgs``); what it returns is
    ``eval["matched"]``, the ``"<dt id>_<gt id>"`` pairs its matching made, merged over all IoU
    thresholds and area ranges. A second C++ matching restricted to the one IoU threshold ``iou``,
    area all and the largest detection limit gives exactly COCOeval's matches at ``iou``; it reuses
    the first pass's prepared annotations and box IoUs, so only the C++ matching runs again. As in
    COCOeval, a detection matched to an ignored ground truth (crowd) is ignored, every other kept
    detection that is not matched is a false positive, and the positives are the ground truths that
    are not ignored. The detection bookkeeping is numpy over all detections at once.

    ``coco_eval``: an evaluated bbox COCOeval (its prepared annotations and box IoUs are reused).
    """
    coco_gt, coco_dt = coco_eval.cocoGt, coco_eval.cocoDt
    ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=log.debug)
    # reuse what the first pass built: its C++ annotation sets (filled by _prepare for the same
    # images and categories), the (image, category) pairs with both, and their box IoUs
    ev.gt_dataset, ev.dt_dataset = coco_eval.gt_dataset, coco_eval.dt_dataset
    ev._nonempty_iou_pairs = coco_eval._nonempty_iou_pairs
    ev._prepare = lambda: None
    ev.computeIoU = lambda img_id, cat_id: coco_eval.ious[img_id, cat_id]
    p = ev.params
    p.imgIds, p.catIds = list(coco_eval.params.imgIds), list(coco_eval.params.catIds)
    p.iouThrs = np.array([iou])
    max_dets = p.maxDets[-1]
    p.maxDets = [max_dets]
    area_lo, area_hi = p.areaRng[p.areaRngLbl.index("all")]
    p.areaRng, p.areaRngLbl = [[area_lo, area_hi]], ["all"]
    ev.evaluate()
    ev.accumulate()

    imgs, cats = set(p.imgIds), set(p.catIds)
    gts = [g for g in coco_gt.dataset["annotations"] if g["image_id"] in imgs and g["category_id"] in cats]
    # after evaluation a ground truth's "ignore" is COCOeval's flag (its "iscrowd")
    npos = sum(not (g["ignore"] or g.get("iscrowd", 0)) and area_lo <= g["area"] <= area_hi for g in gts)
    dts = coco_dt.dataset["annotations"]
    if npos == 0 or not dts:
        return 0.0, 0.0, 0.0, 0.0
    # (N,) per detection, in the order COCOeval sees them
    dt_id = np.fromiter((d["id"] for d in dts), np.int64, len(dts))
    image = np.fromiter((d["image_id"] for d in dts), np.int64, len(dts))
    cat = np.fromiter((d["category_id"] for d in dts), np.int64, len(dts))
    score = np.fromiter((d["score"] for d in dts), np.float64, len(dts))
    area = np.fromiter((d["area"] for d in dts), np.float64, len(dts))
    evaluated = np.isin(image, list(imgs)) & np.isin(cat, list(cats))
    # COCOeval keeps the max_dets best of each image and category (a stable sort by score)
    order = np.lexsort((-score, cat, image))
    order = order[evaluated[order]]
    group_start = np.r_[True, (image[order][1:] != image[order][:-1]) | (cat[order][1:] != cat[order][:-1])]
    start_of = np.maximum.accumulate(np.where(group_start, np.arange(len(order)), 0))
    kept = order[np.arange(len(order)) - start_of < max_dets]

    pairs = [key.split("_") for key in ev.eval["matched"]]
    matched_dt = np.array([int(d) for d, _ in pairs], dtype=np.int64)
    matched_gt = [int(g) for _, g in pairs]
    gt_ignored = np.array(
        [
            bool(coco_gt.anns[g]["ignore"]) or not area_lo <= coco_gt.anns[g]["area"] <= area_hi
            for g in matched_gt
        ],
        dtype=bool,
    )
    # per kept detection: matched (to which kind of ground truth) or not
    by_id = np.argsort(dt_id[kept], kind="stable")
    where = by_id[np.searchsorted(dt_id[kept], matched_dt, sorter=by_id)] if len(matched_dt) else []
    tp = np.zeros(len(kept), dtype=bool)
    ignore = ~((area_lo <= area[kept]) & (area[kept] <= area_hi))  # unmatched outside the area range
    ignore[where] = gt_ignored  # a matched detection follows its ground truth
    tp[where] = ~gt_ignored
    s, tp = score[kept][~ignore], tp[~ignore]
    if len(s) == 0:
        return 0.0, 0.0, 0.0, 0.0
    order = np.argsort(-s, kind="stable")
    s = s[order]
    tp_cum = np.cumsum(tp[order])
    fp_cum = np.arange(1, len(s) + 1) - tp_cum
    # a threshold keeps all detections scoring >= it: only the last of a run of equal scores counts
    last = np.r_[s[1:] != s[:-1], True]
    precision = tp_cum[last] / np.maximum(tp_cum[last] + fp_cum[last], 1)
    recall = tp_cum[last] / npos
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1))
    return float(f1[best]), float(s[last][best]), float(precision[best]), float(recall[best])


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused, as it was before afterwards.

    An evaluation allocates a few dicts and lists per detection (500,000 for 5,000 images), none of
    them in reference cycles; every collection the allocations trigger traverses all of them again
    (about 40% of the evaluation time, measured by ``scripts/bench_coco_eval.py``).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def evaluate_detections(
    coco_gt: Any,
    detections: Sequence[Mapping[str, Any]],
    image_ids: Iterable[int] | None = None,
    cat_ids: Iterable[int] | None = None,
) -> dict[str, float]:
    """COCOeval bbox metrics of ``detections`` against ``coco_gt`` (a pycocotools or
    faster-coco-eval ``COCO``), computed by faster-coco-eval (the same numbers as pycocotools').

    ``image_ids``: the images evaluated (default: all of ``coco_gt``); detections on other images
    are dropped. ``cat_ids``: the categories evaluated (default: all of ``coco_gt``). Returns
    :data:`STAT_NAMES` plus ``F1``, ``F1_thresh``, ``F1_precision``, ``F1_recall``,
    ``num_detections`` and ``per_class_AP``: ``{category id: AP}`` (IoU .50:.95, area all, 100
    detections; ``None`` for a category without ground truth), what COCOeval's ``AP`` averages.
    With no detections every metric is 0.
    """
    img_ids = sorted(set(int(i) for i in image_ids)) if image_ids is not None else sorted(coco_gt.getImgIds())
    cats = sorted(set(int(c) for c in cat_ids)) if cat_ids is not None else sorted(coco_gt.getCatIds())
    keep_imgs, keep_cats = set(img_ids), set(cats)
    dets = [d for d in detections if int(d["image_id"]) in keep_imgs and int(d["category_id"]) in keep_cats]
    zero = {name: 0.0 for name in STAT_NAMES} | {
        "F1": 0.0,
        "F1_thresh": 0.0,
        "F1_precision": 0.0,
        "F1_recall": 0.0,
    }
    if not dets or not img_ids:
        log.info("COCO eval: no detections on %d images -> AP 0", len(img_ids))
        return zero | {"num_detections": 0.0, "per_class_AP": dict.fromkeys(cats, 0.0)}
    with _cyclic_gc_paused():
        gt = _as_faster_coco(coco_gt)
        dt = gt.loadRes([dict(d) for d in dets])  # loadRes adds keys (id, area) to the dicts it gets
        coco_eval = COCOeval_faster(gt, dt, iouType="bbox", print_function=log.debug)
        coco_eval.params.imgIds = img_ids
        coco_eval.params.catIds = cats
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.print_function = log.info  # the summary table
        coco_eval.summarize()
        out = {name: float(v) for name, v in zip(STAT_NAMES, coco_eval.stats, strict=True)}
        f1, thresh, prec, rec = f1_at_best_threshold(coco_eval, 0.5)
        out.update(F1=f1, F1_thresh=thresh, F1_precision=prec, F1_recall=rec, num_detections=float(len(dets)))
    out["per_class_AP"] = per_class_ap(coco_eval)
    return out


def per_class_ap(coco_eval: COCOeval_faster) -> dict[int, float | None]:
    """``{category id: AP}`` of an accumulated bbox COCOeval: its precision ``(T iou, R recall, K
    categories, A areas, M max detections)`` at area ``all`` and the last detection limit, averaged
    over the defined IoU x recall cells as ``summarize()`` does; ``None`` where undefined."""
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]  # (T, R, K)
    out: dict[int, float | None] = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        cells = precision[:, :, k]
        cells = cells[cells > -1]
        out[int(cat_id)] = float(cells.mean()) if cells.size else None
    return out


def gather_detections(per_image: Mapping[int, list[dict[str, Any]]]) -> dict[int, list[dict[str, Any]]]:
    """Merge ``{image_id: detections}`` of all processes (every process gets the union).

    Images seen by several processes (padding of a distributed sampler) are kept once.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return dict(per_image)
    world = torch.distributed.get_world_size()
    if world == 1:
        return dict(per_image)
    parts: list[Any] = [None] * world
    torch.distributed.all_gather_object(parts, dict(per_image))
    merged: dict[int, list[dict[str, Any]]] = {}
    for part in parts:
        for image_id, dets in part.items():
            merged.setdefault(int(image_id), dets)
    return merged
