"""HaS: Hide-and-Seek (Singh & Lee, ICCV 2017), as wsolevaluation implements it.

At training time the image is tiled with square cells of `grid_size` pixels (origins 0, g, 2g, ...;
the last row and column of cells cut at the border) and every cell of every image is hidden with
probability `drop_rate`, independently at each step: its pixels are set to 0 after normalisation in
all channels, i.e. to the data set's mean colour, so that hidden regions look like the average
activation the test images see. Test images are untouched; the model is the plain CAM classifier
(`model.cam_head`) trained with cross-entropy.

wsolevaluation's default cell is 4 px at 224 px; the paper hides cells of 16-56 px (one size per run,
or one drawn per image). Unlike wsolevaluation's loop, non-square images are tiled along both axes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from acol.methods.base import METHODS, check_range
from acol.methods.cam import CAMClassifierMethod


@dataclass
class HaSConfig:
    grid_size: int = 4                  # side of a hidden cell, in pixels of the network input (0: no hiding)
    drop_rate: float = 0.5              # probability that a cell is hidden

    def check(self) -> None:
        check_range(self, "grid_size", 0, note=" (0: no hiding)")
        check_range(self, "drop_rate", 0, 1)


def hide_cells(images: torch.Tensor, grid_size: int, hidden: torch.Tensor) -> torch.Tensor:
    """images (B, C, H, W) with the cells marked in `hidden` (B, ceil(H/g), ceil(W/g)) bool set to 0
    in every channel; cell (i, j) covers rows [i g, (i+1) g) and columns [j g, (j+1) g). A new tensor."""
    height, width = images.shape[-2:]
    pixels = hidden.repeat_interleave(grid_size, dim=1).repeat_interleave(grid_size, dim=2)[:, :height, :width]
    return images.masked_fill(pixels[:, None].to(images.device), 0)


@METHODS.register("has")
class HaS(CAMClassifierMethod):
    """Hide-and-Seek: the CAM classifier trained on images with random cells hidden."""

    Config = HaSConfig

    def transform_batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.hparams.grid_size
        if g == 0:
            return images, labels
        batch, _, height, width = images.shape
        draws = torch.rand(batch, math.ceil(height / g), math.ceil(width / g))  # the CPU generator, on any device
        return hide_cells(images, g, draws < self.hparams.drop_rate), labels
