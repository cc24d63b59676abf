"""Boxes from score maps at every CAM threshold, as wsolevaluation extracts them, and their IoUs.

The protocol (clovaai/wsolevaluation, `compute_bboxes_from_scoremaps`): for a score map in [0, 1]
and a threshold tau, `u8 = (scoremap * 255).astype(uint8)`, the mask is `u8 > int(tau *
u8.max())` (the "cut"), the candidate boxes are the bounding rectangles of `cv2.findContours(mask,
RETR_TREE, CHAIN_APPROX_SIMPLE)` as (x, y, x + w, y + h) with x1, y1 clipped to W - 1, H - 1, and no
contour gives the single box (0, 0, 0, 0). V1 keeps the contour of largest `cv2.contourArea` (the
first in OpenCV's order on ties); V2 keeps them all. An image's IoU at tau is the max over its
candidate boxes and its GT boxes, with the +1 pixel convention.

Two implementations with identical results:

* `box_ious_reference`: the definition, one `cv2.findContours` per threshold.
* `box_hits`: every contour box at every cut from a component tree built once per map
  (`acol.evaluation.component_tree`, compiled with numba); thresholds give at most 256 cuts. The
  few cuts where areas cannot tell the largest contour (equal areas with different boxes, holes
  that could tie) take the definition.
"""
from __future__ import annotations

import sys

import cv2
import numpy as np

from acol.dist import is_main_process
from acol.evaluation.component_tree import UNDECIDED, cut_ious

_CONTOUR_INDEX = 1 if cv2.__version__.split(".")[0] == "3" else 0


def to_uint8(scoremap: np.ndarray) -> np.ndarray:
    """(H, W) float map in [0, 1] -> the uint8 image wsolevaluation thresholds: (map * 255) truncated."""
    return (scoremap * 255).astype(np.uint8)


def threshold_cuts(u8: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The integer cut `int(tau * u8.max())` of every tau (mask: u8 > cut), shape (T,) int64."""
    return (np.asarray(thresholds, np.float64) * int(u8.max())).astype(np.int64)


def compute_iou(boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """(A, 4) x (B, 4) x0y0x1y1 integer boxes -> (A, B) float64 IoU, +1 pixel convention.

    Areas are (x1 - x0 + 1) * (y1 - y0 + 1); the intersection likewise, clamped at 0; a
    non-positive union gives IoU 0 (wsolevaluation `calculate_multiple_iou`).
    """
    a = np.asarray(boxes, np.int64)[:, None, :]
    b = np.asarray(gt_boxes, np.int64)[None, :, :]
    iw = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    ih = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = iw * ih
    union = ((a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
             + (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1) - inter)
    ok = union > 0
    return np.where(ok, inter / np.where(ok, union, 1), 0.0)


def contour_boxes(u8: np.ndarray, cut: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the mask `u8 > cut` by the definition: (V1 box (4,), V2 boxes (k, 4)), int64."""
    height, width = u8.shape
    _, mask = cv2.threshold(u8, cut, 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[_CONTOUR_INDEX]
    if len(contours) == 0:
        empty = np.zeros((1, 4), np.int64)
        return empty[0], empty
    rects = np.array([cv2.boundingRect(c) for c in contours], np.int64).reshape(-1, 4)
    boxes = np.stack([rects[:, 0], rects[:, 1], np.minimum(rects[:, 0] + rects[:, 2], width - 1),
                      np.minimum(rects[:, 1] + rects[:, 3], height - 1)], axis=1)
    largest = max(range(len(contours)), key=lambda i: cv2.contourArea(contours[i]))
    return boxes[largest], boxes


def box_ious_reference(scoremap: np.ndarray, gt_boxes: np.ndarray,
                       thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The definition, one `cv2.findContours` per threshold: (V1 IoU (T,), V2 IoU (T,)) float64.

    scoremap: (H, W) float in [0, 1]; gt_boxes: (K, 4) x0y0x1y1 in the map's pixel grid.
    """
    u8 = to_uint8(scoremap)
    gt = np.asarray(gt_boxes, np.int64).reshape(-1, 4)
    largest, every = zip(*(contour_boxes(u8, int(cut)) for cut in threshold_cuts(u8, thresholds)))
    v1 = compute_iou(np.stack(largest), gt).max(axis=1)
    starts = np.cumsum([0] + [len(boxes) for boxes in every[:-1]])
    v2 = np.maximum.reduceat(compute_iou(np.concatenate(every), gt).max(axis=1), starts)
    return v1, v2


def announce_compile() -> None:
    """Before `cut_ious` first runs in a process: one line on stderr when numba will compile it, i.e. when
    numba's on-disk cache (`cache=True`: __pycache__ next to component_tree.py, or NUMBA_CACHE_DIR) holds
    no valid copy; it does after the first evaluation on a machine, until component_tree.py or numba
    changes. Reads numba's cache index (an internal; an unknown layout counts as not cached)."""
    try:
        cached = bool(cut_ious._cache._cache_file._load_index())
    except Exception:  # noqa: BLE001 - numba's internals moved: say it may compile
        cached = False
    if not cached and is_main_process():
        print("compiling the box evaluator with numba (once per machine, about 30-90 s on a busy CPU; "
              "cached for later runs) ...", file=sys.stderr, flush=True)


def box_hits(scoremap: np.ndarray, gt_boxes: np.ndarray, thresholds: np.ndarray,
             iou_thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which thresholds localise the image, without a contour pass per threshold.

    scoremap (H, W) float in [0, 1]; gt_boxes (K >= 1, 4); thresholds (T,) in [0, 1];
    iou_thresholds (J,) fractions. Returns (v1, v2): v1 (T,) bool, V1 IoU >= 0.5; v2 (J, T) bool,
    V2 IoU >= iou_thresholds[j]. Identical to thresholding `box_ious_reference`.
    """
    thresholds = np.asarray(thresholds, np.float64)
    if thresholds.size and not (0 <= thresholds.min() and thresholds.max() <= 1):
        raise ValueError(f"CAM thresholds must lie in [0, 1]; got {thresholds.min()} .. {thresholds.max()}")
    if scoremap.size >= 2 ** 31:
        raise ValueError(f"score maps of {scoremap.size} pixels are beyond the int32 indices of box_hits")
    deltas = np.asarray(iou_thresholds, np.float64)
    u8 = np.ascontiguousarray(to_uint8(scoremap))
    gt = np.ascontiguousarray(np.asarray(gt_boxes, np.int64).reshape(-1, 4))
    cuts = threshold_cuts(u8, thresholds)
    if not cut_ious.signatures:  # not compiled in this process yet
        announce_compile()
    v1, v2 = cut_ious(u8, gt, cuts, float(deltas.max(initial=0.0)))
    for cut in np.unique(cuts[v1 == UNDECIDED]).tolist():  # the few cuts the areas leave open
        v1[cuts == cut] = compute_iou(contour_boxes(u8, cut)[0][None], gt).max()
    return v1 >= 0.5, v2[None, :] >= deltas[:, None]
