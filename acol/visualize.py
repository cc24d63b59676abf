"""Heatmap overlays with boxes, tiled into one grid image (for TensorBoard and PNG figures)."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from acol.datasets.dataset import collate
from acol.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_on_device
from acol.engine import autocast, unwrap
from acol.evaluation import resize_and_normalize
from acol.evaluation.boxes import contour_boxes, threshold_cuts, to_uint8

GT_COLOR = (0, 255, 0)      # green
PRED_COLOR = (255, 0, 0)    # red


def overlay(image: np.ndarray, scoremap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """image (H, W, 3) uint8 RGB, scoremap (H, W) in [0, 1] -> JET heatmap blended over the image."""
    heat = cv2.applyColorMap((scoremap * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return (alpha * heat + (1 - alpha) * image).astype(np.uint8)


def draw_boxes(image: np.ndarray, boxes, color: tuple[int, int, int]) -> np.ndarray:
    image = np.ascontiguousarray(image)
    for x0, y0, x1, y1 in np.asarray(boxes).reshape(-1, 4).tolist():
        cv2.rectangle(image, (int(x0), int(y0)), (int(x1), int(y1)), color, 1)
    return image


def tile(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """A grid of (H, W, 3) uint8 tiles separated by white padding, each the size of the first (a tile of
    another size, e.g. a run at another input size, is resized to it: area interpolation)."""
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, t in enumerate(row):
            if t.shape[:2] != (h, w):
                t = cv2.resize(t, (w, h), interpolation=cv2.INTER_AREA)
            grid[pad + i * (h + pad):pad + i * (h + pad) + h, pad + j * (w + pad):pad + j * (w + pad) + w] = t
    return grid


def denormalize(images: torch.Tensor) -> np.ndarray:
    """ImageNet-normalised (B, 3, H, W) -> (B, H, W, 3) uint8."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    images = (images.float() * std + mean).clamp(0, 1) * 255
    return images.permute(0, 2, 3, 1).round().byte().cpu().numpy()


def predicted_box(scoremap: np.ndarray, threshold: float) -> np.ndarray:
    """The protocol's V1 box (largest contour) of a [0, 1] map at box threshold tau, (4,) int64."""
    u8 = to_uint8(scoremap)
    box, _ = contour_boxes(u8, int(threshold_cuts(u8, np.array([threshold]))[0]))
    return box


def heatmap_rows(images: torch.Tensor, maps: dict[str, torch.Tensor], gt_boxes: list,
                 boxed: dict[str, float]) -> list[list[np.ndarray]]:
    """One row per image: the image with its GT boxes, then each map's overlay (maps (B, h, w) in
    [0, 1], upsampled and normalised as the protocol does). The maps named in `boxed` also show
    the GT boxes (green) and the predicted box (red: largest component at the given threshold)."""
    size = tuple(images.shape[-2:])
    pictures = denormalize(images)
    scoremaps = {k: resize_and_normalize(v.cpu(), size) for k, v in maps.items()}
    rows = []
    for i, picture in enumerate(pictures):
        row = [draw_boxes(picture, gt_boxes[i], GT_COLOR)]
        for key, sm in scoremaps.items():
            tile_ = overlay(picture, sm[i])
            if key in boxed:
                tile_ = draw_boxes(tile_, gt_boxes[i], GT_COLOR)
                tile_ = draw_boxes(tile_, predicted_box(sm[i], boxed[key]), PRED_COLOR)
            row.append(tile_)
        rows.append(row)
    return rows


def enlarge(rows: list[list[np.ndarray]], scale: int) -> list[list[np.ndarray]]:
    """Every tile enlarged `scale` times (nearest neighbour)."""
    return [[cv2.resize(t, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) for t in row] for row in rows]


