"""Evaluators whose whole state is int64 count tensors: accumulate per batch, sum across processes.

Summing the counts of any split of the images (`merge`, `all_reduce`) gives exactly the counts of
one pass, so distributed evaluation needs no padding and no gathering of maps.

Opt-in (`per_image=True`), an evaluator also
keeps each image's contribution to those counts, `per_image_records()`, from which
`acol.evaluation.bootstrap` recomputes the metrics under resampled images. The records stay in
the process (one process only: `all_reduce` refuses them).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from acol.evaluation.boxes import box_hits, box_ious_reference


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _check_scoremaps(scoremaps) -> np.ndarray:
    """(N, H, W) float maps in [0, 1] without NaN (wsolevaluation `check_scoremap_validity`)."""
    maps = _as_numpy(scoremaps)
    if maps.ndim != 3 or not np.issubdtype(maps.dtype, np.floating):
        raise ValueError(f"scoremaps must be a float (N, H, W) array; got {maps.dtype} {maps.shape}")
    if maps.size and not (0 <= maps.min() and maps.max() <= 1):  # min and max are NaN if any value is
        raise ValueError("scoremaps must lie in [0, 1] without NaN (see resize_and_normalize)")
    return maps


class _CountState:
    """Named int64 CPU tensors with the sum operations shared by the evaluators, and the optional
    per-image records: `records` {name: list of (N_batch, ...) arrays}, None when not kept."""

    state: dict[str, torch.Tensor]
    records: dict[str, list[np.ndarray]] | None = None

    def _keep_records(self, per_image: bool, names: tuple[str, ...]) -> None:
        self.records = {name: [] for name in names} if per_image else None

    def _record(self, **arrays: np.ndarray) -> None:
        if self.records is not None:
            for name, array in arrays.items():
                self.records[name].append(array)

    def per_image_records(self) -> dict[str, np.ndarray]:
        """{name: (N, ...) array} over the images in accumulation order (see the subclass)."""
        if self.records is None:
            raise ValueError("this evaluator keeps no per-image records (build it with per_image=True)")
        return {name: np.concatenate(parts) for name, parts in self.records.items() if parts}

    def _config(self) -> tuple:
        raise NotImplementedError

    def merge(self, other: "_CountState") -> None:
        """Add `other`'s counts to this evaluator's (same configuration)."""
        if type(other) is not type(self) or other._config() != self._config():
            raise ValueError("cannot merge evaluators with different configurations")
        if (self.records is None) != (other.records is None):
            raise ValueError("cannot merge an evaluator with per-image records and one without")
        for name, counts in self.state.items():
            counts += other.state[name]
        for name, parts in (self.records or {}).items():
            parts += other.records[name]

    def all_reduce(self) -> None:
        """Sum the counts of all processes in place (one collective); a no-op without a process group."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        if self.records is not None and dist.get_world_size() > 1:
            raise ValueError("per-image records are not gathered across processes: evaluate in one process")
        flat = torch.cat([t.reshape(-1) for t in self.state.values()])
        if dist.get_backend() == dist.Backend.NCCL:  # NCCL reduces CUDA tensors only
            flat = flat.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat.cpu()
        offset = 0
        for counts in self.state.values():
            counts.copy_(flat[offset:offset + counts.numel()].view_as(counts))
            offset += counts.numel()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: counts.clone() for name, counts in self.state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state.keys() != self.state.keys():
            raise KeyError(f"state keys {sorted(state)} differ from {sorted(self.state)}")
        for name, counts in self.state.items():
            if state[name].shape != counts.shape:
                raise ValueError(f"{name}: shape {tuple(state[name].shape)} != {tuple(counts.shape)}")
            counts.copy_(state[name])


CLASSIFICATION_KEYS = ("top1_cls", "top5_cls", "top1_loc", "top5_loc")  # key prefixes that need class predictions


def localization_only(metrics: dict[str, float]) -> dict[str, float]:
    """`metrics` without the classification-dependent ones (CLASSIFICATION_KEYS): for bare score maps
    and for models without a classifier (the few-shot baseline)."""
    return {k: v for k, v in metrics.items() if not k.startswith(CLASSIFICATION_KEYS)}


