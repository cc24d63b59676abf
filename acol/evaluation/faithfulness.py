"""Faithfulness of any localizer's maps: the pointing game and RISE's deletion / insertion curves.

Both take the maps as the box evaluator sees them: the localizer's (B, h, w) maps upsampled to the
input size and min-max normalised (`resize_and_normalize`, cubic), float32 in [0, 1].

- Pointing game (Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016 / IJCV
  2018): the map's maximum is a hit when a GT pixel (inside a GT box, corners inclusive, or in the GT
  mask) lies within `tolerance` px (Euclidean) of it. Ties for the maximum: the first in raster order
  (`np.argmax`, as TorchRay's pointing game), so a flat map points at (0, 0). Images without GT are
  left out. `pointing_game` = 100 x hits / images.
- Deletion / insertion (Petsiuk et al., "RISE", BMVC 2018): pixels ranked by the map, descending, ties
  in raster order (a stable sort). Deletion starts from the image and replaces the top `k * H W //
  steps` pixels (all 3 channels) by the baseline, k = 0..steps; insertion starts from the baseline and
  puts the top pixels of the image back. At each of the steps + 1 points: the softmax probability of
  the localizer's target class (the GT label, or the prediction on the clean image for target="pred").
  AUC: the trapezoid rule over x = k / steps in [0, 1]. Deletion AUC: lower is better; insertion
  AUC: higher is better. Everything is done on the normalised tensor the model sees: the baseline
  "blur" is that tensor convolved per channel with `rise_kernel`, zero padding (zero = the data set
  mean colour): the kernel of RISE's code (`gkern(11, 5)`, which blurs its insertion substrate), an
  11x11 delta smoothed as scipy's `gaussian_filter` does (sigma 5, mode 'reflect'), nearly flat over
  its support (0.0077 at the corners, 0.0088 at the centre); "mean" is each image's per-channel mean.
  Cost: (steps + 1) forwards per image, batched in chunks.

The evaluators keep summable state (`merge`, `all_reduce`) like the box evaluators: counts for the
pointing game, float64 sums of the curves for deletion / insertion (the mean AUC is the AUC of the
mean curve, the trapezoid being linear).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from acol.cams.hooks import eval_mode
from acol.cams.localizers import class_logits, cpu_channels_last
from acol.engine import autocast, unwrap
from acol.evaluation.evaluators import _as_numpy, _check_scoremaps, _CountState

BASELINES = ("blur", "mean")
BLUR_KERNEL, BLUR_SIGMA, BLUR_TRUNCATE = 11, 5.0, 4.0


def gt_region(shape: tuple[int, int], boxes=None, mask=None) -> np.ndarray:
    """(H, W) bool: the union of the GT boxes (x0, y0, x1, y1, corners inclusive) and the GT mask."""
    region = np.zeros(shape, bool) if mask is None else _as_numpy(mask).astype(bool).copy()
    for x0, y0, x1, y1 in _as_numpy(np.zeros((0, 4)) if boxes is None else boxes).reshape(-1, 4).astype(int):
        region[y0:y1 + 1, x0:x1 + 1] = True
    return region


def pointing_hit(scoremap: np.ndarray, region: np.ndarray, tolerance: float) -> bool:
    """Whether a pixel of `region` lies within `tolerance` px of the map's first maximum (raster order)."""
    y, x = np.unravel_index(int(np.argmax(scoremap)), scoremap.shape)
    ys, xs = np.nonzero(region)
    return bool(((ys - y) ** 2 + (xs - x) ** 2 <= tolerance ** 2).any())


class PointingGame(_CountState):
    """Pointing-game counts: `hits` and `num_pointed` (the images with a GT region)."""

    def __init__(self, tolerance: float = 15):
        if tolerance < 0:
            raise ValueError(f"pointing-game tolerance must be >= 0 px; got {tolerance}")
        self.tolerance = float(tolerance)
        self.state = {"hits": torch.zeros((), dtype=torch.int64), "num_pointed": torch.zeros((), dtype=torch.int64)}

    def _config(self) -> tuple:
        return (self.tolerance,)

    def accumulate(self, scoremaps, gt_boxes=None, gt_masks=None) -> None:
        """scoremaps (N, H, W) in [0, 1]; gt_boxes: N arrays (K_i, 4) in the map's pixel grid, or None;
        gt_masks: (N, H, W) bool foreground, or None."""
        maps = _check_scoremaps(scoremaps)
        for i, scoremap in enumerate(maps):
            region = gt_region(scoremap.shape, None if gt_boxes is None else gt_boxes[i],
                               None if gt_masks is None else gt_masks[i])
            if region.any():
                self.state["num_pointed"] += 1
                self.state["hits"] += pointing_hit(scoremap, region, self.tolerance)

    def compute(self) -> dict[str, float]:
        """{"pointing_game": hits in % of the images with GT} (empty without any)."""
        n = int(self.state["num_pointed"])
        return {"pointing_game": 100.0 * int(self.state["hits"]) / n} if n else {}


