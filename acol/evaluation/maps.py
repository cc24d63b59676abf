"""Score-map preparation as wsolevaluation's CAMComputer does it: cubic upsampling, then min-max; and
the files it saves them in."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch


def normalize_scoremap(cam: np.ndarray) -> np.ndarray:
    """A float32 copy of `cam` min-max scaled to [0, 1] (subtract the min, divide by the new max).

    A constant map, or one with a NaN or an infinity, becomes all zeros (wsolevaluation zeroes
    NaN and constant maps; infinities would turn into NaNs, so they are zeroed as well).
    """
    cam = np.array(cam, dtype=np.float32)
    if not np.isfinite(cam).all() or cam.min() == cam.max():
        return np.zeros_like(cam)
    cam -= cam.min()
    cam /= cam.max()
    return cam


def resize_and_normalize(maps: np.ndarray | torch.Tensor, size: int | tuple[int, int]) -> np.ndarray:
    """(N, h, w) maps of any float dtype (bf16 tensors included) -> (N, H, W) float32 in [0, 1].

    Each map is converted to float32, resized with `cv2.resize(map, (W, H), INTER_CUBIC)` and
    then normalised by `normalize_scoremap` (the order wsolevaluation uses). size: H = W = size,
    or (H, W).
    """
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().to("cpu", torch.float32).numpy()
    maps = np.asarray(maps, np.float32)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (N, h, w); got shape {maps.shape}")
    height, width = (size, size) if isinstance(size, int) else size
    out = np.empty((len(maps), height, width), np.float32)
    for i, cam in enumerate(maps):
        out[i] = normalize_scoremap(cv2.resize(cam, (width, height), interpolation=cv2.INTER_CUBIC))
    return out


def scoremap_file(root: Path, image_id: str) -> Path:
    """wsolevaluation's file of an image's score map: `<root>/<image_id>.npy`, the id's extension kept
    (e.g. `val/x.jpg` -> `<root>/val/x.jpg.npy`): its CAMComputer saves `np.save(ospj(root, image_id))` and
    its `evaluate_wsol` loads `ospj(root, image_id + '.npy')`."""
    return Path(root) / f"{image_id}.npy"


def stripped_scoremap_file(root: Path, image_id: str) -> Path:
    """The extension-stripped form `<root>/<image_id without extension>.npy` (what acol wrote before, and
    what wsolevaluation's `evaluate_wsol` docstring describes), accepted when reading."""
    return Path(root) / Path(image_id).with_suffix(".npy")
