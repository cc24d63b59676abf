"""Map operations shared by every localization method. Always float32, whatever the autocast dtype."""
from __future__ import annotations

import torch

EPS = 1e-8


def minmax_normalize(maps: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-map min-max over the last two dims: (..., H, W) -> float32 in [0, 1].

    A flat map becomes all zeros (the epsilon guards the division), never NaN.
    """
    maps = maps.float()
    flat = maps.flatten(-2)
    lo = flat.min(dim=-1).values[..., None, None]
    hi = flat.max(dim=-1).values[..., None, None]
    return (maps - lo) / (hi - lo).clamp_min(eps)


def select_class(maps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) class maps, (B,) labels -> (B, H, W): each image's map of its label."""
    return maps[torch.arange(maps.shape[0], device=maps.device), labels]
