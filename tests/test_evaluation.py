"""Evaluation: hand-computed boxes, IoUs, PxAP and threshold policies; the component-tree box method
against the per-threshold definition; additive state (merge, a 2-process gloo all_reduce)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from acol.evaluation import (BoxEvaluator, MaskEvaluator, box_hits, box_ious_reference, compute_iou, contour_boxes,
                             normalize_scoremap, resize_and_normalize)
from acol.evaluation.boxes import to_uint8
from acol.evaluation.report import format_table

TAUS = np.arange(0, 1, 0.01)
DELTAS = np.array([0.3, 0.5, 0.7])


def both_methods(scoremap, gt, taus=TAUS, deltas=DELTAS):
    """(V1 IoU, V2 IoU) by the definition, after checking the fast method's hits agree with them."""
    v1, v2 = box_ious_reference(scoremap, gt, taus)
    hit1, hit2 = box_hits(scoremap, gt, taus, deltas)
    np.testing.assert_array_equal(hit1, v1 >= 0.5)
    np.testing.assert_array_equal(hit2, v2[None] >= deltas[:, None])
    return v1, v2


def blank(height, width):
    return np.zeros((height, width), np.float32)


# ---------------------------------------------------------------- score maps

def test_normalize_scoremap_min_max_copy():
    cam = np.array([[1.0, 3.0], [5.0, 9.0]])
    out = normalize_scoremap(cam)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.25], [0.5, 1.0]])
    assert cam[0, 0] == 1.0  # the input is untouched


@pytest.mark.parametrize("cam", [np.full((3, 4), 7.0), np.array([[0.0, np.nan], [1.0, 2.0]]),
                                 np.array([[0.0, np.inf], [1.0, 2.0]])])
def test_normalize_scoremap_flat_or_nonfinite_gives_zeros(cam):
    out = normalize_scoremap(cam)
    assert out.dtype == np.float32 and out.shape == cam.shape and not out.any()