class BoxEvaluator(_CountState):
    """Box metrics over CAM thresholds tau in `np.arange(0, 1, cam_curve_interval)`.

    Counts per tau: V1 (largest contour, IoU >= 0.5) correct images, and those with the top-1 /
    top-5 class right too; V2 (all contours) correct images per IoU threshold; plus top-1 / top-5
    classification hits and the number of images.

    `compute(threshold=None)` returns percentages (0..100) under labelled threshold policies:

    - `top1_cls`, `top5_cls`: classification accuracy.
    - `@fixed` at `fixed_cam_threshold` (the classic papers' 0.2): `gt_known_loc@fixed`,
      `top1_loc@fixed`, `top5_loc@fixed`.
    - `@oracle` at `best_cam_threshold`, the tau maximising GT-known loc on this split (the first
      on ties): `gt_known_loc@oracle`, `top1_loc@oracle`, `top5_loc@oracle`; `maxboxacc` (V1
      MaxBoxAcc) equals `gt_known_loc@oracle`.
    - V2 (all contours), tau maximised separately per IoU threshold d: `maxboxacc_iou{d}` and
      `best_cam_threshold_iou{d}`; `maxboxacc_v2` is their mean.
    - `@val` when `threshold` (a tau chosen on another split, e.g. val's `best_cam_threshold`) is
      given: `gt_known_loc@val`, `top1_loc@val`, `top5_loc@val` at `val_cam_threshold` (the grid
      tau nearest to `threshold`).
    - `num_images`; `num_boxed`, the images with GT boxes: the box metrics are over those, and left
      out when there are none (a masks-only split, as OpenImages: its localization metric is PxAP).

    method: "fast" (`box_hits`, the default) or "reference" (`box_ious_reference`, one
    `cv2.findContours` per threshold); both give identical counts.

    per_image: keep `per_image_records()`, (N, ...) bool
    arrays: `top1`, `top5` (classification hits), `boxed` (has GT boxes), `gt_known` (N, T) (V1
    hit per tau; False for unboxed images) and `box_v2` (N, D, T) (V2 hit per IoU threshold and tau).
    The counts are their sums: `gt_known` sums to state `gt_known`, `gt_known & top1[:, None]` to
    `top1_loc`, and so on.
    """

    def __init__(self, cam_curve_interval: float = 0.001, iou_thresholds=(30, 50, 70),
                 fixed_threshold: float = 0.2, method: str = "fast", per_image: bool = False):
        if method not in ("fast", "reference"):
            raise ValueError(f"method must be 'fast' or 'reference'; got {method!r}")
        self.method = method
        self.cam_curve_interval = float(cam_curve_interval)
        self.thresholds = np.arange(0, 1, self.cam_curve_interval)
        self.iou_thresholds = tuple(int(d) for d in iou_thresholds)
        self.fixed_threshold = float(fixed_threshold)
        self._deltas = np.array([d / 100 for d in self.iou_thresholds])
        num = len(self.thresholds)
        zeros = lambda *shape: torch.zeros(shape, dtype=torch.int64)  # noqa: E731
        self.state = {"num_images": zeros(), "num_boxed": zeros(), "top1_cls": zeros(), "top5_cls": zeros(),
                      "gt_known": zeros(num), "top1_loc": zeros(num), "top5_loc": zeros(num),
                      "box_v2": zeros(len(self.iou_thresholds), num)}
        self._keep_records(per_image, ("top1", "top5", "boxed", "gt_known", "box_v2"))

    def _config(self) -> tuple:
        return self.cam_curve_interval, self.iou_thresholds, self.fixed_threshold

    def accumulate(self, scoremaps, gt_boxes, top1_correct, top5_correct) -> None:
        """Add a batch.

        scoremaps: (N, H, W) float in [0, 1], already resized and normalised; gt_boxes: N int
        arrays (K_i >= 1, 4) of x0, y0, x1, y1 in the score map's pixel grid; top1_correct,
        top5_correct: (N,) bool, whether the GT class is the top-1 / among the top-5 predictions.
        """
        maps = _check_scoremaps(scoremaps)
        top1 = _as_numpy(top1_correct).astype(bool).reshape(-1)
        top5 = _as_numpy(top5_correct).astype(bool).reshape(-1)
        if not len(maps) == len(gt_boxes) == len(top1) == len(top5):
            raise ValueError("scoremaps, gt_boxes, top1_correct and top5_correct differ in length")
        v1 = np.zeros((len(maps), len(self.thresholds)), bool)
        v2 = np.zeros((len(maps), *self.state["box_v2"].shape), bool)
        boxed = np.zeros(len(maps), bool)
        for i, (scoremap, boxes) in enumerate(zip(maps, gt_boxes)):
            boxes = _as_numpy(boxes).astype(np.int64).reshape(-1, 4)
            if len(boxes) == 0:  # no GT box (a masks-only data set): classification counts only
                continue
            if (boxes < 0).any() or (boxes[:, 2:] < boxes[:, :2]).any():
                raise ValueError(f"image {i}: GT boxes must be x0y0x1y1 with 0 <= x0 <= x1, y0 <= y1; got {boxes.tolist()}")
            boxed[i] = True
            if self.method == "fast":
                v1[i], v2[i] = box_hits(scoremap, boxes, self.thresholds, self._deltas)
            else:
                iou1, iou2 = box_ious_reference(scoremap, boxes, self.thresholds)
                v1[i], v2[i] = iou1 >= 0.5, iou2[None] >= self._deltas[:, None]
        add = lambda name, x: self.state[name].add_(torch.from_numpy(np.asarray(x, np.int64)))  # noqa: E731
        add("num_images", len(maps))
        add("num_boxed", boxed.sum())
        add("top1_cls", top1.sum())
        add("top5_cls", top5.sum())
        add("gt_known", v1.sum(0))
        add("top1_loc", (v1 & top1[:, None]).sum(0))
        add("top5_loc", (v1 & top5[:, None]).sum(0))
        add("box_v2", v2.sum(0))
        self._record(top1=top1, top5=top5, boxed=boxed, gt_known=v1, box_v2=v2)

    def _index(self, tau: float) -> int:
        if not 0 <= tau < 1:
            raise ValueError(f"CAM threshold must lie in [0, 1); got {tau}")
        return int(np.argmin(np.abs(self.thresholds - tau)))

    def box_acc_curves(self) -> dict[str, np.ndarray]:
        """Per-tau curves in percent: `thresholds` (T,), `gt_known`, `top1_loc`, `top5_loc` (V1)
        and `box_acc_iou{d}` (V2, one per IoU threshold)."""
        scale = 100.0 / max(int(self.state["num_boxed"]), 1)
        curves = {"thresholds": self.thresholds.copy()}
        for name in ("gt_known", "top1_loc", "top5_loc"):
            curves[name] = self.state[name].numpy() * scale
        for d, counts in zip(self.iou_thresholds, self.state["box_v2"].numpy()):
            curves[f"box_acc_iou{d}"] = counts * scale
        return curves

    def compute(self, threshold: float | None = None) -> dict[str, float]:
        """The metrics as a flat dict of floats (see the class docstring for the keys)."""
        n = int(self.state["num_images"])
        curves = self.box_acc_curves()
        metrics = {"num_images": float(n), "top1_cls": 100.0 * int(self.state["top1_cls"]) / max(n, 1),
                   "top5_cls": 100.0 * int(self.state["top5_cls"]) / max(n, 1)}
        if int(self.state["num_boxed"]) == 0 and n > 0:  # nothing to localize with boxes
            return metrics
        metrics["num_boxed"] = float(int(self.state["num_boxed"]))
        # (policy, key of its tau, tau index)
        policies = [("fixed", "fixed_cam_threshold", self._index(self.fixed_threshold)),
                    ("oracle", "best_cam_threshold", int(np.argmax(curves["gt_known"])))]
        if threshold is not None:
            policies.append(("val", "val_cam_threshold", self._index(threshold)))
        for policy, tau_key, i in policies:
            metrics[tau_key] = float(self.thresholds[i])
            for curve, metric in (("gt_known", "gt_known_loc"), ("top1_loc", "top1_loc"), ("top5_loc", "top5_loc")):
                metrics[f"{metric}@{policy}"] = float(curves[curve][i])
        metrics["maxboxacc"] = metrics["gt_known_loc@oracle"]
        for d in self.iou_thresholds:
            curve = curves[f"box_acc_iou{d}"]
            metrics[f"maxboxacc_iou{d}"] = float(curve.max())
            metrics[f"best_cam_threshold_iou{d}"] = float(self.thresholds[int(np.argmax(curve))])
        metrics["maxboxacc_v2"] = float(np.mean([metrics[f"maxboxacc_iou{d}"] for d in self.iou_thresholds]))
        return metrics


