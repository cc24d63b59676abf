"""Every contour box of a uint8 score map at every cut in a few passes over the pixels (numba).

A cut t gives the mask `u8 > t`; its contours (`cv2.findContours`, RETR_TREE) are the outer
borders of the mask's 8-connected components, whose boxes are the components' boxes, and the
borders of its holes (4-connected components of `u8 <= t` that do not touch the image border),
whose boxes are the holes' boxes grown by one pixel. `cut_ious` finds them all:

1. The component tree. Key order: value, then flat index (a strict order). Each pixel climbs
   along its row to a row maximum (the pixels reaching one maximum form a *segment*), and each
   row maximum climbs to its highest neighbour in the rows above and below; the local maxima so
   reached are the *basins*. Climbs go uphill, so a pixel above t is in its basin's component.
2. Basins are joined by edges of weight min(u8) over adjacent pixel pairs: they are in the same
   component of `u8 > t` for t < weight. Only horizontal pairs where segments meet, vertical
   pairs and diagonal pairs of 2x2 windows whose other two pixels are lower can matter.
3. Boxes: a component's top and bottom rows hold row maxima of it, its left and right columns
   column maxima (climbing along a row or column stays in the component). A sweep over the values,
   highest first, unites basins at their edges' weights (union-find) and widens each component's
   box by its row and column maxima; at each needed cut it reads every component's box.
4. Holes only add V2 candidates; they are looked for only at cuts that have holes (the component
   count minus the Euler number, from Gray's bit quads) and no outer contour above the highest
   IoU threshold, in the same kind of tree built on the inverted map with 4-connectivity: its
   components that hold no border pixel are the holes.

V1 needs the contour of largest `cv2.contourArea`. A component without holes has area (2 Q4 +
Q3) / 2, Q_k its 2x2 windows holding k of its pixels; a contour's area is at most the span of its
box (between pixel centres); a component with positive area outweighs each of its holes. At each
cut these bounds decide V1 in one step; where they do not, exact areas (one pass over the windows
for all such cuts); where neither decides (equal areas with different IoUs, or holes that could
tie), the cut is left UNDECIDED for the caller to settle by the definition.
"""
from __future__ import annotations

import numpy as np
from numba import njit

NUM_LEVELS = 256
UNDECIDED = -2.0  # a V1 IoU left to the definition

_jit = njit(cache=True, nogil=True)


@_jit
def _iou(bx0, by0, bx1, by1, gt):
    """Best IoU of the box (x0, y0, x1, y1) over the GT boxes gt (K, 4), +1 pixel convention."""
    best = 0.0
    for g in range(gt.shape[0]):
        gx0, gy0, gx1, gy1 = gt[g, 0], gt[g, 1], gt[g, 2], gt[g, 3]
        inter = max(0, min(bx1, gx1) - max(bx0, gx0) + 1) * max(0, min(by1, gy1) - max(by0, gy0) + 1)
        union = (bx1 - bx0 + 1) * (by1 - by0 + 1) + (gx1 - gx0 + 1) * (gy1 - gy0 + 1) - inter
        iou = inter / union if union > 0 else 0.0
        best = max(best, iou)
    return best


@_jit
def _find(parent, x):
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@_jit
def _segment_flags(left2, left, v, right):
    """Bit 0: a segment starts at the pixel of value v (its row neighbours: left2, left, v,
    right; -1 beyond the row); bit 1: the pixel is a row maximum (ties: the later pixel is higher)."""
    is_max = (v >= left) & (v > right)
    prev_climbs_right = (v >= left2) & ((left >= left2) & (left > v) ^ True)
    starts = (prev_climbs_right ^ True) & (is_max | (right >= left))
    return np.uint8(starts) | (np.uint8(is_max) << 1)


@_jit
def _value(row, x):
    """row[x] as int16, -1 beyond the row."""
    return np.int16(row[x]) if 0 <= x < len(row) else np.int16(-1)


