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
* `box_hits`: the same decisions from a few passes over the map (`_Decisions.run`):

  1. Thresholds give at most 256 cuts, and cuts with no pixel value between them the same mask.
  2. The contours of a mask are the outer borders of its 8-connected components (a contour's box
     is its component's box) and the borders of its holes, the bounded 4-connected background
     components. Above the second highest regional maximum (`_second_peak`) the mask is a single
     component, whose box is the whole mask's. Below it, a few cuts take the definition; many
     take the component tree (`_ComponentTree`), built once, which gives every component's box at
     every cut.
  3. Holes: the Euler number of each mask (bit-quad counts, `_Windows`) minus its component count
     is its number of holes. Holes only add V2 candidates, so their boxes are read (from
     `cv2.findContours`) only at cuts where no component already passes every IoU threshold.
  4. V1 needs the contour of largest area. A component without holes has area Q4 + Q3 / 2 (its
     2x2 windows holding 4 or 3 of its pixels, `_ComponentTree.areas`); any contour's area is at
     most its box's span; a component with positive area outweighs each of its holes. Where these
     bounds leave the choice open (ties between different boxes, nested holes), the cut takes the
     definition.
"""
from __future__ import annotations

import threading

import cv2
import numpy as np

_CONTOUR_INDEX = 1 if cv2.__version__.split(".")[0] == "3" else 0
_NUM_LEVELS = 256
_MAX_PIXELS = 1 << 22  # keys (value << bits(index)) | index must fit in int32
_MAX_DIRECT_CUTS = 24  # below the second highest peak: up to this many cuts by the definition, else the tree
_SCRATCH = threading.local()


def _scratch(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A reused work array (per thread), zeros when first made. Fresh arrays of a few hundred kB
    come from new pages the OS faults in on every call; reusing them makes the per-map passes much
    faster. Callers overwrite what they read, except margins they never write (those stay zero)."""
    cache = _SCRATCH.__dict__.setdefault("arrays", {})
    key = (name, shape, np.dtype(dtype).str)
    if key not in cache:
        cache[key] = np.zeros(shape, dtype)
    return cache[key]


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


def box_hits(scoremap: np.ndarray, gt_boxes: np.ndarray, thresholds: np.ndarray,
             iou_thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which thresholds localise the image, without a contour pass per threshold.

    scoremap (H, W) float in [0, 1]; gt_boxes (K, 4); thresholds (T,); iou_thresholds (J,)
    fractions. Returns (v1, v2): v1 (T,) bool, V1 IoU >= 0.5; v2 (J, T) bool, V2 IoU >=
    iou_thresholds[j]. Identical to thresholding `box_ious_reference`.
    """
    deltas = np.asarray(iou_thresholds, np.float64)
    if scoremap.size > _MAX_PIXELS:  # beyond the tree's 32-bit keys: the definition
        v1, v2 = box_ious_reference(scoremap, gt_boxes, thresholds)
        return v1 >= 0.5, v2[None] >= deltas[:, None]
    u8 = to_uint8(scoremap)
    gt = np.asarray(gt_boxes, np.int64).reshape(-1, 4)
    cuts = threshold_cuts(u8, thresholds)
    if u8.max() == 0:  # every mask is empty: the box (0, 0, 0, 0)
        iou = compute_iou(np.zeros((1, 4), np.int64), gt).max()
        return np.full(len(cuts), iou >= 0.5), np.repeat((iou >= deltas)[:, None], len(cuts), axis=1)
    # cuts with no pixel value in between give the same mask: use the lowest such cut
    pixels = np.rint(cv2.calcHist([u8], [0], None, [_NUM_LEVELS], [0, _NUM_LEVELS]).ravel()).astype(np.int64)
    present = np.flatnonzero(pixels)
    cuts = np.where(cuts >= present[0], present[np.searchsorted(present, cuts, side="right") - 1], 0)
    v1, v2 = _Decisions(u8, gt, deltas).run(np.unique(cuts), pixels)
    return v1[cuts] >= 0.5, v2[cuts][None, :] >= deltas[:, None]


def _keys(u8: np.ndarray) -> np.ndarray:
    """(H + 2, W + 2) int32 scratch: the strict order key = (value << bits) | flat index inside,
    -1 on the one-pixel margin."""
    height, width = u8.shape
    n = height * width
    padded = _scratch("key", (height + 2, width + 2), np.int32)
    padded[[0, -1], :] = -1
    padded[:, [0, -1]] = -1
    key = padded[1:-1, 1:-1]
    np.left_shift(u8, max(1, (n - 1).bit_length()), out=key, dtype=np.int32)
    np.bitwise_or(key, np.arange(n, dtype=np.int32).reshape(height, width), out=key)
    return padded


def _second_peak(u8: np.ndarray, steps: int = 10) -> int:
    """An upper bound (exact when the plateaus are narrow) on the value of the second highest
    regional maximum of u8 (an 8-connected plateau whose outside neighbours are all lower), or -1.
    For cuts t >= it, `u8 > t` is a single component: each component holds a regional maximum
    above t, its highest plateau.

    Pixels with a higher neighbour are marked; the mark spreads to equal-valued neighbours (a pixel
    without a higher neighbour whose highest marked neighbour has its value). Unmarked pixels are
    regional maxima, or plateau pixels the `steps` spreading steps did not reach (which only
    raises the bound)."""
    ring = np.ones((3, 3), np.uint8)
    ring[1, 1] = 0
    marked = cv2.compare(u8, cv2.dilate(u8, ring), cv2.CMP_LT)
    for _ in range(steps):
        grown = cv2.bitwise_or(marked, cv2.compare(cv2.dilate(cv2.bitwise_and(u8, marked), ring), u8, cv2.CMP_EQ))
        if np.array_equal(grown, marked):
            break
        marked = grown
    # the plateau of the global maximum is not a second one
    h, w = u8.shape
    top = np.unravel_index(int(np.argmax(u8)), u8.shape)
    plateau = np.zeros((h + 2, w + 2), np.uint8)
    cv2.floodFill(u8, plateau, (int(top[1]), int(top[0])), 0, 0, 0,
                  8 | cv2.FLOODFILL_MASK_ONLY | cv2.FLOODFILL_FIXED_RANGE | (255 << 8))
    others = u8[(cv2.bitwise_or(marked, plateau[1:-1, 1:-1]) == 0) & (u8 > 0)]
    return int(others.max()) if len(others) else -1


def _both(*masks: np.ndarray) -> np.ndarray:
    """The AND of OpenCV 0/255 masks as a 0/1 uint8 array (viewable as bool)."""
    out = masks[0]
    for mask in masks[1:]:
        cv2.bitwise_and(out, mask, dst=out)
    np.bitwise_and(out, 1, out=out)
    return out


def _count_above(hist: np.ndarray) -> np.ndarray:
    """(..., K) histogram of values 0..K-1 -> (..., K) number of values > s, for each s."""
    return hist.sum(axis=-1, keepdims=True) - np.cumsum(hist, axis=-1)


class _ComponentTree:
    """The 8-connected components of `u8 > t` for every cut t, with per-root extents.

    Climbing to the highest neighbour in the strict order key = (value, index) takes each pixel
    to a local maximum, its root, through pixels at least as high, so a pixel above t is in its
    root's component of `u8 > t`. The climb runs along rows first (each pixel to the row maximum
    uphill of it), then between row maxima, so only those need pointer jumping. The basins'
    adjacency, each edge weighted by the best min(u8) over 8-adjacent pixel pairs across it, gives
    by Kruskal (descending weights, the higher peak surviving) each root's `parent` and the cut
    `dies`: the root stands alone for dies <= t < peak and is merged into its parent's component
    for t < dies.

    A component's box needs only the row maxima (for its top and bottom rows) and the column
    maxima (for its left and right columns): climbing along a row or column from any pixel keeps
    the row or column and stays in the component.
    """

    def __init__(self, u8: np.ndarray):
        self.u8 = u8
        height, width = u8.shape
        n = height * width
        self.shift = max(1, (n - 1).bit_length())
        padded = _keys(u8)
        key = padded[1:-1, 1:-1]
        self.key = key
        left, right = padded[1:-1, :-2], padded[1:-1, 2:]
        row_max = _both(cv2.compare(key, left, cv2.CMP_GT), cv2.compare(key, right, cv2.CMP_GT))
        col_max = _both(cv2.compare(key, padded[:-2, 1:-1], cv2.CMP_GT), cv2.compare(key, padded[2:, 1:-1], cv2.CMP_GT))
        # non-maxima climb towards their higher row neighbour; `segment` numbers the row maximum
        # each pixel reaches (maxima in raster order)
        climbs_right = cv2.subtract(_both(cv2.compare(right, left, cv2.CMP_GT)), row_max)
        segment = _scratch("segment", (n,), np.int32)
        np.cumsum(row_max.ravel(), dtype=np.int32, out=segment)
        segment += climbs_right.ravel()
        segment -= 1
        tops = np.flatnonzero(row_max.ravel().view(bool))
        # a row maximum climbs to its highest neighbour, all of which lie in the rows above and below
        ty, tx = np.divmod(tops, width)
        pos = (ty + 1) * (width + 2) + tx + 1
        row = width + 2
        flat_pad = padded.ravel()
        best = flat_pad[pos]
        for step in (-row - 1, -row, -row + 1, row - 1, row, row + 1):
            np.maximum(best, flat_pad[pos + step], out=best)
        up = segment[best & ((1 << self.shift) - 1)]
        while True:
            jumped = up[up]
            if np.array_equal(jumped, up):
                break
            up = jumped
        is_root = up == np.arange(len(tops))
        root_of_top = (np.cumsum(is_root, dtype=np.int32) - 1)[up]
        flat = u8.ravel()
        self.num_roots = int(is_root.sum())
        self.peak = flat[tops[is_root]].astype(np.int64)
        self.label = np.take(root_of_top, segment, out=_scratch("label", (n,), np.int32))
        self.row_entries = (root_of_top, flat[tops].astype(np.int64), ty)
        cols = np.flatnonzero(col_max.ravel().view(bool))
        self.col_entries = (self.label[cols], flat[cols].astype(np.int64), cols % width)
        self.parent, self.dies = self._kruskal(*self._edges())

    def _edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Basin adjacency (a, b, weight), weight = max over 8-adjacent pairs of min(u8), > 0."""
        h, w = self.u8.shape
        label = self.label.reshape(h, w)
        firsts, seconds, weights = [], [], []
        # adjacent pairs (dy, dx): the first pixels' rows and columns
        for dy, dx, rows, cols in ((0, 1, slice(0, h), slice(0, w - 1)), (1, 0, slice(0, h - 1), slice(0, w)),
                                   (1, 1, slice(0, h - 1), slice(0, w - 1)), (1, -1, slice(0, h - 1), slice(1, w))):
            if rows.stop <= rows.start or cols.stop <= cols.start:
                continue
            step = dy * w + dx
            second = (slice(rows.start + dy, rows.stop + dy), slice(cols.start + dx, cols.stop + dx))
            # on the full grid (the margin never written stays zero): min(u8) where the labels differ
            grid = _scratch(f"pairs{dy}{dx}", (h, w), np.uint8)
            cv2.bitwise_and(cv2.min(self.u8[rows, cols], self.u8[second]),
                            cv2.compare(label[rows, cols], label[second], cv2.CMP_NE), dst=grid[rows, cols])
            p = np.flatnonzero(grid.ravel() > 0)
            firsts.append(self.label[p])
            seconds.append(self.label[p + step])
            weights.append(grid.ravel()[p])
        a, b, weight = np.concatenate(firsts), np.concatenate(seconds), np.concatenate(weights)
        r = self.num_roots
        pair = np.minimum(a, b).astype(np.int64) * r + np.maximum(a, b)
        if r > 4096:  # too many roots for dense tables: sort
            key = np.unique(pair * _NUM_LEVELS + weight)
            pair = key // _NUM_LEVELS
            last = np.append(pair[1:] != pair[:-1], True)
            return pair[last] // r, pair[last] % r, key[last] % _NUM_LEVELS
        strongest = np.zeros(r * r, np.uint8)  # untouched pages of these tables cost nothing
        np.maximum.at(strongest, pair, weight)
        where = np.empty(r * r, np.int32)
        where[pair] = np.arange(len(pair), dtype=np.int32)
        pair = pair[where[pair] == np.arange(len(pair))]  # one entry per pair
        return pair // r, pair % r, strongest[pair].astype(np.int64)

    def _kruskal(self, lo: np.ndarray, hi: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(parent, dies) of every root from the basin edges, strongest first (union-find)."""
        r = self.num_roots
        order = np.argsort(-weight, kind="stable")
        rank = ((self.peak << self.shift) | np.arange(r)).tolist()  # of two roots, the higher peak survives
        find, parent, dies = list(range(r)), list(range(r)), [0] * r
        for a, b, w in zip(lo[order].tolist(), hi[order].tolist(), weight[order].tolist()):
            while find[a] != a:
                find[a] = find[find[a]]
                a = find[a]
            while find[b] != b:
                find[b] = find[find[b]]
                b = find[b]
            if a == b:
                continue
            if rank[a] < rank[b]:
                a, b = b, a
            find[b] = parent[b] = a
            dies[b] = w
        return np.array(parent), np.array(dies, np.int64)

    def count(self) -> np.ndarray:
        """(256,) number of components of `u8 > t`: roots with dies <= t < peak."""
        born = np.cumsum(np.bincount(self.dies, minlength=_NUM_LEVELS + 1))
        gone = np.cumsum(np.bincount(self.peak, minlength=_NUM_LEVELS + 1))
        return (born - gone)[:_NUM_LEVELS]

    def representative(self, roots: np.ndarray, cuts: np.ndarray) -> np.ndarray:
        """Elementwise, the root whose component holds `roots` at `cuts`: the first ancestor standing
        alone (dies <= cut). `dies` decreases up every chain, so binary lifting finds it."""
        jumps = [self.parent]
        while not np.array_equal(jumps[-1][jumps[-1]], jumps[-1]):
            jumps.append(jumps[-1][jumps[-1]])
        x = roots
        climb = self.dies[x] > cuts
        for jump in reversed(jumps):
            y = jump[x]
            x = np.where(climb & (self.dies[y] > cuts), y, x)
        return np.where(climb, self.parent[x], x)

    def instances(self, need: np.ndarray) -> dict[str, np.ndarray]:
        """Every component of `u8 > t` for the cuts t with need[t].

        Returns cut (n,) and the extents x_min, y_min, x_max, y_max (n,) of its pixels. Each root
        gets one cell per needed cut below its peak, highest first; a running min over its row and
        column maxima, placed at the first cell they reach, gives its extents at every cell; one
        scatter per extent then reduces the roots to the component holding them.
        """
        peak = self.peak
        wanted = np.flatnonzero(need)[::-1]  # needed cuts, descending
        at_or_above = np.searchsorted(-wanted, -np.arange(_NUM_LEVELS + 1), side="right")  # needed cuts >= s
        first = at_or_above[peak]  # index in `wanted` of a root's first cell
        ncell = len(wanted) - first
        start = np.concatenate([[0], np.cumsum(ncell)])
        table = np.full((4, int(start[-1])), 1 << 20, np.int64)
        for row, (roots, values, coord) in ((0, self.row_entries), (2, self.col_entries)):
            at = at_or_above[values] - first[roots]  # the first cell below the entry's value
            keep = at < ncell[roots]
            at = start[roots[keep]] + at[keep]
            np.minimum.at(table[row], at, coord[keep])
            np.minimum.at(table[row + 1], at, -coord[keep])
        owner = np.repeat(np.arange(self.num_roots), ncell)
        cut = wanted[first[owner] + np.arange(len(owner)) - start[owner]]
        # a root's first cell holds its own peak pixel, so the running min restarts at every root
        bias = owner * (1 << 22)
        table = np.minimum.accumulate(table - bias, axis=1) + bias
        rep = self.representative(owner, cut)
        alone = np.flatnonzero(rep == owner)
        slot = np.empty(self.num_roots * _NUM_LEVELS, np.int64)
        slot[owner[alone] * _NUM_LEVELS + cut[alone]] = np.arange(len(alone))
        component = slot[rep * _NUM_LEVELS + cut]
        merged = np.full((4, len(alone)), 1 << 20, np.int64)
        for i in range(4):
            np.minimum.at(merged[i], component, table[i])
        self._cells = (owner, cut, component, len(alone))
        return {"cut": cut[alone], "y_min": merged[0], "y_max": -merged[1], "x_min": merged[2], "x_max": -merged[3]}

    def areas(self, windows: "_Windows", cuts: np.ndarray) -> np.ndarray:
        """Twice the contour area (2 Q4 + Q3) of each component of the last `instances` call at
        `cuts` (sorted; 0 elsewhere), were it without holes: the windows holding 4 or 3 of its
        pixels, counted per root in buckets between consecutive cuts."""
        owner, cut, component, count = self._cells
        key = self.key
        h, w = self.u8.shape
        area2 = np.zeros(count, np.int64)
        if h < 2 or w < 2:  # no window inside the image: every contour has zero area
            return area2
        top = _scratch("window_top", (h - 1, w - 1), np.int32)
        cv2.max(key[:-1, :-1], key[:-1, 1:], dst=top)
        cv2.max(top, key[1:, :-1], dst=top)
        cv2.max(top, key[1:, 1:], dst=top)
        np.bitwise_and(top, (1 << self.shift) - 1, out=top)
        # the root of each window's highest pixel, which is in the mask whenever 3 of the 4 are
        buckets = len(cuts) + 1
        base = np.take(self.label, top, out=_scratch("window_owner", (h - 1, w - 1), np.int32))
        base *= buckets
        index = _scratch("window_index", (h - 1, w - 1), np.int32)
        bucket = np.searchsorted(cuts, np.arange(_NUM_LEVELS)).astype(np.uint8)  # value v > cuts[k] iff bucket > k
        hist = sum(np.bincount(np.add(base, cv2.LUT(x, bucket), out=index).ravel(), minlength=self.num_roots * buckets)
                   for x in (windows.s3_inner, windows.s4_inner))
        above = _count_above(hist.reshape(self.num_roots, buckets))[:, :-1]  # (roots, cuts): values > cuts[k]
        at = np.searchsorted(cuts, cut)
        keep = at < len(cuts)
        keep[keep] = cuts[at[keep]] == cut[keep]
        area2 += np.rint(np.bincount(component[keep], weights=above[owner[keep], at[keep]], minlength=count)).astype(np.int64)
        return area2


class _Windows:
    """The sorted values s1 >= s2 >= s3 >= s4 of every 2x2 window of the zero-padded map.

    For each cut t they count, over the mask `u8 > t`: `euler`, the Euler number of the
    8-connected foreground (Gray's bit quads: (Q1 - Q3 - 2 QD) / 4 = components - holes), and
    `area2`, twice the summed areas of the hole-free components (2 Q4 + Q3 = #{s4 > t} + #{s3 > t}).
    With G_k(t) = #{s_k > t} (windows holding k pixels of the mask or more), Q1 = G1 - G2,
    Q3 = G3 - G4, and G1 + G2 + G3 + G4 = 4 x (mask pixels): each pixel lies in four windows.
    """

    def __init__(self, u8: np.ndarray, pixels: np.ndarray):
        padded = cv2.copyMakeBorder(u8, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
        a, b, c, d = padded[:-1, :-1], padded[:-1, 1:], padded[1:, :-1], padded[1:, 1:]
        lo_ad, hi_ad, lo_bc, hi_bc = cv2.min(a, d), cv2.max(a, d), cv2.min(b, c), cv2.max(b, c)
        s2 = cv2.max(cv2.min(hi_ad, hi_bc), cv2.max(lo_ad, lo_bc))
        s3 = cv2.min(cv2.max(lo_ad, lo_bc), cv2.min(hi_ad, hi_bc))
        s4 = cv2.min(lo_ad, lo_bc)
        # the two highest pixels on a diagonal: with exactly those two in the mask, a QD window
        diagonal = cv2.bitwise_or(cv2.compare(lo_ad, hi_bc, cv2.CMP_GT), cv2.compare(lo_bc, hi_ad, cv2.CMP_GT))
        hist = [cv2.calcHist([x], [0], None, [_NUM_LEVELS], [0, _NUM_LEVELS]) for x in (s2, s3, s4)]
        hist += [cv2.calcHist([x], [0], diagonal, [_NUM_LEVELS], [0, _NUM_LEVELS]) for x in (s2, s3)]
        g2, g3, g4, g2d, g3d = _count_above(np.rint(np.stack([x.ravel() for x in hist])).astype(np.int64))
        # 4 E = Q1 - Q3 - 2 QD = (4 G_pixels - G2 - G3 - G4) - G2 - G3 + G4 - 2 (G2d - G3d)
        self.euler = _count_above(pixels) - (g2 + g3 + g2d - g3d) // 2
        self.area2 = g3 + g4
        self.s3_inner, self.s4_inner = s3[1:-1, 1:-1], s4[1:-1, 1:-1]


class _Decisions:
    """The V1 and V2 hits of one map at its distinct cuts (see `box_hits`)."""

    def __init__(self, u8: np.ndarray, gt: np.ndarray, deltas: np.ndarray):
        self.u8, self.gt, self.deltas = u8, gt, deltas

    def _iou(self, boxes: np.ndarray) -> np.ndarray:
        return compute_iou(boxes, self.gt).max(axis=1)

    def _whole_boxes(self, levels: np.ndarray) -> np.ndarray:
        """(L, 4) bounding box of the whole mask at each cut, from row and column maxima."""
        edges = []
        for profile in (self.u8.max(axis=0), self.u8.max(axis=1)):
            size = len(profile)
            first = np.searchsorted(np.maximum.accumulate(profile), levels, side="right")
            last = size - 1 - np.searchsorted(np.maximum.accumulate(profile[::-1]), levels, side="right")
            edges.append((first, np.minimum(last + 1, size - 1)))
        (x0, x1), (y0, y1) = edges
        return np.stack([x0, y0, x1, y1], axis=1)

    def run(self, levels: np.ndarray, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """levels: sorted distinct cuts; pixels: (256,) histogram of u8 -> (V1 IoU, best V2 IoU),
        (256,) each, indexed by cut (the best V2 IoU may stop short of exact once above every delta)."""
        u8, deltas = self.u8, self.deltas
        v1 = np.full(_NUM_LEVELS, -1.0)  # V1 IoU per cut, -1 while undecided
        v2 = np.full(_NUM_LEVELS, -1.0)  # best IoU per cut over the contours seen so far
        # Above the second highest local maximum only one root is alive: one component. Below it,
        # a few cuts go to the definition; many call for the component tree.
        second = _second_peak(u8)
        below = levels[levels < second]
        tree = None
        if len(below) > _MAX_DIRECT_CUTS:
            tree = _ComponentTree(u8)
            count = tree.count()
        else:
            self._direct(below, v1, v2)
            levels = levels[levels >= second]
            count = np.ones(_NUM_LEVELS, np.int64)
        windows = _Windows(u8, pixels)
        holes = count - windows.euler
        single = count[levels] == 1
        iou_whole = self._iou(self._whole_boxes(levels[single]))
        v2[levels[single]] = iou_whole
        # a lone component is the largest contour, unless it has zero area and holes could tie
        sure = (holes[levels[single]] == 0) | (windows.area2[levels[single]] > 0)
        v1[levels[single][sure]] = iou_whole[sure]
        undecided = set(levels[single][~sure].tolist())
        several = levels[count[levels] >= 2]
        if len(several):
            undecided |= self._components(tree, windows, holes, several, v1, v2)
        # holes only add V2 candidates: they matter where no component passes every IoU threshold yet
        holey = levels[(holes[levels] > 0) & (v2[levels] < deltas.max())]
        if len(holey):
            self._holes(holey, v2)
        if undecided:
            self._direct(np.array(sorted(undecided)), v1, np.full(_NUM_LEVELS, -1.0))
        return v1, v2

    def _direct(self, cuts: np.ndarray, v1: np.ndarray, v2: np.ndarray) -> None:
        """Set v1 and v2 at `cuts` by the definition (one contour pass each, IoUs in one go)."""
        if len(cuts) == 0:
            return
        largest, every = zip(*(contour_boxes(self.u8, cut) for cut in cuts.tolist()))
        v1[cuts] = self._iou(np.stack(largest))
        starts = np.cumsum([0] + [len(boxes) for boxes in every[:-1]])
        v2[cuts] = np.maximum.reduceat(self._iou(np.concatenate(every)), starts)

    def _components(self, tree: _ComponentTree, windows: _Windows, holes: np.ndarray, cuts: np.ndarray,
                    v1: np.ndarray, v2: np.ndarray) -> set[int]:
        """Score the components at cuts with several of them; return the cuts whose V1 stays open."""
        height, width = self.u8.shape
        need = np.zeros(_NUM_LEVELS, bool)
        need[cuts] = True
        comp = tree.instances(need)
        cut = comp["cut"]
        iou = self._iou(np.stack([comp["x_min"], comp["y_min"], np.minimum(comp["x_max"] + 1, width - 1),
                                  np.minimum(comp["y_max"] + 1, height - 1)], axis=1))
        np.maximum.at(v2, cut, iou)
        # Bounds: a contour's area is at most the span of its component's box (pixel centres); the
        # widest component's area is at least the total (`area2` / 2) minus the other spans.
        span = (comp["x_max"] - comp["x_min"]) * (comp["y_max"] - comp["y_min"])
        order = np.lexsort((-span, cut))
        cut_o, span_o, iou_o = cut[order], span[order], iou[order]
        first = np.flatnonzero(np.append(True, cut_o[1:] != cut_o[:-1]))
        second = span_o[first + 1]  # every cut here has two components at least
        lower2 = windows.area2[cut_o[first]] - 2 * (np.add.reduceat(span_o, first) - span_o[first])
        sure = (lower2 > 2 * second) & (lower2 > 0)
        v1[cut_o[first][sure]] = iou_o[first][sure]
        left = cut_o[first][~sure]
        if len(left) == 0:
            return set()
        # Exact areas where the bounds did not decide. Without holes the largest area wins (ties:
        # fine if the tied boxes score the same). With holes, only a component with positive area,
        # alone at the top and above every other component's span, is sure to be the largest.
        pick = np.isin(cut, left)
        area2 = tree.areas(windows, left)[pick]
        cut, iou, span = cut[pick], iou[pick], span[pick]
        best = np.full(_NUM_LEVELS, -1)
        np.maximum.at(best, cut, area2)
        top = area2 == best[cut]
        lo_iou, hi_iou = np.full(_NUM_LEVELS, np.inf), np.full(_NUM_LEVELS, -np.inf)
        np.minimum.at(lo_iou, cut[top], iou[top])
        np.maximum.at(hi_iou, cut[top], iou[top])
        other = np.zeros(_NUM_LEVELS, np.int64)
        np.maximum.at(other, cut[~top], 2 * span[~top])
        lone = np.bincount(cut[top], minlength=_NUM_LEVELS) == 1
        done = np.where(holes[left] == 0, lo_iou[left] == hi_iou[left],
                        lone[left] & (best[left] > other[left]) & (best[left] > 0))
        v1[left[done]] = hi_iou[left[done]]
        return set(left[~done].tolist())

    def _holes(self, cuts: np.ndarray, v2: np.ndarray) -> None:
        """Add the IoUs of the hole contours at `cuts` to v2 (holes: the contours with a parent in
        OpenCV's two-level hierarchy; their boxes as in the definition)."""
        height, width = self.u8.shape
        for cut in cuts.tolist():
            _, mask = cv2.threshold(self.u8, cut, 255, cv2.THRESH_BINARY)
            contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)[-2:]
            holes = np.flatnonzero(hierarchy[0, :, 3] >= 0)
            rects = np.array([cv2.boundingRect(contours[i]) for i in holes], np.int64).reshape(-1, 4)
            boxes = np.stack([rects[:, 0], rects[:, 1], np.minimum(rects[:, 0] + rects[:, 2], width - 1),
                              np.minimum(rects[:, 1] + rects[:, 3], height - 1)], axis=1)
            v2[cut] = max(v2[cut], self._iou(boxes).max())
