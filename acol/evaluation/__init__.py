"""WSOL evaluation with wsolevaluation's protocol (clovaai): score maps, boxes, counts, metrics.

- `maps`: `normalize_scoremap`, `resize_and_normalize` (cubic upsampling, then min-max, float32);
  `scoremap_file`, wsolevaluation's `<root>/<image_id>.npy` layout of saved maps.
- `boxes`: box extraction at every CAM threshold and the IoUs, by the per-threshold definition
  (`box_ious_reference`) and by the equivalent component-tree method (`box_hits`).
- `evaluators`: `BoxEvaluator` (GT-known / top-1 / top-5 loc at fixed, val-chosen and oracle
  thresholds, MaxBoxAcc V1 and V2) and `MaskEvaluator` (PxAP); their state is int64 count
  tensors, summed by `merge` and `all_reduce`; `localization_only` drops the classification-dependent
  metrics. The metric keys are listed in `BoxEvaluator`.
  Opt-in, they also keep per-image records (`per_image=True`).
- `bootstrap`: the metrics under resampled images from those records, and paired bootstrap
  intervals of the difference between two groups of runs (`paired_difference`).
"""
from acol.evaluation.boxes import box_hits, box_ious_reference, compute_iou, contour_boxes
from acol.evaluation.evaluators import BoxEvaluator, MaskEvaluator, localization_only
from acol.evaluation.maps import normalize_scoremap, resize_and_normalize, scoremap_file, stripped_scoremap_file

__all__ = ["BoxEvaluator", "MaskEvaluator", "box_hits", "box_ious_reference", "compute_iou", "contour_boxes",
           "localization_only", "normalize_scoremap", "resize_and_normalize", "scoremap_file", "stripped_scoremap_file"]