@_jit
def _row_segments(u8):
    """Segments: every pixel climbs along its row towards its higher neighbour to a row maximum;
    a segment is the run of pixels reaching one maximum. Returns (seg_x0 (S,), first column;
    seg_peak (S,), flat index of the maximum; row_first (H + 1,), the first segment of each row),
    segments in raster order."""
    height, width = u8.shape
    seg_x0, seg_peak = np.empty(u8.size + 1, np.int32), np.empty(u8.size + 1, np.int32)
    row_first = np.empty(height + 1, np.int64)
    flag = np.empty(width, np.uint8)
    s = k = 0
    for y in range(height):
        r = u8[y]
        for x in range(2, width - 1):  # the inner pixels, vectorised
            flag[x] = _segment_flags(r[x - 2], r[x - 1], r[x], r[x + 1])
        for x in (0, 1, width - 1):  # the ends, between sentinels
            if x < width:
                flag[x] = _segment_flags(_value(r, x - 2), _value(r, x - 1), _value(r, x), _value(r, x + 1))
        flag[0] |= 1
        row_first[y] = s
        for x in range(width):  # branch-free compaction
            seg_x0[s] = x
            s += flag[x] & 1
            seg_peak[k] = y * width + x
            k += flag[x] >> 1
    row_first[height] = s
    return seg_x0[:s], seg_peak[:s], row_first


@_jit
def _segment_at(seg_x0, row_first, y, x):
    """The segment holding pixel (y, x)."""
    first = row_first[y]
    return first + np.searchsorted(seg_x0[first:row_first[y + 1]], x, side="right") - 1


@_jit
def _edge_climb(u8, y, x, best, span):
    """`best` raised by the keys of (y, x)'s neighbours above and below (columns x - span ..
    x + span), for pixels on the edge of the map."""
    height, width = u8.shape
    for dx in range(-span, span + 1):
        if 0 <= x + dx < width:
            if y > 0:
                best = max(best, (np.int32(u8[y - 1, x + dx]) << 3) | (dx + 1))
            if y + 1 < height:
                best = max(best, (np.int32(u8[y + 1, x + dx]) << 3) | (dx + 5))
    return best


@_jit
def _basins(u8, seg_x0, seg_peak, row_first, eight):
    """Every row maximum climbs to its highest neighbour in the rows above and below (three of
    each with 8-connectivity, one without); the local maxima so reached are the basins, numbered
    in raster order. Returns (basin of each segment (S,), flat index of each basin's maximum)."""
    height, width = u8.shape
    nseg = len(seg_x0)
    up = np.empty(nseg, np.int32)
    count = 0
    for y in range(height):
        above, below = row_first[max(y - 1, 0)], row_first[min(y + 1, height - 1)]  # walk each row once
        for s in range(row_first[y], row_first[y + 1]):
            x = seg_peak[s] - y * width
            # key: value, then the candidate's rank in raster order (the later pixel wins ties):
            # ranks 0-2 the row above (columns x - 1, x, x + 1), 3 the pixel, 4-6 the row below
            best = (np.int32(u8[y, x]) << 3) | 3
            if 0 < y < height - 1 and 0 < x < width - 1:  # most: no bounds to check
                a, b = u8[y - 1], u8[y + 1]
                best = max(best, max((np.int32(a[x]) << 3) | 1, (np.int32(b[x]) << 3) | 5))
                if eight:
                    best = max(best, max((np.int32(a[x - 1]) << 3), (np.int32(a[x + 1]) << 3) | 2))
                    best = max(best, max((np.int32(b[x - 1]) << 3) | 4, (np.int32(b[x + 1]) << 3) | 6))
            else:
                best = _edge_climb(u8, y, x, best, 1 if eight else 0)
            rank = best & 7
            by, bx = y + (rank > 3) - (rank < 3), x + (rank & 3) - 1
            if by == y:
                up[s] = s
                count += 1
            elif by < y:
                while above + 1 < row_first[y] and seg_x0[above + 1] <= bx:
                    above += 1
                up[s] = above
            else:
                while below + 1 < row_first[y + 2] and seg_x0[below + 1] <= bx:
                    below += 1
                up[s] = below
    basin_of = np.full(nseg, -1, np.int32)
    peak = np.empty(count, np.int32)
    count = 0
    for s in range(nseg):
        if up[s] == s:
            basin_of[s] = count
            peak[count] = seg_peak[s]
            count += 1
    path = np.empty(nseg, np.int32)
    for s in range(nseg):
        depth, q = 0, s
        while basin_of[q] < 0:
            path[depth] = q
            depth += 1
            q = up[q]
        for i in range(depth):
            basin_of[path[i]] = basin_of[q]
    return basin_of, peak