def test_resize_and_normalize_bf16_cubic_then_minmax():
    low = torch.rand(2, 4, 6, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    out = resize_and_normalize(low, (8, 12))
    assert out.dtype == np.float32 and out.shape == (2, 8, 12)
    for i in range(2):
        expected = cv2.resize(low[i].float().numpy(), (12, 8), interpolation=cv2.INTER_CUBIC)
        expected = (expected - expected.min()) / (expected - expected.min()).max()
        np.testing.assert_allclose(out[i], expected, atol=1e-6)
        assert out[i].min() == 0.0 and out[i].max() == 1.0
    assert resize_and_normalize(low.float().numpy(), 5).shape == (2, 5, 5)


# ---------------------------------------------------------------- IoU

@pytest.mark.parametrize("a, b, iou", [
    ([2, 3, 5, 7], [2, 3, 5, 7], 1.0),          # identical
    ([4, 4, 4, 4], [4, 4, 4, 4], 1.0),          # one pixel: area 1 with the +1 convention
    ([0, 0, 1, 1], [3, 3, 4, 4], 0.0),          # disjoint
    ([0, 0, 1, 1], [1, 0, 2, 1], 2 / 6),        # touching: column x = 1 is shared (2 pixels)
    ([0, 0, 1, 1], [2, 0, 3, 1], 0.0),          # adjacent, no shared pixel
    ([0, 0, 3, 3], [1, 1, 2, 2], 4 / 16),       # containment
    ([0, 0, 4, 4], [2, 2, 6, 6], 9 / 41),       # partial overlap: 3x3 of two 5x5
])
def test_compute_iou_plus_one_convention(a, b, iou):
    assert compute_iou(np.array([a]), np.array([b]))[0, 0] == pytest.approx(iou)
    assert compute_iou(np.array([b]), np.array([a]))[0, 0] == pytest.approx(iou)


def test_compute_iou_is_all_pairs():
    ious = compute_iou(np.array([[0, 0, 1, 1], [0, 0, 3, 3]]), np.array([[0, 0, 1, 1], [1, 1, 2, 2], [9, 9, 9, 9]]))
    np.testing.assert_allclose(ious, [[1, 1 / 7, 0], [4 / 16, 4 / 16, 0]])


# ---------------------------------------------------------------- boxes from hand-drawn maps

def test_one_blob():
    cam = blank(10, 12)
    cam[2:5, 3:7] = 1.0  # rows 2..4, cols 3..6
    box1, boxes = contour_boxes(to_uint8(cam), 0)
    np.testing.assert_array_equal(box1, [3, 2, 7, 5])  # x1 = x_max + 1, y1 = y_max + 1
    np.testing.assert_array_equal(boxes, [[3, 2, 7, 5]])
    v1, v2 = both_methods(cam, [[3, 2, 7, 5]])
    assert (v1 == 1).all() and (v2 == 1).all()


def test_blob_on_the_border_is_clipped():
    cam = blank(6, 8)
    cam[3:6, 5:8] = 1.0
    np.testing.assert_array_equal(contour_boxes(to_uint8(cam), 0)[0], [5, 3, 7, 5])  # 8 -> 7, 6 -> 5
    both_methods(cam, [[5, 3, 7, 5]])


def test_two_blobs_v1_takes_the_largest_v2_all():
    cam = blank(12, 12)
    cam[1:7, 1:7] = 1.0   # 6x6
    cam[8:10, 9:11] = 1.0  # 2x2
    box1, boxes = contour_boxes(to_uint8(cam), 0)
    np.testing.assert_array_equal(box1, [1, 1, 7, 7])
    assert sorted(map(tuple, boxes.tolist())) == [(1, 1, 7, 7), (9, 8, 11, 10)]
    v1, v2 = both_methods(cam, [[9, 8, 11, 10]])  # the GT is the small blob
    assert (v1 == 0).all() and (v2 == 1).all()


def test_ring_with_a_hole():
    cam = blank(9, 9)
    cam[1:8, 1:8] = 1.0
    cam[3:6, 3:6] = 0.0  # a 3x3 hole in a ring two pixels thick
    box1, boxes = contour_boxes(to_uint8(cam), 0)
    np.testing.assert_array_equal(box1, [1, 1, 8, 8])  # the outer contour has the larger area
    # the hole's contour runs through the ring pixels around it: the hole's box grown by one
    assert sorted(map(tuple, boxes.tolist())) == [(1, 1, 8, 8), (2, 2, 7, 7)]
    v1, v2 = both_methods(cam, [[2, 2, 7, 7]])
    assert (v1 == 36 / 64).all() and (v2 == 1).all()


@pytest.mark.parametrize("cam", [blank(7, 9), np.full((7, 9), 0.4, np.float32)])
def test_empty_or_constant_map_gives_the_zero_box(cam):
    cam = normalize_scoremap(cam)  # a constant map normalises to zeros
    np.testing.assert_array_equal(contour_boxes(to_uint8(cam), 0)[1], [[0, 0, 0, 0]])
    v1, v2 = both_methods(cam, [[0, 0, 1, 1]])
    assert (v1 == 0.25).all() and (v2 == 0.25).all()


def test_threshold_is_strict_on_the_uint8_map():
    cam = blank(10, 10)
    cam[1:9, 1:9] = 0.5  # u8 127
    cam[4:6, 4:6] = 1.0  # u8 255
    taus = np.array([0.498, 0.499])  # cuts int(tau * 255) = 126, 127
    v1, _ = both_methods(cam, [[1, 1, 9, 9]], taus)
    # at cut 126 the big square is foreground (127 > 126); at cut 127 only the centre (127 > 127 fails)
    np.testing.assert_allclose(v1, [1.0, compute_iou(np.array([[4, 4, 6, 6]]), np.array([[1, 1, 9, 9]]))[0, 0]])


def test_multiple_gt_boxes_best_one_counts():
    cam = blank(12, 12)
    cam[1:7, 1:7] = 1.0
    v1, v2 = both_methods(cam, [[8, 8, 11, 11], [1, 1, 7, 7]])
    assert (v1 == 1).all() and (v2 == 1).all()


# ---------------------------------------------------------------- the fast method == the definition

def _gt_from_contours(rng, u8, count):
    """GT boxes near real contour boxes, so that IoUs fall on both sides of every threshold."""
    height, width = u8.shape
    gts = []
    for _ in range(count):
        _, boxes = contour_boxes(u8, int(rng.integers(0, max(int(u8.max()), 1))))
        box = boxes[rng.integers(len(boxes))] + rng.integers(-2, 3, 4)
        box[[0, 2]] = np.clip(box[[0, 2]], 0, width - 1)
        box[[1, 3]] = np.clip(box[[1, 3]], 0, height - 1)
        gts.append([box[0], box[1], max(box[0], box[2]), max(box[1], box[3])])
    return np.array(gts)


def _structured_maps(rng, count):
    """Random and structured maps, 16-48 pixels: noise, CAM-like blobs, rings, upsampled low-res
    maps, plateaus and ties, single pixels, equal-area twins, thin lines, few levels."""
    maps = []
    for i in range(count):
        height, width = rng.integers(16, 49, 2)
        yy, xx = np.mgrid[:height, :width]
        kind = i % 9
        if kind == 0:
            cam = rng.random((height, width))
        elif kind == 1:
            low = max(3, width // 8)
            grid = np.mgrid[:low, :low]
            cam = 0.03 * rng.random((low, low))
            for _ in range(rng.integers(1, 4)):
                c, s = rng.uniform(0, low, 2), rng.uniform(0.5, low / 3)
                cam += rng.uniform(0.3, 1) * np.exp(-((grid[0] - c[0]) ** 2 + (grid[1] - c[1]) ** 2) / (2 * s * s))
            cam = cv2.resize(cam.astype(np.float32), (int(width), int(height)), interpolation=cv2.INTER_CUBIC)
        elif kind == 2:
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            cam = np.cos(np.hypot(yy - cy, xx - cx) / rng.uniform(1, 4))
        elif kind == 3:
            low = rng.random(rng.integers(2, 7, 2)).astype(np.float32)
            cam = cv2.resize(low, (int(width), int(height)), interpolation=cv2.INTER_CUBIC)
        elif kind == 4:
            cam = np.floor(rng.random((height, width)) * rng.integers(2, 5))
        elif kind == 5:
            cam = (rng.random((height, width)) < 0.05) * rng.random((height, width))
        elif kind == 6:
            cam = np.zeros((height, width))
            blob = rng.random((3, 4)) + 0.5
            for _ in range(rng.integers(2, 4)):
                y, x = rng.integers(0, height - 3), rng.integers(0, width - 4)
                cam[y:y + 3, x:x + 4] = np.maximum(cam[y:y + 3, x:x + 4], blob)
        elif kind == 7:
            cam = np.zeros((height, width))
            for _ in range(rng.integers(1, 5)):
                y, x, length = rng.integers(0, height), rng.integers(0, width), rng.integers(2, 12)
                for k in range(length):
                    if 0 <= y + k < height and 0 <= x + k < width:
                        cam[y + k, x + k] = rng.uniform(0.2, 1)
                cam[y, max(0, x - length):x] = rng.uniform(0.2, 1)
        else:
            cam = np.round(rng.random((height, width)) * 3) * (rng.random((height, width)) < 0.7)
        maps.append(normalize_scoremap(cam))
    return maps


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (2, 2), (2, 5), (3, 3)])
def test_tiny_maps(shape):
    rng = np.random.default_rng(sum(shape))
    for trial in range(12):
        cam = normalize_scoremap(rng.random(shape) > 0.5 if trial % 3 == 0 else rng.random(shape))
        both_methods(cam, [[int(rng.integers(0, shape[1])), int(rng.integers(0, shape[0])), shape[1] - 1, shape[0] - 1]])