class MaskEvaluator(_CountState):
    """PxAP: pixel precision-recall over score thresholds, from split-level score histograms.

    Bins are `[*np.arange(0, 1, cam_curve_interval), 1.0, 2.0, 3.0]` (np.histogram semantics:
    [e_i, e_i+1), the last one closed), one histogram for foreground pixels and one for the
    background; `compute` follows wsolevaluation's MaskEvaluator exactly.

    per_image: keep `per_image_records()`, `fg_hist`
    and `bg_hist` (N, bins) int64, each image's histograms (summing to the state's).
    """

    def __init__(self, cam_curve_interval: float = 0.001, per_image: bool = False):
        self.cam_curve_interval = float(cam_curve_interval)
        self.edges = np.append(np.arange(0, 1, self.cam_curve_interval), [1.0, 2.0, 3.0])
        num_bins = len(self.edges) - 1
        self.state = {"fg_hist": torch.zeros(num_bins, dtype=torch.int64),
                      "bg_hist": torch.zeros(num_bins, dtype=torch.int64)}
        self._keep_records(per_image, ("fg_hist", "bg_hist"))

    def _config(self) -> tuple:
        return (self.cam_curve_interval,)

    def _bins(self, scores: np.ndarray) -> np.ndarray:
        """The histogram bin of each score in [0, 1], exactly as np.histogram with `self.edges`."""
        scores = scores.astype(np.float64)
        last = len(self.edges) - 4  # the bin [1.0, 2.0)
        guess = np.minimum((scores / self.cam_curve_interval).astype(np.int64), last)  # off by one at most
        guess -= scores < self.edges[guess]
        guess += scores >= self.edges[guess + 1]
        return guess

    def accumulate(self, scoremaps, gt_masks, ignore_masks=None) -> None:
        """Add a batch. scoremaps (N, H, W) in [0, 1]; gt_masks (N, H, W) bool foreground;
        ignore_masks (N, H, W) bool, background pixels left out (foreground pixels always count,
        as wsolevaluation defines the ignore region as the ignore box minus the foreground)."""
        maps = _check_scoremaps(scoremaps)
        fg = _as_numpy(gt_masks).astype(bool)
        ignore = np.zeros_like(fg) if ignore_masks is None else _as_numpy(ignore_masks).astype(bool)
        if fg.shape != maps.shape or ignore.shape != maps.shape:
            raise ValueError(f"masks {fg.shape} / {ignore.shape} must match scoremaps {maps.shape}")
        num_bins = len(self.edges) - 1
        per_image = {}
        for name, where in (("fg_hist", fg), ("bg_hist", ~fg & ~ignore)):
            if self.records is None:
                counts = np.bincount(self._bins(maps[where]), minlength=num_bins)
            else:  # one histogram per image: offset each image's bins by image * num_bins
                image = np.broadcast_to(np.arange(len(maps))[:, None, None], maps.shape)[where]
                per_image[name] = np.bincount(image * num_bins + self._bins(maps[where]),
                                              minlength=len(maps) * num_bins).reshape(len(maps), num_bins)
                counts = per_image[name].sum(0)
            self.state[name].add_(torch.from_numpy(counts.astype(np.int64)))
        self._record(**per_image)

    def compute(self) -> dict[str, float]:
        """{"pxap": area under the pixel precision-recall curve, in percent}; 0 without foreground."""
        return {"pxap": float(pxap(self.state["fg_hist"].numpy(), self.state["bg_hist"].numpy()))}


def pxap(fg_hist: np.ndarray, bg_hist: np.ndarray) -> float:
    """PxAP in percent of (bins,) foreground / background score histograms (counts, or weighted
    counts): wsolevaluation's formula, 0 without foreground."""
    fg = np.asarray(fg_hist, np.float64)
    bg = np.asarray(bg_hist, np.float64)
    num_fg = fg.sum()
    if num_fg == 0:
        return 0.0
    tp = fg[::-1].cumsum()  # thresholds from high to low
    fp = bg[::-1].cumsum()
    predicted = tp + fp
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = tp / predicted
    recall = tp / num_fg
    return float((precision[1:] * np.diff(recall))[predicted[1:] != 0].sum() * 100)
