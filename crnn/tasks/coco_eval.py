"""COCO box evaluation with pycocotools, shared by training, ``crnn-eval`` and the tests.

- :func:`to_coco_detections`: model outputs (xyxy boxes, contiguous labels) -> COCO results
  (``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``).
- :func:`evaluate_detections`: COCOeval (``iouType="bbox"``) over the given images and categories
  -> ``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl`` (pycocotools' 12
  summary numbers, -1 where undefined, e.g. no small objects) plus ``F1`` (micro-averaged over
  classes, at the score threshold that maximises it, IoU 0.5, area all, 100 detections per image)
  and ``F1_thresh``. An empty result list gives 0 (not a crash); COCOeval's printing goes to the
  ``crnn`` logger.
- :func:`gather_detections`: all processes' results, deduplicated per image (distributed samplers
  repeat images to even out shards).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

log = logging.getLogger("crnn")

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
"""Names of ``COCOeval.stats`` in order."""


@contextlib.contextmanager
def stdout_to_log(level: int = logging.INFO):
    """Run a block with its ``print`` output sent to the ``crnn`` logger instead of stdout."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        text = buffer.getvalue().rstrip()
        if text:
            log.log(level, "%s", text)


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


def load_results(coco_gt: COCO, detections: Sequence[Mapping[str, Any]]) -> COCO:
    """``COCO.loadRes`` for bbox results that also accepts an empty list."""
    if detections:
        with stdout_to_log(logging.DEBUG):
            return coco_gt.loadRes(copy.deepcopy(list(detections)))
    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset.get("images", [])), "categories": [], "annotations": []}
    coco_dt.dataset["categories"] = copy.deepcopy(coco_gt.dataset.get("categories", []))
    with stdout_to_log(logging.DEBUG):
        coco_dt.createIndex()
    return coco_dt


def f1_at_best_threshold(coco_eval: COCOeval, iou: float = 0.5) -> tuple[float, float, float, float]:
    """``(F1, score threshold, precision, recall)`` maximising F1 at IoU ``iou`` (area all, most
    detections per image), all evaluated categories pooled. Uses the matches of
    ``coco_eval.evaluate()`` (crowd and ignored boxes handled as COCOeval does)."""
    p = coco_eval.params
    t = int(np.argmin(np.abs(np.asarray(p.iouThrs) - iou)))
    area_all = list(p.areaRng[p.areaRngLbl.index("all")])
    scores, tps, fps, npos = [], [], [], 0
    for e in coco_eval.evalImgs:
        if e is None or list(e["aRng"]) != area_all:
            continue
        npos += int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
        if len(e["dtScores"]) == 0:
            continue
        matched = np.asarray(e["dtMatches"])[t] > 0
        ignored = np.asarray(e["dtIgnore"])[t].astype(bool)
        scores.append(np.asarray(e["dtScores"])[~ignored])
        tps.append(matched[~ignored])
        fps.append(~matched[~ignored])
    if npos == 0 or not scores:
        return 0.0, 0.0, 0.0, 0.0
    s = np.concatenate(scores)
    order = np.argsort(-s, kind="mergesort")
    s = s[order]
    tp = np.cumsum(np.concatenate(tps)[order])
    fp = np.cumsum(np.concatenate(fps)[order])
    if len(s) == 0:
        return 0.0, 0.0, 0.0, 0.0
    # a threshold keeps all detections scoring >= it: only the last of a run of equal scores counts
    last = np.r_[s[1:] != s[:-1], True]
    precision = tp[last] / np.maximum(tp[last] + fp[last], 1)
    recall = tp[last] / npos
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1))
    return float(f1[best]), float(s[last][best]), float(precision[best]), float(recall[best])


def evaluate_detections(
    coco_gt: COCO,
    detections: Sequence[Mapping[str, Any]],
    image_ids: Iterable[int] | None = None,
    cat_ids: Iterable[int] | None = None,
) -> dict[str, float]:
    """COCOeval bbox metrics of ``detections`` against ``coco_gt``.

    ``image_ids``: the images evaluated (default: all of ``coco_gt``); detections on other images
    are dropped. ``cat_ids``: the categories evaluated (default: all of ``coco_gt``). Returns
    :data:`STAT_NAMES` plus ``F1``, ``F1_thresh``, ``F1_precision``, ``F1_recall`` and
    ``num_detections``. With no detections every metric is 0.
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
        return zero | {"num_detections": 0.0}
    coco_dt = load_results(coco_gt, dets)
    coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
    coco_eval.params.imgIds = img_ids
    coco_eval.params.catIds = cats
    with stdout_to_log():
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    out = {name: float(v) for name, v in zip(STAT_NAMES, coco_eval.stats, strict=False)}
    f1, thresh, prec, rec = f1_at_best_threshold(coco_eval, 0.5)
    out.update(F1=f1, F1_thresh=thresh, F1_precision=prec, F1_recall=rec, num_detections=float(len(dets)))
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
