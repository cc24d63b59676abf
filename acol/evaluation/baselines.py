"""Class-agnostic baseline maps: what a localization map must beat without any model.

Both take the loader's batch of images as it comes, before normalisation: (B, 3, H, W) uint8 RGB at the
evaluator's resolution (the evaluation transform's output; `normalize_on_device` runs later, on the
device), and return (B, H, W) float32 maps in [0, 1], each min-max normalised (`normalize_scoremap`: a
constant map becomes zeros), as the evaluators take a model's maps.

- `centre`: a centre prior, the same map for every image: with pixel centres (x, y), x = 0..W-1, the
  image centre c = ((W - 1) / 2, (H - 1) / 2) and the elliptical distance
  d = sqrt(((x - cx) / (W / 2))^2 + ((y - cy) / (H / 2))^2), the map is 1 - d min-max normalised,
  (d_max - d) / (d_max - d_min): 1 at the central pixel(s), 0 at the corners. Its level sets are
  ellipses of the image's aspect ratio, so its threshold boxes are centred boxes of that aspect ratio.
- `brightness`: the grey level (ITU-R BT.601 luma, the weights of cv2's RGB2GRAY:
  0.299 R + 0.587 G + 0.114 B, in float32 without rounding) of the un-normalised image, min-max
  normalised per image.

The box metrics at the best threshold (MaxBoxAcc, MaxBoxAccV2, the oracle and val-chosen thresholds'
search) depend on a map only through the ranking of its values, up to the threshold grid: any map that
decreases with d gives the centre prior's boxes. A fixed threshold (`@fixed`) and PxAP's bins read the
values themselves.
"""
from __future__ import annotations

import numpy as np
import torch

from acol.evaluation.maps import normalize_scoremap
from acol.registry import Registry

BASELINE_MAPS = Registry("baseline map")
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, cv2.COLOR_RGB2GRAY's weights for R, G, B


def _check_images(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"baseline maps take the loader's (B, 3, H, W) uint8 RGB images; got "
                         f"{images.dtype} {tuple(images.shape)}")


def centre_prior(height: int, width: int) -> np.ndarray:
    """(H, W) float32: 1 - the elliptical distance from the image centre, min-max normalised (module docstring)."""
    y = (np.arange(height) - (height - 1) / 2) / (height / 2)
    x = (np.arange(width) - (width - 1) / 2) / (width / 2)
    distance = np.sqrt(y[:, None] ** 2 + x[None, :] ** 2)
    return normalize_scoremap(-distance)


@BASELINE_MAPS.register("centre")
def centre(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) uint8 -> (B, H, W) float32: `centre_prior` for every image."""
    _check_images(images)
    batch, _, height, width = images.shape
    return np.repeat(centre_prior(height, width)[None], batch, axis=0)


@BASELINE_MAPS.register("brightness")
def brightness(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) uint8 RGB -> (B, H, W) float32: each image's luma, min-max normalised."""
    _check_images(images)
    weights = torch.tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1)
    luma = (images.cpu().float() * weights).sum(1).numpy()
    return np.stack([normalize_scoremap(m) for m in luma])


def baseline_maps(name: str, images: torch.Tensor) -> np.ndarray:
    """The baseline `name`'s (B, H, W) float32 maps of a batch (an unknown name: UnknownNameError listing
    the valid ones)."""
    return BASELINE_MAPS.get(name)(images)