def trapezoid_auc(curve) -> float:
    """Area under `curve` sampled at x = 0, 1/n, ..., 1 (n + 1 points), by the trapezoid rule."""
    y = np.asarray(curve, np.float64)
    return float((y.sum() - (y[0] + y[-1]) / 2) / (len(y) - 1))


def rise_kernel(size: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA, truncate: float = BLUR_TRUNCATE) -> torch.Tensor:
    """(size, size) float64, sum 1: a size x size delta (1 at index size // 2) filtered along each axis
    by the Gaussian sampled at -r..r, r = int(truncate * sigma + 0.5), normalised to sum 1, the delta
    extended by half-sample symmetric reflection (d c b a | a b c d | d c b a): scipy's
    `gaussian_filter(delta, sigma)` (mode 'reflect', truncate 4), which RISE's `gkern` returns. With
    r >= size the reflected copies of the delta add up: 1-D weight i = sum of the Gaussian at every
    distance from i to a copy."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1)
    weights = torch.exp(-offsets.double() ** 2 / (2 * sigma ** 2))
    weights = weights / weights.sum()
    folded = (torch.arange(size)[:, None] + offsets) % (2 * size)  # (size, 2r + 1) positions read by each output
    source = torch.where(folded < size, folded, 2 * size - 1 - folded)  # ... as reflected into the input
    profile = (weights * (source == size // 2)).sum(dim=1)
    return torch.outer(profile, profile)


def gaussian_blur(images: torch.Tensor, size: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """(B, C, H, W) -> the same convolved per channel with `rise_kernel(size, sigma)` (float32), zero padding."""
    kernel = rise_kernel(size, sigma)
    channels = images.shape[1]
    weight = kernel.to(images.device, torch.float32).expand(channels, 1, size, size)
    return F.conv2d(images.float(), weight, padding=size // 2, groups=channels)


def baseline_images(images: torch.Tensor, baseline: str) -> torch.Tensor:
    """The substrate pixels are replaced by: "blur" (`gaussian_blur`) or "mean" (per image and channel)."""
    if baseline == "blur":
        return gaussian_blur(images)
    if baseline == "mean":
        return images.float().mean(dim=(2, 3), keepdim=True).expand_as(images).contiguous()
    raise ValueError(f"baseline must be one of {', '.join(BASELINES)}; got {baseline!r}")


def pixel_ranks(scoremaps: torch.Tensor) -> torch.Tensor:
    """(B, H, W) maps -> (B, H, W) int64 rank of each pixel: 0 the highest, ties in raster order."""
    order = torch.sort(-scoremaps.flatten(1).float(), dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks.view(scoremaps.shape)


def perturbation_curves(model: nn.Module, images: torch.Tensor, scoremaps: torch.Tensor, classes: torch.Tensor,
                        forward_labels: torch.Tensor | None, steps: int = 16, baseline: str = "blur",
                        chunk: int = 64) -> dict[str, torch.Tensor]:
    """{"deletion", "insertion"}: (B, steps + 1) float64 probabilities of `classes` (B,) as the top
    `k * H W // steps` pixels of each map (B, H, W) at the input size are deleted / inserted.

    images: (B, 3, H, W) normalised, as the model sees them; forward_labels: what the model's forward
    gets with each image (ACoL erases with it; see `Localizer.forward_labels`). The model runs in
    eval mode under no_grad, `chunk` perturbed images per forward; its train flags are restored."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    b, _, h, w = images.shape
    if scoremaps.shape != (b, h, w):
        raise ValueError(f"scoremaps {tuple(scoremaps.shape)} must be (B, H, W) of the images {tuple(images.shape)}")
    images = images.float()
    substrate = baseline_images(images, baseline)
    ranks = pixel_ranks(scoremaps.to(images.device))[:, None]  # (B, 1, H, W)
    counts = [k * h * w // steps for k in range(steps + 1)]
    jobs = [(mode, i, k) for mode in ("deletion", "insertion") for i in range(b) for k in range(steps + 1)]
    out = {mode: torch.zeros(b, steps + 1, dtype=torch.float64) for mode in ("deletion", "insertion")}
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(jobs), chunk):
            part = jobs[start:start + chunk]
            batch = []
            for mode, i, k in part:
                top = ranks[i] < counts[k]
                first, second = (substrate[i], images[i]) if mode == "deletion" else (images[i], substrate[i])
                batch.append(torch.where(top, first, second))
            index = torch.tensor([i for _, i, _ in part], device=images.device)
            labels = None if forward_labels is None else forward_labels[index]
            logits = class_logits(model, cpu_channels_last(torch.stack(batch)), labels).float()
            probs = logits.softmax(dim=1).gather(1, classes[index][:, None])[:, 0].double().cpu()
            for (mode, i, k), p in zip(part, probs):
                out[mode][i, k] = p
    return out


