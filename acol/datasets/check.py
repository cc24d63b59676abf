"""`--check-data`: every problem of the configured data set at once, each image and mask decoded."""
from __future__ import annotations

from collections.abc import Callable

from acol.datasets.prepare import check_dataset
from acol.datasets.synthetic import DATASET_NAME, is_current


def check_data(cfg, summary: Callable[[str], None] | None = print, verbose: bool = False) -> list[str]:
    """Check train, val and test of cfg.data.dataset (under cfg.data.root and cfg.data.metadata_root) as
    `prepare.check_dataset` does, with every image and mask decoded in full and every label below
    cfg.model.num_classes (when set); a missing split is a problem. Hands the printable report (counts
    per split, notes, warnings, the problems: by kind when there are many, every one when verbose) to
    `summary` (None: nothing) and returns the problems, each naming its file and line (empty: none)."""
    report = check_dataset(cfg.data.dataset, cfg.data.root, cfg.data.metadata_root, decode=True,
                           num_classes=cfg.model.num_classes, required=True)
    if cfg.data.dataset == DATASET_NAME and not is_current(cfg.data.synthetic, cfg.data.root, cfg.data.metadata_root):
        report.notes.append(f"{report.image_root} was not made from this config's data.synthetic, or was changed "
                            f"since: training generates it again")
    if summary is not None:
        summary(report.format(verbose))
    return report.problems
