"""Paired bootstrap confidence intervals of metric differences between two groups of runs.

A run's per-image records (`BoxEvaluator` / `MaskEvaluator.per_image_records()`, on one split) give
its metrics under any image weights: `resampled_metrics` recomputes them for B weight vectors at
once, each weight an image's count in a resample (unit weights: the evaluators' own metrics,
exactly). `paired_difference` compares group A (runs, e.g. seeds) with group B on the same images:

- every replicate draws one multinomial resample of the n images, shared by every run of both
  groups (paired over images), and resamples each group's runs with replacement (a group of one
  run: images only; with `paired_runs`, the two groups are the same models under two
  localizers, so one run resample serves both);
- a group's value is the mean over its resampled runs of the metric on the resampled images, and
  the replicate's difference is A - B;
- the interval is the (1 - confidence) / 2 and (1 + confidence) / 2 percentiles of the B
  differences; the point difference is that of the real data (unit weights, every run once).

Metrics (percent): `top1_cls`; `gt_known_loc@fixed`, `top1_loc@fixed`; `gt_known_loc@val`,
`top1_loc@val` at the run's val-chosen threshold, kept fixed in every replicate (not re-chosen);
`maxboxacc` and `maxboxacc_v2`, maxima over the thresholds of each replicate's curves (as the
metric is defined on any set of images); `pxap` where masks exist.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from acol.evaluation.evaluators import BoxEvaluator, MaskEvaluator, pxap

METRICS = ("top1_cls", "gt_known_loc@fixed", "top1_loc@fixed", "gt_known_loc@val", "top1_loc@val",
           "maxboxacc", "maxboxacc_v2", "pxap")


def _tau_index(thresholds: np.ndarray, tau: float) -> int:
    return int(np.argmin(np.abs(thresholds - tau)))  # the grid tau nearest to tau, as BoxEvaluator


def resampled_metrics(records: dict, weights: np.ndarray) -> dict[str, np.ndarray]:
    """The metrics of one run under image weights (B, n) -> {metric: (B,) float64}.

    records: a run's per-image records (box: `top1`, `top5`, `boxed`, `gt_known`, `box_v2`, without
    `top1` and `top5` for maps without a classifier: then no `top1_cls`, `top1_loc@...`; mask:
    `fg_hist`, `bg_hist`; either may be absent) plus `thresholds` (T,) and `fixed_threshold`, and
    `val_cam_threshold` for the `@val` metrics (`run_records`). Box metrics are left out when no
    image has a box (a replicate without one scores 0, as an evaluator does), `pxap` without masks.
    """
    weights = np.asarray(weights, np.float64)
    out = {}
    classifies = "top1" in records
    if classifies:
        out["top1_cls"] = 100.0 * (weights @ records["top1"]) / np.maximum(weights.sum(1), 1)
    if "boxed" in records and records["boxed"].any():
        scale = 100.0 / np.maximum(weights @ records["boxed"], 1)
        hits = records["gt_known"]
        taus = {"fixed": records["fixed_threshold"], "val": records.get("val_cam_threshold")}
        for policy, tau in taus.items():
            if tau is not None:
                i = _tau_index(records["thresholds"], tau)
                out[f"gt_known_loc@{policy}"] = (weights @ hits[:, i]) * scale
                if classifies:
                    out[f"top1_loc@{policy}"] = (weights @ (hits[:, i] & records["top1"])) * scale
        w32 = weights.astype(np.float32)  # exact: sums of counts below 2^24
        out["maxboxacc"] = (w32 @ hits.astype(np.float32)).astype(np.float64).max(1) * scale
        v2 = records["box_v2"]
        per_iou = [(w32 @ v2[:, d].astype(np.float32)).astype(np.float64).max(1) * scale
                   for d in range(v2.shape[1])]
        out["maxboxacc_v2"] = np.mean(np.stack(per_iou, 1), axis=1)
    if "fg_hist" in records:
        fg, bg = weights @ records["fg_hist"], weights @ records["bg_hist"]
        out["pxap"] = np.array([pxap(f, b) for f, b in zip(fg, bg)])
    return out


PER_IMAGE = ("top1", "top5", "boxed", "gt_known", "box_v2", "fg_hist", "bg_hist")  # (N, ...) record arrays


def run_records(boxes_eval: BoxEvaluator, masks_eval: MaskEvaluator | None = None,
                val_threshold: float | None = None, image_ids: list[str] | None = None,
                classifies: bool = True) -> dict:
    """One run's records for `resampled_metrics`, from evaluators built with per-image records;
    val_threshold: the box threshold chosen on val (the `@val` metrics), as given to `compute`;
    image_ids: the images in accumulation order (for `aligned`); classifies false (maps without a
    classifier, e.g. `acol.evaluation.baselines`): without the classification hits `top1`, `top5`."""
    records = {**boxes_eval.per_image_records(), "thresholds": boxes_eval.thresholds,
               "fixed_threshold": boxes_eval.fixed_threshold}
    if not classifies:
        del records["top1"], records["top5"]
    if masks_eval is not None:
        records.update(masks_eval.per_image_records())
    if val_threshold is not None:
        records["val_cam_threshold"] = val_threshold
    if image_ids is not None:
        records["image_ids"] = np.array(image_ids)
    return records


def aligned(runs: list[dict]) -> list[dict] | None:
    """The runs' records with their images in one order (sorted by id), or None when a run's records
    have no `image_ids` or the runs are of different images (e.g. val subsets drawn with other seeds)."""
    if any("image_ids" not in r for r in runs):
        return None
    if len({tuple(sorted(r["image_ids"].tolist())) for r in runs}) != 1:
        return None
    out = []
    for r in runs:
        order = np.argsort(r["image_ids"], kind="stable")
        out.append({k: v[order] if k in PER_IMAGE or k == "image_ids" else v for k, v in r.items()})
    return out


@dataclass
class Difference:
    """A - B on the real data and its bootstrap percentile interval [low, high]."""
    difference: float
    low: float
    high: float

    def text(self, digits: int = 1) -> str:
        return f"{self.difference:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def paired_difference(group_a: list[dict], group_b: list[dict], metrics=METRICS, replicates: int = 1000,
                      confidence: float = 0.95, seed: int = 0, paired_runs: bool = False) -> dict[str, Difference]:
    """{metric: Difference} of group A's mean metric minus group B's (see the module docstring).

    group_a, group_b: each a list of per-image records (`resampled_metrics`), one per run, all over
    the same n images in the same order. metrics: those every run has are compared. paired_runs:
    the groups' runs correspond one to one (the same models), resampled together. Deterministic in
    `seed`.
    """
    runs = group_a + group_b
    sizes = {len(r.get("boxed", r.get("fg_hist"))) for r in runs}
    if len(sizes) != 1:
        raise ValueError(f"the runs are evaluated on different numbers of images: {sorted(sizes)}")
    if paired_runs and len(group_a) != len(group_b):
        raise ValueError(f"paired runs need groups of one size; got {len(group_a)} and {len(group_b)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence}")
    (n,) = sizes
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=replicates)
    picks_a = rng.integers(0, len(group_a), (replicates, len(group_a)))
    picks_b = picks_a if paired_runs else rng.integers(0, len(group_b), (replicates, len(group_b)))
    unit = np.ones((1, n))
    real = [resampled_metrics(r, unit) for r in runs]
    boot = [resampled_metrics(r, weights) for r in runs]
    common = [m for m in metrics if all(m in values for values in real)]
    columns = np.arange(replicates)[:, None]
    out = {}
    for metric in common:
        samples = np.stack([values[metric] for values in boot], 1)  # (B, runs)
        points = np.array([values[metric][0] for values in real])
        a, b = samples[:, :len(group_a)], samples[:, len(group_a):]
        diffs = a[columns, picks_a].mean(1) - b[columns, picks_b].mean(1)
        low, high = np.percentile(diffs, [50 * (1 - confidence), 50 * (1 + confidence)])
        out[metric] = Difference(float(points[:len(group_a)].mean() - points[len(group_a):].mean()),
                                 float(low), float(high))
    return out