def test_fast_counts_equal_the_per_threshold_definition():
    rng = np.random.default_rng(0)
    maps = _structured_maps(rng, 270)
    gts = [_gt_from_contours(rng, to_uint8(m), int(rng.integers(1, 4))) for m in maps]
    top1, top5 = rng.random(len(maps)) < 0.6, rng.random(len(maps)) < 0.8
    iou_thresholds = (10, 30, 50, 70, 90)
    for interval in (0.001, 0.007):
        fast = BoxEvaluator(interval, iou_thresholds, method="fast")
        reference = BoxEvaluator(interval, iou_thresholds, method="reference")
        chosen = slice(None) if interval > 0.005 else slice(0, 90)
        for evaluator in (fast, reference):
            for m, g, t1, t5 in zip(maps[chosen], gts[chosen], top1[chosen], top5[chosen]):
                evaluator.accumulate(m[None], [g], t1[None], t5[None])
        for name, counts in reference.state.items():
            assert torch.equal(fast.state[name], counts), name
        assert 0 < int(reference.state["gt_known"].max()) < int(reference.state["num_images"])


def _full_size_cam(rng, noise):
    """A 224x224 CAM-like map: 1-3 Gaussian blobs on a 28x28 grid with uniform noise (whose
    near-zero background is full of small components and holes), bicubic-upsampled, min-max."""
    grid = np.mgrid[:28, :28].astype(np.float64)
    cam = noise * rng.random((28, 28))
    for _ in range(rng.integers(1, 4)):
        centre, scale = rng.uniform(4, 24, 2), rng.uniform(1.5, 6, 2)
        cam += rng.uniform(0.3, 1) * np.exp(-0.5 * (((grid[0] - centre[0]) / scale[0]) ** 2 + ((grid[1] - centre[1]) / scale[1]) ** 2))
    return resize_and_normalize(cam[None].astype(np.float32), 224)[0]


