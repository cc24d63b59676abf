"""Text reports of evaluation results: the labelled summary table."""
from __future__ import annotations

import re
import statistics

# (metric key, column title); the threshold policy is part of the title. The faithfulness and sanity
# columns (acol.evaluation.faithfulness, .sanity) appear only when those opt-in checks ran. `maxboxacc_v2` is preceded by
# its per-IoU parts, `maxboxacc_iou{d}` as "MaxBoxAcc@{d}", for the IoU thresholds the metrics have.
SUMMARY = [
    ("top1_cls", "top-1 cls"),
    ("gt_known_loc@fixed", "GT-known loc @fixed"),
    ("top1_loc@fixed", "top-1 loc @fixed"),
    ("gt_known_loc@val", "GT-known loc @val"),
    ("top1_loc@val", "top-1 loc @val"),
    ("gt_known_loc@oracle", "GT-known loc @oracle"),
    ("maxboxacc_v2", "MaxBoxAccV2 (oracle)"),
    ("pxap", "PxAP"),
    ("pointing_game", "pointing game"),
    ("deletion_auc", "deletion AUC (lower better)"),
    ("insertion_auc", "insertion AUC (higher better)"),
    ("randomization_spearman", "randomized Spearman"),
    ("randomization_ssim", "randomized SSIM"),
]


def iou_columns(metrics: list[dict]) -> list[tuple[str, str]]:
    """(key, "MaxBoxAcc@d") of each IoU threshold d (percent) in any of the metric dicts, ascending."""
    ious = {int(k.removeprefix("maxboxacc_iou")) for m in metrics for k in m if k.startswith("maxboxacc_iou")}
    return [(f"maxboxacc_iou{d}", f"MaxBoxAcc@{d}") for d in sorted(ious)]


def format_table(rows: list[tuple[str, dict]], columns=SUMMARY) -> str:
    """A markdown table, one row per (label, metrics); columns no row has are left out."""
    expanded = []
    for key, title in columns:
        if key == "maxboxacc_v2":
            expanded += iou_columns([m for _, m in rows])
        expanded.append((key, title))
    present = [(k, t) for k, t in expanded if any(k in m for _, m in rows)]
    lines = ["| split | " + " | ".join(t for _, t in present) + " |",
             "|---|" + "---:|" * len(present)]
    for label, metrics in rows:
        lines.append(f"| {label} | " + " | ".join(
            f"{metrics[k]:.2f}" if k in metrics else "-" for k, _ in present) + " |")
    return "\n".join(lines)


def threshold_line(metrics: dict, fixed: float) -> str:
    """Which box threshold each policy used (none without GT boxes: a masks-only split)."""
    if "best_cam_threshold" not in metrics:
        return "box thresholds: none (no GT boxes; the localization metric is PxAP)"
    parts = [f"fixed={fixed:g}"]
    if "val_cam_threshold" in metrics:
        parts.append(f"val-chosen={metrics['val_cam_threshold']:.3f}")
    parts.append(f"oracle={metrics['best_cam_threshold']:.3f} (each split's own best, as MaxBoxAcc)")
    return "box thresholds: " + ", ".join(parts)


def mean_std(values: list[float], digits: int = 1) -> str:
    """"m ± s" (sample standard deviation) of several values, the value itself for one, `digits` decimals."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def seed_group(run_name: str) -> str:
    """A run's name without its trailing `-s<seed>`: the runs of one setting over seeds share it."""
    return re.sub(r"-s\d+$", "", run_name)