@_jit
def _segment_end(seg_x0, row_first, y, s, width):
    """The last column of segment s of row y."""
    return seg_x0[s + 1] - 1 if s + 1 < row_first[y + 1] else width - 1


@_jit
def _window_sorted(r0, r1, x):
    """The 2x2 window of rows r0, r1 at columns x, x + 1: (s2, s3, s4), its second, third and
    fourth highest values (a sorting network, branch-free), and whether its two highest pixels lie
    on a diagonal with both others lower."""
    lo_ad, hi_ad = min(r0[x], r1[x + 1]), max(r0[x], r1[x + 1])
    lo_bc, hi_bc = min(r0[x + 1], r1[x]), max(r0[x + 1], r1[x])
    s2 = max(min(hi_ad, hi_bc), max(lo_ad, lo_bc))
    s3 = min(max(lo_ad, lo_bc), min(hi_ad, hi_bc))
    return s2, s3, min(lo_ad, lo_bc), (lo_ad > hi_bc) | (lo_bc > hi_ad)


@_jit
def _edges(u8, seg_x0, row_first, basin_of, eight):
    """Basin edges (a, b, weight), weight = the lower value of an adjacent pixel pair, > 0:
    horizontal pairs where segments meet, the strongest vertical pair under each two overlapping
    segments of different basins, and (8-connectivity) diagonal pairs of the 2x2 windows whose
    other two pixels are both lower (otherwise either of those joins the pair whenever the pair
    is in the mask)."""
    height, width = u8.shape
    nseg = len(seg_x0)
    cap = 3 * nseg + u8.size
    ea, eb, ew = np.empty(cap, np.int32), np.empty(cap, np.int32), np.empty(cap, np.uint8)
    m = 0
    quad = np.zeros((width + 7) // 8 * 8, np.uint8)
    words = quad.view(np.uint64)
    for y in range(height):
        r0 = u8[y]
        for s in range(row_first[y] + 1, row_first[y + 1]):
            x = seg_x0[s]
            w = min(r0[x - 1], r0[x])
            if basin_of[s - 1] != basin_of[s] and w > 0:
                ea[m], eb[m], ew[m] = basin_of[s - 1], basin_of[s], w
                m += 1
        if y + 1 == height:
            break
        r1 = u8[y + 1]
        i, j = row_first[y], row_first[y + 1]
        while i < row_first[y + 1] and j < row_first[y + 2]:
            end_i, end_j = _segment_end(seg_x0, row_first, y, i, width), _segment_end(seg_x0, row_first, y + 1, j, width)
            if basin_of[i] != basin_of[j]:
                w = 0
                for x in range(max(seg_x0[i], seg_x0[j]), min(end_i, end_j) + 1):
                    w = max(w, min(r0[x], r1[x]))
                if w > 0:
                    ea[m], eb[m], ew[m] = basin_of[i], basin_of[j], w
                    m += 1
            if end_i <= end_j:
                i += 1
            if end_j <= end_i:
                j += 1
        if not eight:
            continue
        for x in range(width - 1):  # windows with only a diagonal pair on top
            quad[x] = _window_sorted(r0, r1, x)[3]
        for word in range(len(words)):
            if words[word] == 0:
                continue
            for x in range(8 * word, min(8 * word + 8, width - 1)):
                if quad[x] == 0:
                    continue
                if min(r0[x], r1[x + 1]) > max(r0[x + 1], r1[x]):
                    a = basin_of[_segment_at(seg_x0, row_first, y, x)]
                    b = basin_of[_segment_at(seg_x0, row_first, y + 1, x + 1)]
                    w = min(r0[x], r1[x + 1])
                else:
                    a = basin_of[_segment_at(seg_x0, row_first, y, x + 1)]
                    b = basin_of[_segment_at(seg_x0, row_first, y + 1, x)]
                    w = min(r0[x + 1], r1[x])
                if a != b:
                    ea[m], eb[m], ew[m] = a, b, w
                    m += 1
    return ea[:m], eb[:m], ew[:m]


@_jit
def _column_maxima(u8, seg_x0, row_first, basin_of):
    """(basin, value, x) of every column maximum, in the same key order as the row maxima."""
    height, width = u8.shape
    basin, value, column = np.empty(u8.size + 1, np.int32), np.empty(u8.size + 1, np.uint8), np.empty(u8.size + 1, np.int32)
    flag = np.empty(width, np.uint8)
    k = 0
    for y in range(height):
        r = u8[y]
        if 0 < y < height - 1:
            r0, r1 = u8[y - 1], u8[y + 1]
            for x in range(width):
                flag[x] = (r[x] >= r0[x]) & (r[x] > r1[x])
        elif height == 1:
            flag[:] = 1
        elif y == 0:
            r1 = u8[1]
            for x in range(width):
                flag[x] = r[x] > r1[x]
        else:
            r0 = u8[y - 1]
            for x in range(width):
                flag[x] = r[x] >= r0[x]
        first = k
        for x in range(width):
            column[k] = x
            k += flag[x]
        j = row_first[y]
        for i in range(first, k):  # their segments, walking the row once
            while j + 1 < row_first[y + 1] and seg_x0[j + 1] <= column[i]:
                j += 1
            basin[i], value[i] = basin_of[j], u8[y, column[i]]
    return basin[:k], value[:k], column[:k]


@_jit
def _window_counts(u8, pixels):
    """For every cut t, over the 2x2 windows of the zero-padded map: (euler (256,), the Euler
    number of the 8-connected `u8 > t`, components minus holes; area2 (256,), 2 Q4 + Q3).

    s1 >= s2 >= s3 >= s4 are a window's sorted values and G_k(t) = #{s_k > t}; Q1 = G1 - G2,
    Q3 = G3 - G4, G1 + G2 + G3 + G4 = 4 x pixels, QD the windows whose two mask pixels are
    diagonal; 4 E = Q1 - Q3 - 2 QD, 2 Q4 + Q3 = G3 + G4. pixels: the (256,) histogram of u8."""
    height, width = u8.shape
    g2, g3, g4, g2d, g3d = (np.zeros(NUM_LEVELS, np.int64), np.zeros(NUM_LEVELS, np.int64), np.zeros(NUM_LEVELS, np.int64),
                            np.zeros(NUM_LEVELS, np.int64), np.zeros(NUM_LEVELS, np.int64))
    row = max(width - 1, 1)
    s2, s3, s4, diagonal = np.empty(row, np.uint8), np.empty(row, np.uint8), np.empty(row, np.uint8), np.empty(row, np.bool_)
    for y in range(height - 1):
        r0, r1 = u8[y], u8[y + 1]
        for x in range(width - 1):  # vectorised
            s2[x], s3[x], s4[x], diagonal[x] = _window_sorted(r0, r1, x)
        for x in range(width - 1):
            g2[s2[x]] += 1
            g3[s3[x]] += 1
            g4[s4[x]] += 1
            if diagonal[x]:
                g2d[s2[x]] += 1
                g3d[s3[x]] += 1
    # windows over the padding hold at most two pixels, side by side: they count in s2 only
    for x in range(width - 1):
        g2[min(u8[0, x], u8[0, x + 1])] += 1
        g2[min(u8[height - 1, x], u8[height - 1, x + 1])] += 1
    for y in range(height - 1):
        g2[min(u8[y, 0], u8[y + 1, 0])] += 1
        g2[min(u8[y, width - 1], u8[y + 1, width - 1])] += 1
    euler, area2 = np.empty(NUM_LEVELS, np.int64), np.empty(NUM_LEVELS, np.int64)
    above_pixels = above_quads = above_area = 0
    for t in range(NUM_LEVELS - 1, -1, -1):
        euler[t] = above_pixels - above_quads // 2
        area2[t] = above_area
        above_pixels += pixels[t]
        above_quads += g2[t] + g3[t] + g2d[t] - g3d[t]
        above_area += g3[t] + g4[t]
    return euler, area2


@_jit
def _by_value(values):
    """(order, start): indices of the uint8 `values` grouped by value, value v at start[v]:start[v + 1]."""
    start = np.zeros(NUM_LEVELS + 1, np.int64)
    for v in values:
        start[v + 1] += 1
    for v in range(NUM_LEVELS):
        start[v + 1] += start[v]
    slot = start[:NUM_LEVELS].copy()
    order = np.empty(len(values), np.int32)
    for i in range(len(values)):
        order[slot[values[i]]] = i
        slot[values[i]] += 1
    return order, start


@_jit
def _tree(u8, eight):
    """The component tree's events, each kind in value order (see the module docstring): a tuple
    of (seg_x0, row_first, basin_of, peak_value, seg_start, seg_basin, seg_row, seg_born, col_start,
    col_basin, col_x, edge_start, edge_a, edge_b); kind_start (257,): value v at start[v]:start[v + 1]."""
    height, width = u8.shape
    seg_x0, seg_peak, row_first = _row_segments(u8)
    basin_of, peak = _basins(u8, seg_x0, seg_peak, row_first, eight)
    ea, eb, ew = _edges(u8, seg_x0, row_first, basin_of, eight)
    col_basin, col_value, col_x = _column_maxima(u8, seg_x0, row_first, basin_of)
    flat = u8.ravel()
    seg_order, seg_start = _by_value(flat[seg_peak])
    col_order, col_start = _by_value(col_value)
    edge_order, edge_start = _by_value(ew)
    seg_row = np.empty(len(seg_x0), np.int32)
    for y in range(height):
        seg_row[row_first[y]:row_first[y + 1]] = y
    seg_born = peak[basin_of] == seg_peak
    return (seg_x0, row_first, basin_of, flat[peak], seg_start, basin_of[seg_order], seg_row[seg_order],
            seg_born[seg_order], col_start, col_basin[col_order], col_x[col_order], edge_start, ea[edge_order],
            eb[edge_order])


@_jit
def _labels(tree, width):
    """(n,) the basin of every pixel."""
    seg_x0, row_first, basin_of = tree[0], tree[1], tree[2]
    label = np.empty((len(row_first) - 1) * width, np.int32)
    for y in range(len(row_first) - 1):
        for s in range(row_first[y], row_first[y + 1]):
            label[y * width + seg_x0[s]:y * width + _segment_end(seg_x0, row_first, y, s, width) + 1] = basin_of[s]
    return label


@_jit
def _new_sweep(num_basins, height, width):
    """Union-find state: (parent, x0, y0, x1, y1, border, dirty, live, num_live (1,))."""
    r = num_basins
    return (np.arange(r).astype(np.int32), np.full(r, width, np.int32), np.full(r, height, np.int32),
            np.full(r, -1, np.int32), np.full(r, -1, np.int32), np.zeros(r, np.bool_), np.zeros(r, np.bool_),
            np.empty(r, np.int32), np.zeros(1, np.int64))


@_jit
def _advance(tree, state, v, border_basin, border_start):
    """Add the events of value v: basins born, row and column maxima widening boxes, border
    pixels marking their component (the hole tree only; border_basin grouped by value like the
    other events), unions at edges (the basin with the higher maximum stays the root)."""
    (_, _, _, peak_value, seg_start, seg_basin, seg_row, seg_born, col_start, col_basin, col_x,
     edge_start, edge_a, edge_b) = tree
    parent, x0, y0, x1, y1, border, dirty, live, num_live = state
    for k in range(seg_start[v], seg_start[v + 1]):
        b = seg_basin[k]
        if seg_born[k]:
            live[num_live[0]] = b
            num_live[0] += 1
        r = _find(parent, b)
        y = seg_row[k]
        if y < y0[r] or y > y1[r]:
            y0[r], y1[r], dirty[r] = min(y0[r], y), max(y1[r], y), True
    for k in range(col_start[v], col_start[v + 1]):
        r = _find(parent, col_basin[k])
        x = col_x[k]
        if x < x0[r] or x > x1[r]:
            x0[r], x1[r], dirty[r] = min(x0[r], x), max(x1[r], x), True
    for k in range(border_start[v], border_start[v + 1]):
        border[_find(parent, border_basin[k])] = True
    for k in range(edge_start[v], edge_start[v + 1]):
        a, b = _find(parent, edge_a[k]), _find(parent, edge_b[k])
        if a == b:
            continue
        if peak_value[a] < peak_value[b] or (peak_value[a] == peak_value[b] and a < b):  # basins in raster order
            a, b = b, a
        parent[b] = a
        x0[a], y0[a] = min(x0[a], x0[b]), min(y0[a], y0[b])
        x1[a], y1[a] = max(x1[a], x1[b]), max(y1[a], y1[b])
        border[a] |= border[b]
        dirty[a] = True


@_jit
def _live_roots(state):
    """Compact the live list to the current roots; return their number."""
    parent, live, num_live = state[0], state[7], state[8]
    j = 0
    for k in range(num_live[0]):
        if parent[live[k]] == live[k]:
            live[j] = live[k]
            j += 1
    num_live[0] = j
    return j


@_jit
def _grow(a, size):
    out = np.empty((size,) + a.shape[1:], a.dtype)
    out[:a.shape[0]] = a
    return out


@_jit
def _exact_v1(u8, label, cuts, snap, roots, ious, spans, counts, holes, v1):
    """Settle V1 at `cuts` (descending) from exact hole-free areas: each window holding 3 (4)
    pixels of a component adds 1 (2) to its 2 x area, counted for the basin of the window's
    highest pixel. snap[k]: every basin's root at cuts[k]; roots, ious, spans[k, :counts[k]]: its
    components."""
    height, width = u8.shape
    num_cuts, num_basins = len(cuts), snap.shape[1]
    below = np.zeros(NUM_LEVELS, np.int64)  # how many of the cuts lie below each value
    for v in range(NUM_LEVELS):
        for c in cuts:
            below[v] += c < v
    # windows[b, j]: windows of basin b with j cuts below s3 (s4); from j on they count at cuts[num_cuts - j]
    windows = np.zeros((num_basins, num_cuts + 1), np.int32)
    for y in range(height - 1):
        r0, r1 = u8[y], u8[y + 1]
        l0, l1 = label[y * width:(y + 1) * width], label[(y + 1) * width:(y + 2) * width]
        for x in range(width - 1):
            _, s3, s4, _ = _window_sorted(r0, r1, x)
            j3 = below[s3]
            if j3 == 0:
                continue
            top_left = l0[x + 1] if r0[x + 1] >= r0[x] else l0[x]
            top_right = l1[x + 1] if r1[x + 1] >= r1[x] else l1[x]
            top = top_right if max(r1[x], r1[x + 1]) >= max(r0[x], r0[x + 1]) else top_left
            windows[top, j3] += 1
            windows[top, below[s4]] += 1
    for b in range(num_basins):  # windows[b, j]: those counting at cuts[num_cuts - j]
        for j in range(num_cuts - 1, 0, -1):
            windows[b, j] += windows[b, j + 1]
    area2 = np.zeros(num_basins, np.int64)
    for k in range(num_cuts):
        for i in range(counts[k]):
            area2[roots[k, i]] = 0
        for b in range(num_basins):
            area2[snap[k, b]] += windows[b, num_cuts - k]
        best = -1
        for i in range(counts[k]):
            best = max(best, area2[roots[k, i]])
        num_best, lo, hi, other = 0, np.inf, -np.inf, 0
        for i in range(counts[k]):
            if area2[roots[k, i]] == best:
                num_best += 1
                lo, hi = min(lo, ious[k, i]), max(hi, ious[k, i])
            else:
                other = max(other, 2 * spans[k, i])
        c = cuts[k]
        # without holes the largest area wins, ties are harmless if their IoUs agree; with holes
        # a component is sure to be the largest only alone at the top and above every other span
        if (lo == hi) if holes[c] == 0 else (num_best == 1 and best > other and best > 0):
            v1[c] = hi


@_jit
def _component_ious(u8, gt, need, pixels, v1, v2, holes):
    """Fill v1 (V1 IoU or UNDECIDED), v2 (best IoU over the outer contours) and holes (count) at
    every cut with need, from the 8-connected component tree of u8."""
    height, width = u8.shape
    tree = _tree(u8, True)
    num_basins = len(tree[3])
    state = _new_sweep(num_basins, height, width)
    parent, x0, y0, x1, y1, _, dirty, live, _ = state
    no_basin, no_start = np.zeros(0, np.int32), np.zeros(NUM_LEVELS + 1, np.int64)  # no border events
    euler, area2 = _window_counts(u8, pixels)
    iou, span = np.zeros(num_basins), np.zeros(num_basins, np.int64)
    # the cuts the span bounds leave open, with their components, for `_exact_v1`
    open_cuts, num_open = np.empty(NUM_LEVELS, np.int64), 0
    snap, roots = np.empty((0, num_basins), np.int32), np.empty((0, num_basins), np.int32)
    ious, spans, counts = np.empty((0, num_basins)), np.empty((0, num_basins), np.int64), np.empty(NUM_LEVELS, np.int64)
    if need[NUM_LEVELS - 1]:  # above every value: the empty mask
        v1[NUM_LEVELS - 1] = v2[NUM_LEVELS - 1] = _iou(0, 0, 0, 0, gt)
    for v in range(NUM_LEVELS - 1, 0, -1):
        _advance(tree, state, v, no_basin, no_start)
        c = v - 1
        if not need[c]:
            continue
        count = _live_roots(state)
        holes[c] = count - euler[c]
        if count == 0:  # an empty mask: the box (0, 0, 0, 0)
            v1[c] = v2[c] = _iou(0, 0, 0, 0, gt)
            continue
        best, top_span, second_span, total_span, top_iou = -1.0, -1, -1, 0, 0.0
        for k in range(count):
            r = live[k]
            if dirty[r]:
                iou[r] = _iou(x0[r], y0[r], min(x1[r] + 1, width - 1), min(y1[r] + 1, height - 1), gt)
                span[r] = (x1[r] - x0[r]) * (y1[r] - y0[r])
                dirty[r] = False
            best = max(best, iou[r])
            total_span += span[r]
            if span[r] > top_span:
                second_span, top_span, top_iou = top_span, span[r], iou[r]
            else:
                second_span = max(second_span, span[r])
        v2[c] = best
        # the widest component is the largest if its area (at least the total minus the other
        # spans) beats the second span; a lone one unless it has zero area and holes could tie
        lower2 = area2[c] - 2 * (total_span - top_span)
        if (holes[c] == 0 or area2[c] > 0) if count == 1 else (lower2 > 2 * second_span and lower2 > 0):
            v1[c] = top_iou
            continue
        v1[c] = UNDECIDED
        if num_open == len(snap):
            size = max(4, 2 * num_open)
            snap, roots, ious, spans = _grow(snap, size), _grow(roots, size), _grow(ious, size), _grow(spans, size)
        for b in range(num_basins):
            snap[num_open, b] = _find(parent, b)
        for k in range(count):
            roots[num_open, k], ious[num_open, k], spans[num_open, k] = live[k], iou[live[k]], span[live[k]]
        open_cuts[num_open], counts[num_open] = c, count
        num_open += 1
    if num_open:
        _exact_v1(u8, _labels(tree, width), open_cuts[:num_open], snap, roots, ious, spans, counts, holes, v1)


@_jit
def _hole_ious(u8, gt, need, v2):
    """Raise v2 at the cuts with need by the IoUs of the holes' contours (a hole's box grown by
    one pixel), from the 4-connected component tree of the inverted map: the holes at cut t are
    its components above 254 - t that hold no pixel of the image border."""
    height, width = u8.shape
    top = np.flatnonzero(need)[-1]
    # values above the highest cut needed are foreground at every cut needed: one plateau will do
    inverted = np.empty_like(u8)
    for y in range(height):
        for x in range(width):
            inverted[y, x] = 255 - min(u8[y, x], top + 1)
    tree = _tree(inverted, False)
    seg_x0, row_first, basin_of = tree[0], tree[1], tree[2]
    state = _new_sweep(len(tree[3]), height, width)
    parent, x0, y0, x1, y1, border, _, live, _ = state
    # border pixels (value, basin): all of the first and last rows, the ends of the others
    values, basins = np.empty(2 * (height + width), np.uint8), np.empty(2 * (height + width), np.int32)
    k = 0
    for y in range(height):
        if 0 < y < height - 1:
            for s, x in ((row_first[y], 0), (row_first[y + 1] - 1, width - 1)):
                values[k], basins[k] = inverted[y, x], basin_of[s]
                k += 1
            continue
        for s in range(row_first[y], row_first[y + 1]):
            for x in range(seg_x0[s], _segment_end(seg_x0, row_first, y, s, width) + 1):
                values[k], basins[k] = inverted[y, x], basin_of[s]
                k += 1
    order, start = _by_value(values[:k])
    border_basin = basins[:k][order]
    for v in range(NUM_LEVELS - 1, 254 - top, -1):
        _advance(tree, state, v, border_basin, start)
        t = 255 - v  # the cut v - 1 of the inverted map: u8 <= t
        if not need[t]:
            continue
        for k in range(_live_roots(state)):
            r = live[k]
            if not border[r]:
                v2[t] = max(v2[t], _iou(x0[r] - 1, y0[r] - 1, min(x1[r] + 2, width - 1), min(y1[r] + 2, height - 1), gt))


@_jit
def cut_ious(u8, gt, cuts, max_delta):
    """u8 (H, W) uint8 map; gt (K >= 1, 4) int64 x0y0x1y1 boxes; cuts (T,) int64 in 0..255 (mask:
    u8 > cut). Returns (v1 (T,), V1 IoU of the largest contour or UNDECIDED; v2 (T,), the best
    IoU over all contours, exact up to max_delta: hole contours are only looked at where no outer
    contour reaches it)."""
    pixels = np.zeros(NUM_LEVELS, np.int64)
    for v in u8.ravel():
        pixels[v] += 1
    # a cut and the highest present value at or below it give the same mask (cuts under every
    # value: the cut 0 is as good); evaluate each mask once
    same = np.zeros(NUM_LEVELS, np.int64)
    last = 0
    for c in range(NUM_LEVELS):
        if pixels[c]:
            last = c
        same[c] = last
    need = np.zeros(NUM_LEVELS, np.bool_)
    for c in cuts:
        need[same[c]] = True
    v1, v2, holes = np.full(NUM_LEVELS, -1.0), np.full(NUM_LEVELS, -1.0), np.zeros(NUM_LEVELS, np.int64)
    _component_ious(u8, gt, need, pixels, v1, v2, holes)
    for c in range(NUM_LEVELS):
        need[c] &= holes[c] > 0 and v2[c] < max_delta
    if need.any():
        _hole_ious(u8, gt, need, v2)
    out1, out2 = np.empty(len(cuts)), np.empty(len(cuts))
    for i in range(len(cuts)):
        out1[i], out2[i] = v1[same[cuts[i]]], v2[same[cuts[i]]]
    return out1, out2