def test_fast_counts_equal_the_definition_on_full_size_cam_like_maps():
    rng = np.random.default_rng(7)
    maps = [_full_size_cam(rng, noise) for noise in (0.0, 0.02, 0.05, 0.2) for _ in range(2)]
    gts = [_gt_from_contours(rng, to_uint8(m), int(rng.integers(1, 3))) for m in maps]
    fast, reference = BoxEvaluator(0.001, method="fast"), BoxEvaluator(0.001, method="reference")
    for evaluator in (fast, reference):
        evaluator.accumulate(np.stack(maps), gts, np.ones(len(maps), bool), np.ones(len(maps), bool))
    for name, counts in reference.state.items():
        assert torch.equal(fast.state[name], counts), name


def test_nested_holes_and_components():
    # a ring with a hole holding another ring (with its own hole) and a dot in that: at cut 0 the
    # contours are 3 outer borders and 2 hole borders (each the hole's box grown by one pixel; the
    # inner hole's coincides with the inner ring's outer border)
    cam = blank(13, 13)
    cam[0:13, 0:13] = 1.0
    cam[2:11, 2:11] = 0.0
    cam[4:9, 4:9] = 1.0
    cam[5:8, 5:8] = 0.0
    cam[6, 6] = 1.0
    _, boxes = contour_boxes(to_uint8(cam), 0)
    assert sorted(map(tuple, boxes.tolist())) == [(0, 0, 12, 12), (1, 1, 12, 12), (4, 4, 9, 9), (4, 4, 9, 9),
                                                  (6, 6, 7, 7)]
    for gt in ([1, 1, 12, 12], [4, 4, 9, 9], [6, 6, 7, 7], [0, 0, 3, 3]):
        v1, v2 = both_methods(cam, [gt], deltas=np.array([0.3, 0.5, 0.7, 0.99]))
        assert (v1 == compute_iou(np.array([[0, 0, 12, 12]]), np.array([gt]))[0, 0]).all()  # the outer border
        assert v2[0] == (1.0 if gt != [0, 0, 3, 3] else 16 / 169)


def test_twin_components_of_equal_area_take_the_definition():
    # two equal squares: their contour areas tie, OpenCV's order decides V1; the GT is one of them
    cam = blank(10, 20)
    cam[2:6, 2:6] = 1.0
    cam[2:6, 12:16] = 1.0
    for gt in ([2, 2, 6, 6], [12, 2, 16, 6]):
        both_methods(cam, [gt])


def test_zero_area_ring_ties_with_its_hole():
    # a one-pixel diamond around a hole, with a spur: outer border and hole border both have area 2,
    # their boxes differ (the spur); the GT is the hole's box
    cam = blank(10, 8)
    for y, x in [(5, 3), (6, 2), (6, 4), (7, 3)] + [(k, 3) for k in range(5)]:
        cam[y, x] = 1.0
    assert sorted(map(tuple, contour_boxes(to_uint8(cam), 0)[1].tolist())) == [(2, 0, 5, 8), (2, 5, 5, 8)]
    v1, v2 = both_methods(cam, [[2, 5, 5, 8]])
    assert v2[0] == 1.0


