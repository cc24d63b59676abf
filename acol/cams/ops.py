"""Map operations shared by every localization method. Always float32, whatever the autocast dtype."""
from __future__ import annotations

import torch


def minmax_normalize(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max over the last two dims: (..., H, W) -> float32 in [0, 1].

    Any map with a positive range, however small, is stretched to exactly [0, 1] (its minimum
    becomes 0, its maximum 1); a flat map becomes all zeros, never NaN.
    """
    maps = maps.float()
    flat = maps.flatten(-2)
    lo = flat.min(dim=-1).values[..., None, None]
    spread = flat.max(dim=-1).values[..., None, None] - lo
    return torch.where(spread > 0, (maps - lo) / torch.where(spread > 0, spread, 1), 0)


def select_class(maps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) class maps, (B,) labels -> (B, H, W): each image's map of its label."""
    return maps[torch.arange(maps.shape[0], device=maps.device), labels]
