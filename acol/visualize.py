"""Heatmap overlays with boxes, tiled into one grid image (for TensorBoard and PNG figures)."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from acol.data.transforms import IMAGENET_MEAN, IMAGENET_STD
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
    """A grid of equally sized (H, W, 3) uint8 tiles separated by white padding."""
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, t in enumerate(row):
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


def heatmap_rows(images: torch.Tensor, maps: dict[str, torch.Tensor], gt_boxes: list, threshold: float,
                 fused_key: str) -> list[list[np.ndarray]]:
    """One row per image: the image with GT boxes, then each map's overlay; the `fused_key` map also
    shows the predicted box (largest component at `threshold`, red) and the GT boxes (green)."""
    size = tuple(images.shape[-2:])
    pictures = denormalize(images)
    scoremaps = {k: resize_and_normalize(v.cpu(), size) for k, v in maps.items()}
    rows = []
    for i, picture in enumerate(pictures):
        row = [draw_boxes(picture, gt_boxes[i], GT_COLOR)]
        for key, sm in scoremaps.items():
            tile_ = overlay(picture, sm[i])
            if key == fused_key:
                tile_ = draw_boxes(tile_, gt_boxes[i], GT_COLOR)
                tile_ = draw_boxes(tile_, predicted_box(sm[i], threshold), PRED_COLOR)
            row.append(tile_)
        rows.append(row)
    return rows