def test_thresholds_up_to_one_and_out_of_range():
    cam = blank(8, 8)
    cam[2:5, 2:5] = 1.0
    v1, v2 = both_methods(cam, [[0, 0, 0, 0]], np.array([0.0, 0.5, 1.0]))  # tau 1: the empty mask
    assert v1[2] == v2[2] == 1.0 and v1[0] == 0.0
    with pytest.raises(ValueError, match="thresholds"):
        box_hits(cam, [[0, 0, 1, 1]], np.array([0.5, 1.5]), DELTAS)


# ---------------------------------------------------------------- BoxEvaluator

def test_v1_and_v2_metrics_differ_on_two_blobs():
    cam = blank(12, 12)
    cam[1:7, 1:7] = 1.0
    cam[8:10, 9:11] = 1.0
    evaluator = BoxEvaluator(0.01)
    evaluator.accumulate(cam[None], [np.array([[9, 8, 11, 10]])], np.array([True]), np.array([True]))
    metrics = evaluator.compute()
    assert metrics["maxboxacc"] == 0.0 and metrics["gt_known_loc@fixed"] == 0.0
    assert metrics["maxboxacc_v2"] == 100.0 and metrics["maxboxacc_iou70"] == 100.0


def test_threshold_policies_and_classification():
    evaluator = BoxEvaluator(0.25, (30, 50), fixed_threshold=0.25)  # taus 0, .25, .5, .75
    evaluator.load_state_dict({
        "num_images": torch.tensor(4), "num_boxed": torch.tensor(4), "top1_cls": torch.tensor(3),
        "top5_cls": torch.tensor(4), "gt_known": torch.tensor([1, 3, 2, 0]), "top1_loc": torch.tensor([1, 2, 2, 0]),
        "top5_loc": torch.tensor([1, 3, 2, 0]), "box_v2": torch.tensor([[2, 4, 3, 1], [1, 1, 3, 0]])})
    m = evaluator.compute(threshold=0.5)
    assert (m["top1_cls"], m["top5_cls"], m["num_images"]) == (75.0, 100.0, 4.0)
    assert m["fixed_cam_threshold"] == 0.25
    assert (m["gt_known_loc@fixed"], m["top1_loc@fixed"], m["top5_loc@fixed"]) == (75.0, 50.0, 75.0)
    assert m["best_cam_threshold"] == 0.25  # GT-known's own best tau
    assert (m["gt_known_loc@oracle"], m["top1_loc@oracle"], m["maxboxacc"]) == (75.0, 50.0, 75.0)
    assert m["val_cam_threshold"] == 0.5  # a tau chosen elsewhere, applied here
    assert (m["gt_known_loc@val"], m["top1_loc@val"], m["top5_loc@val"]) == (50.0, 50.0, 50.0)
    # V2: each IoU threshold takes its own best tau
    assert (m["maxboxacc_iou30"], m["best_cam_threshold_iou30"]) == (100.0, 0.25)
    assert (m["maxboxacc_iou50"], m["best_cam_threshold_iou50"]) == (75.0, 0.5)
    assert m["maxboxacc_v2"] == 87.5
    assert "gt_known_loc@val" not in evaluator.compute()
    curves = evaluator.box_acc_curves()
    np.testing.assert_array_equal(curves["thresholds"], [0, 0.25, 0.5, 0.75])
    np.testing.assert_array_equal(curves["box_acc_iou50"], [25, 25, 75, 0])


def test_nearest_grid_threshold_and_range_check():
    evaluator = BoxEvaluator(0.001)
    assert evaluator.compute(threshold=0.2004)["val_cam_threshold"] == pytest.approx(0.2)
    with pytest.raises(ValueError):
        evaluator.compute(threshold=1.0)


def test_flat_and_nan_maps_give_finite_metrics():
    maps = resize_and_normalize(np.stack([np.full((4, 4), 3.0), np.full((4, 4), np.nan)]), 16)
    boxes = [np.array([[2, 2, 9, 9]]), np.array([[0, 0, 0, 0]])]
    evaluator = BoxEvaluator(0.01)
    evaluator.accumulate(maps, boxes, np.array([True, False]), np.array([True, True]))
    metrics = evaluator.compute(threshold=0.3)
    assert all(np.isfinite(v) for v in metrics.values())
    # both maps are all zeros: the box (0, 0, 0, 0) matches the second image's GT exactly, the first not at all
    assert metrics["maxboxacc_v2"] == 50.0 and metrics["maxboxacc"] == 50.0
    assert all(np.isfinite(v) for v in BoxEvaluator().compute().values())  # no image yet