def titled_grid(rows: list[list[np.ndarray]], titles: list[str], scale: int = 2, font: float = 0.38) -> np.ndarray:
    """`tile(rows)` with each tile enlarged `scale` times (nearest) under a header of column titles
    (two lines each where a title holds a ':') in a font of that scale (cv2's Hershey simplex)."""
    big = enlarge(rows, scale)
    grid = tile(big)
    width = big[0][0].shape[1]
    line = int(40 * font)                           # line height in pixels (15 at 0.38)
    header = np.full((2 * line + 4, grid.shape[1], 3), 255, np.uint8)
    for j, title in enumerate(titles):
        for k, text in enumerate(title.split(":")[:2]):
            while len(text) > 1 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)[0][0] > width - 4:
                text = text[:-1]                    # cut to the tile's width
            cv2.putText(header, text, (2 + j * (width + 2) + 2, line - 1 + line * k),
                        cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([header, grid])


def labelled_rows(rows: list[list[np.ndarray]], labels: list[str], scale: int = 2, font: float = 0.45) -> np.ndarray:
    """`tile(rows)` with each tile enlarged `scale` times (nearest), after a column holding each row's
    label whole (two lines where it holds a ':'), as wide as the widest line (cv2's Hershey simplex)."""
    grid = tile(enlarge(rows, scale))
    height = rows[0][0].shape[0] * scale
    lines = [label.split(":", 1) for label in labels]
    width = max(cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)[0][0] for parts in lines for text in parts) + 8
    column = np.full((grid.shape[0], width, 3), 255, np.uint8)
    step = int(40 * font)                           # line height in pixels
    for i, parts in enumerate(lines):
        middle = 2 + i * (height + 2) + height // 2
        for k, text in enumerate(parts):
            baseline = middle + int(step * (k - (len(parts) - 1) / 2)) + step // 3
            cv2.putText(column, text, (4, baseline), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([column, grid], axis=1)


def heatmap_strips(model: torch.nn.Module, dataset, indices: list[int], device, dtype, threshold: float,
                   min_tile: int = 128) -> list[np.ndarray]:
    """(H, W, 3) uint8 images: per fixed validation image, one strip of tiles under column titles:
    image | branch A | branch B | fused map (ACoL) or image | map, the last with the GT (green) and
    predicted (red, at `threshold`) boxes; tiles enlarged (nearest) to at least `min_tile` px. One
    strip per image keeps each legible in TensorBoard's image card (which fits the image into the card)."""
    batch = collate([dataset[i] for i in indices])
    core = unwrap(model)
    core.eval()
    with torch.no_grad():
        images = normalize_on_device(batch["image"], device)
        labels = batch["label"].to(device)
        with autocast(device, dtype):
            out = core(images, labels)
        maps = {}
        if hasattr(core, "branch_maps"):
            maps["A"], maps["B"] = core.branch_maps(out, labels)
        maps["map"] = core.localization_map(out, labels)
    core.train()
    titles = ["image:GT box"] + [f"branch {k}" for k in maps if k != "map"]
    titles.append(f"{'fused map' if len(maps) > 1 else 'map'}:pred @{threshold:.2f}")
    scale = -(-min_tile // images.shape[-1])
    rows = heatmap_rows(images, maps, [b.numpy() for b in batch["boxes"]], {"map": threshold})
    return [titled_grid([row], titles, scale, font=min_tile / 192) for row in rows]


CURVE_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def dashed_polyline(canvas: np.ndarray, points: np.ndarray, color, thickness: int = 1, dash: int = 6) -> None:
    """cv2.polylines with dashes of `dash` px (gaps as long) along the path's length; points (N, 2) int."""
    travelled = 0.0
    for p, q in zip(points[:-1].astype(float), points[1:].astype(float)):
        length = float(np.hypot(*(q - p)))
        for start in np.arange(-(travelled % (2 * dash)), length, 2 * dash):
            a, b = max(start, 0.0), min(start + dash, length)
            if b > a:
                cv2.line(canvas, tuple((p + (q - p) * a / length).round().astype(int).tolist()),
                         tuple((p + (q - p) * b / length).round().astype(int).tolist()), color, thickness, cv2.LINE_AA)
        travelled += length


def small_multiples(panels: dict[str, dict[tuple[str, str], np.ndarray]], y_range: tuple[float, float],
                    xlabel: str, columns: int = 4, panel: tuple[int, int] = (230, 170)) -> np.ndarray:
    """A grid of small line charts (H, W, 3) uint8 RGB sharing axes, x from 0 to 1 and y in `y_range`:
    one panel per entry of `panels` (titled by its key, whole), in it one line per (colour key, style
    key): the colour by the colour key (CURVE_COLORS in order of appearance), solid for the first style
    key and dashed for the others. A legend row on top names every colour and style; `xlabel` below."""
    font, black = cv2.FONT_HERSHEY_SIMPLEX, (0, 0, 0)
    colours = list(dict.fromkeys(c for lines in panels.values() for c, _ in lines))
    styles = list(dict.fromkeys(s for lines in panels.values() for _, s in lines))
    width, height = panel
    left, right, top, bottom = 34, 10, 22, 22
    low, high = y_range
    x_of = lambda t: int(round(left + t * (width - left - right)))                                   # noqa: E731
    y_of = lambda v: int(round(height - bottom - (v - low) / (high - low) * (height - top - bottom)))  # noqa: E731
    tiles = []
    for name, lines in panels.items():
        canvas = np.full((height, width, 3), 255, np.uint8)
        for tick in (low, (low + high) / 2, high):
            cv2.line(canvas, (left, y_of(tick)), (x_of(1), y_of(tick)), (225, 225, 225), 1)
            cv2.putText(canvas, f"{tick:g}", (4, y_of(tick) + 4), font, 0.38, black, 1, cv2.LINE_AA)
        for tick in (0, 0.5, 1):
            cv2.putText(canvas, f"{tick:g}", (x_of(tick) - 6, height - 6), font, 0.38, black, 1, cv2.LINE_AA)
        cv2.rectangle(canvas, (left, top), (x_of(1), height - bottom), black, 1)
        cv2.putText(canvas, name, (left, top - 7), font, 0.45, black, 1, cv2.LINE_AA)
        for (colour, style), values in lines.items():
            values = np.asarray(values, float)
            points = np.stack([[x_of(t) for t in np.linspace(0, 1, len(values))], [y_of(v) for v in values]],
                              1).astype(np.int32)
            color = CURVE_COLORS[colours.index(colour) % len(CURVE_COLORS)]
            if styles.index(style) == 0:
                cv2.polylines(canvas, [points], False, color, 2, cv2.LINE_AA)
            else:
                dashed_polyline(canvas, points, color, 2)
        tiles.append(canvas)
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    rows[-1] += [np.full_like(tiles[0], 255)] * (columns - len(rows[-1]))
    grid = tile(rows, pad=4)
    legend = np.full((30, grid.shape[1], 3), 255, np.uint8)
    x = 8
    for i, label in enumerate(colours + styles):  # the colours as solid lines, then the styles in grey
        colour = CURVE_COLORS[i % len(CURVE_COLORS)] if i < len(colours) else (90, 90, 90)
        if i <= len(colours):
            cv2.line(legend, (x, 15), (x + 26, 15), colour, 2, cv2.LINE_AA)
        else:
            dashed_polyline(legend, np.array([[x, 15], [x + 26, 15]]), colour, 2)
        cv2.putText(legend, label, (x + 32, 20), font, 0.45, black, 1, cv2.LINE_AA)
        x += 32 + cv2.getTextSize(label, font, 0.45, 1)[0][0] + 24
    axis = np.full((24, grid.shape[1], 3), 255, np.uint8)
    cv2.putText(axis, xlabel, (grid.shape[1] // 2 - cv2.getTextSize(xlabel, font, 0.45, 1)[0][0] // 2, 16), font,
                0.45, black, 1, cv2.LINE_AA)
    return np.concatenate([legend, grid, axis], axis=0)


def plot_curves(thresholds: np.ndarray, curves: dict[str, np.ndarray], marks: dict[str, float],
                title: str, size: tuple[int, int] = (640, 420), xlabel: str = "box threshold",
                y_range: tuple[float, float] = (0, 100)) -> np.ndarray:
    """A line chart (H, W, 3) uint8: accuracy in % (y, `y_range`) vs box threshold (x, 0..1; `xlabel`),
    one line per curve, and a dashed vertical line with its label at each marked threshold."""
    width, height = size
    left, right, top, bottom = 50, 160, 30, 40
    low, high = y_range
    canvas = np.full((height, width, 3), 255, np.uint8)
    x_of = lambda t: int(round(left + t * (width - left - right)))                 # noqa: E731
    y_of = lambda v: int(round(height - bottom - (v - low) / (high - low) * (height - top - bottom)))  # noqa: E731
    font, grey = cv2.FONT_HERSHEY_SIMPLEX, (150, 150, 150)
    for tick in np.linspace(low, high, 6):
        cv2.line(canvas, (left, y_of(tick)), (x_of(1), y_of(tick)), (230, 230, 230), 1)
        cv2.putText(canvas, f"{tick:g}", (left - 30, y_of(tick) + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for tick in np.arange(0, 1.01, 0.2):
        cv2.putText(canvas, f"{tick:.1f}", (x_of(tick) - 10, height - bottom + 16), font, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    cv2.rectangle(canvas, (left, top), (x_of(1), height - bottom), (0, 0, 0), 1)
    cv2.putText(canvas, xlabel, (x_of(0.5) - 45, height - 8), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, title, (left, top - 10), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for i, (name, values) in enumerate(curves.items()):
        color = CURVE_COLORS[i % len(CURVE_COLORS)]
        points = np.stack([[x_of(t) for t in thresholds], [y_of(v) for v in values]], 1).astype(np.int32)
        cv2.polylines(canvas, [points], False, color, 2, cv2.LINE_AA)
        cv2.putText(canvas, name, (x_of(1) + 10, top + 20 + 18 * i), font, 0.45, color, 1, cv2.LINE_AA)
    for j, (name, tau) in enumerate(marks.items()):
        for y in range(top, height - bottom, 8):
            cv2.line(canvas, (x_of(tau), y), (x_of(tau), min(y + 4, height - bottom)), grey, 1)
        cv2.putText(canvas, f"{name} {tau:.3f}", (x_of(1) + 10, height - bottom - 18 * j), font, 0.4, grey, 1,
                    cv2.LINE_AA)
        cv2.putText(canvas, name[0], (x_of(tau) - 3, top + 12 + 12 * j), font, 0.4, grey, 1, cv2.LINE_AA)
    return canvas