class DeletionInsertion(_CountState):
    """Summed deletion / insertion curves (float64, steps + 1 points each) and the image count."""

    def __init__(self, steps: int = 16, baseline: str = "blur"):
        if steps < 1:
            raise ValueError(f"deletion/insertion steps must be >= 1; got {steps}")
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {', '.join(BASELINES)}; got {baseline!r}")
        self.steps, self.baseline = int(steps), baseline
        self.state = {"num_curves": torch.zeros((), dtype=torch.float64),
                      "deletion": torch.zeros(steps + 1, dtype=torch.float64),
                      "insertion": torch.zeros(steps + 1, dtype=torch.float64)}

    def _config(self) -> tuple:
        return self.steps, self.baseline

    def accumulate(self, curves: dict[str, torch.Tensor]) -> None:
        """Add `perturbation_curves`' (B, steps + 1) curves."""
        for mode in ("deletion", "insertion"):
            if curves[mode].shape[1] != self.steps + 1:
                raise ValueError(f"{mode} curves have {curves[mode].shape[1]} points, expected {self.steps + 1}")
            self.state[mode] += curves[mode].double().sum(dim=0).cpu()
        self.state["num_curves"] += len(curves["deletion"])

    def mean_curves(self) -> dict[str, np.ndarray]:
        """{"fraction": (steps + 1,) x in [0, 1], "deletion", "insertion": mean probability in %}."""
        n = max(float(self.state["num_curves"]), 1.0)
        return {"fraction": np.linspace(0, 1, self.steps + 1),
                **{mode: 100 * self.state[mode].numpy() / n for mode in ("deletion", "insertion")}}

    def compute(self) -> dict[str, float]:
        """{"deletion_auc", "insertion_auc"}: the mean curves' areas, in % (probability x 100)."""
        if float(self.state["num_curves"]) == 0:
            return {}
        curves = self.mean_curves()
        return {f"{mode}_auc": trapezoid_auc(curves[mode]) for mode in ("deletion", "insertion")}


class Faithfulness:
    """The pointing game and deletion / insertion curves of one localizer's maps, fed batch by batch by
    the pass that scores its boxes (`accumulate_split(..., on_batch=faithfulness)`), so each map is
    computed once. The target class and the forward's labels are the localizer's (`classes`,
    `forward_labels`; a bare callable or None, the model's own map: the GT labels); 2 (steps + 1)
    forwards per image, `chunk` at a time. `all_reduce()` sums over ranks, then `compute()`."""

    def __init__(self, model: nn.Module, localizer, dtype, tolerance: float = 15, steps: int = 16,
                 baseline: str = "blur", chunk: int = 64):
        self.model, self.localizer, self.dtype, self.chunk = unwrap(model), localizer, dtype, chunk
        self.pointing, self.perturbation = PointingGame(tolerance), DeletionInsertion(steps, baseline)

    def __call__(self, batch: dict, images: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor,
                 scoremaps: np.ndarray) -> None:
        """One batch: images (B, 3, H, W) normalised, labels (B,), the localizer's logits (B, C) and its
        maps as the box evaluator sees them (B, H, W), float32 in [0, 1]."""
        masks = batch["mask"].numpy() == 1 if "mask" in batch else None
        self.pointing.accumulate(scoremaps, [b.numpy() for b in batch["boxes"]], masks)
        classes = self.localizer.classes(logits, labels) if hasattr(self.localizer, "classes") else labels
        forward = self.localizer.forward_labels(labels) if hasattr(self.localizer, "forward_labels") else labels
        with autocast(images.device, self.dtype):
            curves = perturbation_curves(self.model, images, torch.from_numpy(scoremaps), classes, forward,
                                         self.perturbation.steps, self.perturbation.baseline, self.chunk)
        self.perturbation.accumulate(curves)

    def all_reduce(self) -> None:
        self.pointing.all_reduce()
        self.perturbation.all_reduce()

    def compute(self) -> dict[str, float]:
        return self.pointing.compute() | self.perturbation.compute()