def test_input_validation():
    evaluator = BoxEvaluator(0.1)
    good = np.zeros((1, 5, 5), np.float32)
    flags = np.array([True])
    for maps in (good + 2, np.full((1, 5, 5), np.nan, np.float32), np.zeros((5, 5), np.float32)):
        with pytest.raises(ValueError):
            evaluator.accumulate(maps, [np.array([[0, 0, 1, 1]])], flags, flags)
    for boxes in (np.array([[3, 0, 1, 1]]), np.array([[-1, 0, 1, 1]])):  # no box at all is allowed: see below
        with pytest.raises(ValueError):
            evaluator.accumulate(good, [boxes], flags, flags)
    with pytest.raises(ValueError):
        evaluator.accumulate(good, [np.array([[0, 0, 1, 1]])] * 2, flags, flags)
    with pytest.raises(ValueError):
        BoxEvaluator(method="approximate")


# ---------------------------------------------------------------- PxAP

def test_pxap_by_hand():
    # bins with interval 0.5: [0, .5) [.5, 1) [1, 2) [2, 3]; foreground 0.9, 0.6; background 0.2, 0.7
    scores = np.array([[[0.9, 0.6], [0.2, 0.7]]], np.float32)
    fg = np.array([[[True, True], [False, False]]])
    evaluator = MaskEvaluator(0.5)
    evaluator.accumulate(scores, fg, np.zeros_like(fg))
    np.testing.assert_array_equal(evaluator.state["fg_hist"], [0, 2, 0, 0])
    np.testing.assert_array_equal(evaluator.state["bg_hist"], [1, 1, 0, 0])
    # from high to low thresholds: tp 0 0 2 2, fp 0 0 1 2 -> precision . . 2/3 1/2, recall 0 0 1 1
    assert evaluator.compute()["pxap"] == pytest.approx(100 * 2 / 3)
    # an ignored background pixel with a top score changes nothing; counted, it costs precision
    scores2 = np.array([[[0.95, 0.0], [0.0, 0.0]]], np.float32)
    bg_only = np.zeros_like(fg)
    ignored = MaskEvaluator(0.5)
    ignored.merge(evaluator)
    ignored.accumulate(scores2, bg_only, np.array([[[True, True], [True, True]]]))
    assert ignored.compute()["pxap"] == pytest.approx(100 * 2 / 3)
    counted = MaskEvaluator(0.5)
    counted.merge(evaluator)
    counted.accumulate(scores2[:, :1, :1], bg_only[:, :1, :1], bg_only[:, :1, :1])
    assert counted.compute()["pxap"] == pytest.approx(100 * 2 / 4)


def test_pxap_bins_match_np_histogram_and_no_foreground_is_zero():
    interval = 0.001
    evaluator = MaskEvaluator(interval)
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.random(5000), np.arange(0, 1, interval), [1.0, 0.0]]).astype(np.float32)
    expected, _ = np.histogram(scores, bins=evaluator.edges)
    np.testing.assert_array_equal(np.bincount(evaluator._bins(scores), minlength=len(expected)), expected)
    empty = MaskEvaluator(interval)
    empty.accumulate(scores.reshape(1, -1, 2)[:, :100], np.zeros((1, 100, 2), bool))
    assert empty.compute() == {"pxap": 0.0}


# ---------------------------------------------------------------- additive state

def _dataset(seed=0, count=6, size=24):
    """maps (count, size, size), GT boxes, top-1 / top-5 hits, foreground and ignore masks."""
    rng = np.random.default_rng(seed)
    maps = np.concatenate([resize_and_normalize(m[None], size) for m in _structured_maps(rng, count)])
    boxes = [_gt_from_contours(rng, to_uint8(m), 2) for m in maps]
    flags = rng.random((2, count)) < 0.7
    fg = maps > 0.5
    return maps, boxes, flags[0], flags[0] | flags[1], fg, rng.random(fg.shape) < 0.2


