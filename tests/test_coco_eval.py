"""crnn.tasks.coco_eval on faster-coco-eval: the 12 numbers equal pycocotools', F1 equals an
independent computation from pycocotools' per-image results."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from crnn.tasks.coco_eval import STAT_NAMES, evaluate_detections

_spec = importlib.util.spec_from_file_location(
    "bench_coco_eval", Path(__file__).parents[1] / "scripts" / "bench_coco_eval.py"
)
bench_coco_eval = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_coco_eval)


def pycocotools_eval(dataset, dets, img_ids=None, cat_ids=None) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(dataset)
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(dets)), iouType="bbox")
        if img_ids is not None:
            ev.params.imgIds = img_ids
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def reference_f1(ev: COCOeval) -> tuple[float, float]:
    """Best pooled F1 and its threshold from pycocotools' ``evalImgs`` at IoU 0.5, area all, 100
    detections, by brute force over every distinct score as the threshold."""
    t = list(ev.params.iouThrs).index(0.5)
    dets, npos = [], 0  # (score, is true positive)
    for e in ev.evalImgs:
        if e is None or e["aRng"] != ev.params.areaRng[0] or e["maxDet"] != 100:
            continue
        npos += int(np.sum(~np.asarray(e["gtIgnore"], dtype=bool)))
        for score, match, ignore in zip(e["dtScores"], e["dtMatches"][t], e["dtIgnore"][t], strict=True):
            if not ignore:
                dets.append((score, match > 0))
    best = (0.0, 0.0)
    for thresh in sorted({s for s, _ in dets}):
        kept = [tp for s, tp in dets if s >= thresh]
        tp = sum(kept)
        precision, recall = tp / len(kept), tp / npos
        f1 = 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)
        if f1 > best[0]:
            best = (f1, thresh)
    return best


def assert_same_stats(metrics: dict[str, float], reference: COCOeval) -> None:
    """Equal up to the last bit of a double: pycocotools' precision is ``tp / (tp + fp +
    np.spacing(1))``, faster-coco-eval's (its C++ accumulate) ``tp / (tp + fp)``, so a cell where only
    true positives precede is 1 - 2.2e-16 in one and 1.0 in the other (seen: 2.8e-17 in APs)."""
    np.testing.assert_allclose([metrics[n] for n in STAT_NAMES], reference.stats, rtol=0, atol=1e-15)


def crnn_eval(dataset, dets, **kwargs) -> dict[str, float]:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(dataset)
        gt.createIndex()
    return evaluate_detections(gt, dets, **kwargs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numbers_equal_pycocotools_and_f1_equals_reference(seed):
    dataset, dets = bench_coco_eval.synthetic_coco(40, 30, seed=seed)
    assert any(a["iscrowd"] for a in dataset["annotations"]) and any(
        "ignore" in a for a in dataset["annotations"]
    )
    reference = pycocotools_eval(dataset, dets)
    metrics = crnn_eval(dataset, dets)
    assert_same_stats(metrics, reference)
    f1, thresh = reference_f1(reference)
    assert metrics["F1"] == pytest.approx(f1, abs=1e-12) and metrics["F1_thresh"] == thresh
    assert 0.0 < f1 < 1.0


def test_restricted_images_and_categories_equal_pycocotools():
    dataset, dets = bench_coco_eval.synthetic_coco(30, 20, seed=3)
    img_ids, cat_ids = list(range(1, 31, 2)), [1, 18, 90]
    reference = pycocotools_eval(dataset, dets, img_ids, cat_ids)
    metrics = crnn_eval(dataset, dets, image_ids=img_ids, cat_ids=cat_ids)
    assert_same_stats(metrics, reference)
    f1, thresh = reference_f1(reference)
    assert metrics["F1"] == pytest.approx(f1, abs=1e-12) and metrics["F1_thresh"] == thresh


def test_more_than_100_detections_per_image_and_category():
    """COCOeval keeps the 100 best per image and category: F1 must drop the same ones."""
    dataset, dets = bench_coco_eval.synthetic_coco(4, 300, seed=4)
    reference = pycocotools_eval(dataset, dets)
    metrics = crnn_eval(dataset, dets)
    assert_same_stats(metrics, reference)
    assert metrics["F1"] == pytest.approx(reference_f1(reference)[0], abs=1e-12)


def test_per_class_ap_equals_pycocotools_for_each_category_alone():
    """Each category's AP equals pycocotools' AP evaluated on that category alone; their mean over
    the categories with ground truth is COCOeval's AP."""
    dataset, dets = bench_coco_eval.synthetic_coco(30, 20, seed=4)
    metrics = crnn_eval(dataset, dets)
    per_class = metrics["per_class_AP"]
    with_gt = {a["category_id"] for a in dataset["annotations"]}
    for cat_id in sorted(with_gt)[:5]:
        reference = pycocotools_eval(dataset, dets, cat_ids=[cat_id])
        assert per_class[cat_id] == pytest.approx(reference.stats[0], abs=1e-12), cat_id
    defined = [ap for ap in per_class.values() if ap is not None]
    assert 0 < len(defined) <= len(with_gt)  # a category whose boxes are all crowd / ignored: None
    assert np.mean(defined) == pytest.approx(metrics["AP"], abs=1e-12)