def _fill(data, part=slice(None)):
    maps, boxes, top1, top5, fg, ignore = data
    box, mask = BoxEvaluator(0.01), MaskEvaluator(0.01)
    box.accumulate(maps[part], boxes[part], top1[part], top5[part])
    mask.accumulate(maps[part], fg[part], ignore[part])
    return box, mask


def test_merge_and_state_dict_equal_one_pass():
    data = _dataset()
    box, mask = _fill(data)
    box_a, mask_a = _fill(data, slice(0, 2))
    box_b, mask_b = _fill(data, slice(2, None))
    box_a.merge(box_b)
    mask_a.merge(mask_b)
    for whole, merged in ((box, box_a), (mask, mask_a)):
        for name, counts in whole.state.items():
            assert torch.equal(merged.state[name], counts), name
    assert box_a.compute(threshold=0.4) == box.compute(threshold=0.4)
    restored = BoxEvaluator(0.01)
    restored.load_state_dict(box.state_dict())
    assert restored.compute() == box.compute()
    with pytest.raises(ValueError):
        box.merge(BoxEvaluator(0.02))


def _all_reduce_worker(rank, init_file, data, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        box, mask = _fill(data, slice(rank, None, 2))  # interleaved shards of unequal content
        box.all_reduce()
        mask.all_reduce()
        torch.save({"box": box.state_dict(), "mask": mask.state_dict()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_all_reduce_equals_one_pass(tmp_path):
    data = _dataset(seed=1, count=5)
    box, mask = _fill(data)
    mp.spawn(_all_reduce_worker, args=(str(tmp_path / "init"), data, str(tmp_path)), nprocs=2)
    for rank in range(2):
        reduced = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for whole, name in ((box, "box"), (mask, "mask")):
            for key, counts in whole.state.items():
                assert torch.equal(reduced[name][key], counts), (rank, name, key)


def test_all_reduce_without_process_group_is_a_no_op():
    box, _ = _fill(_dataset(count=2))
    before = box.state_dict()
    box.all_reduce()
    assert all(torch.equal(before[k], v) for k, v in box.state.items())


def test_images_without_boxes_count_for_classification_only():
    cam = blank(8, 8)
    cam[2:5, 2:5] = 1.0
    evaluator = BoxEvaluator(0.1)
    evaluator.accumulate(np.stack([cam, cam]), [np.array([[2, 2, 5, 5]]), np.zeros((0, 4))],
                         np.array([True, False]), np.array([True, True]))
    metrics = evaluator.compute()
    assert metrics["num_images"] == 2 and metrics["num_boxed"] == 1
    assert metrics["top1_cls"] == 50 and metrics["top5_cls"] == 100
    assert metrics["gt_known_loc@fixed"] == 100 and metrics["top1_loc@fixed"] == 100  # over the boxed image
    masks_only = BoxEvaluator(0.1)
    masks_only.accumulate(cam[None], [np.zeros((0, 4))], np.array([True]), np.array([True]))
    assert masks_only.compute() == {"num_images": 1.0, "top1_cls": 100.0, "top5_cls": 100.0}  # no box metrics


def test_summary_table_has_maxboxacc_at_each_iou_beside_v2():
    val = {"top1_cls": 80.0, "gt_known_loc@oracle": 50.0, "maxboxacc_iou30": 90.0, "maxboxacc_iou50": 60.0,
           "maxboxacc_iou70": 30.0, "maxboxacc_v2": 60.0, "pxap": 55.5}
    masks_only = {"pxap": 40.25}
    assert format_table([("val", val), ("test", masks_only)]) == (
        "| split | top-1 cls | GT-known loc @oracle | MaxBoxAcc@30 | MaxBoxAcc@50 | MaxBoxAcc@70 "
        "| MaxBoxAccV2 (oracle) | PxAP |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|\n"
        "| val | 80.00 | 50.00 | 90.00 | 60.00 | 30.00 | 60.00 | 55.50 |\n"
        "| test | - | - | - | - | - | - | 40.25 |")
    # the IoU thresholds are those of the metrics (eval.iou_thresholds), in ascending order
    other = {"maxboxacc_iou75": 1.0, "maxboxacc_iou5": 2.0, "maxboxacc_v2": 1.5}
    assert format_table([("test", other)]).splitlines()[0] == \
        "| split | MaxBoxAcc@5 | MaxBoxAcc@75 | MaxBoxAccV2 (oracle) |"
