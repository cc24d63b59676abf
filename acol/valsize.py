"""The val-size study: how well k fully annotated val images per class choose among a search's trials.

A trial's training does not read the val split (val only chooses the trial and the box threshold),
so the study needs no new runs: a trial's per-image records on the whole val split
(`acol.evaluation.bootstrap`) give its val metric on any subset of that split. For each k, `draws`
subsets of k images per class are drawn with `per_class_subset` and seeds 0 .. draws-1 (draw d is the
val split of a run with train.seed=d and data.val_per_class=k). Each subset chooses the trial with the
best val metric (the mean over the search seeds; the first of equal trials, as `acol.ablate.choose`),
and the study reports that trial's test metric: its mean ± std over the draws, and how often the
subset chose what the whole val split chooses.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from acol.datasets.metadata import Metadata, per_class_subset
from acol.evaluation.bootstrap import resampled_metrics


def subset_weights(meta: Metadata, k: int, draws: int, image_ids: list[str] | None = None) -> np.ndarray:
    """(draws, n) 0/1 weights over `image_ids` (the records' order; default meta.image_ids): row d marks
    `per_class_subset(meta, k, d)`."""
    image_ids = meta.image_ids if image_ids is None else image_ids
    index = {image_id: i for i, image_id in enumerate(image_ids)}
    weights = np.zeros((draws, len(image_ids)))
    for d in range(draws):
        weights[d, [index[i] for i in per_class_subset(meta, k, d).image_ids]] = 1.0
    return weights


def picks(records: list[list[dict]], weights: np.ndarray, select: str) -> np.ndarray:
    """(D,) the index of the chosen trial under each weight row. records[t]: trial t's val records, one
    per search seed (averaged); weights: (D, n) over the val images the records are of."""
    values = np.stack([np.mean([resampled_metrics(r, weights)[select] for r in seeds], 0) for seeds in records], 1)
    return values.argmax(1)  # (D, trials) -> the first best trial of each row


@dataclass
class Row:
    """One k of one group: the chosen trials' test metric over the draws, and the agreement with the
    whole val split's choice."""
    k: int
    images: int  # val images per draw
    tests: list[float]
    agree: float  # fraction of draws that chose the whole split's trial

    def text(self) -> str:
        spread = f" ± {statistics.stdev(self.tests):.1f}" if len(self.tests) > 1 else ""
        return f"{statistics.mean(self.tests):.1f}{spread} ({self.agree:.0%})"


def study(records: list[list[dict]], tests: list[float], meta: Metadata, ks: list[int], draws: int,
          select: str, image_ids: list[str] | None = None) -> list[Row]:
    """One group's rows: each k in `ks` (`draws` subsets each), then k = 0, the whole val split (one
    draw). tests[t]: trial t's test metric; image_ids: the records' image order (default meta's)."""
    whole = picks(records, np.ones((1, len(meta.image_ids))), select)[0]
    rows = []
    for k in ks:
        weights = subset_weights(meta, k, draws, image_ids)
        chosen = picks(records, weights, select)
        rows.append(Row(k, int(weights[0].sum()), [tests[t] for t in chosen], float(np.mean(chosen == whole))))
    rows.append(Row(0, len(meta.image_ids), [tests[whole]], 1.0))
    return rows


def table(groups: dict[str, list[Row] | str], tests: dict[str, list[float]], select: str, draws: int) -> str:
    """Markdown: a row per k, a column per group (its `study` rows, or a note why it has none), then the
    range of the trials' test metric."""
    names = list(groups)
    studied = next(rows for rows in groups.values() if not isinstance(rows, str))
    lines = [f"| val images per class | {' | '.join(names)} |", "|---|" + "---:|" * len(names)]
    for i, row in enumerate(studied):
        label = f"all ({row.images} images)" if row.k == 0 else f"{row.k} ({row.images} images, {draws} draws)"
        cells = [rows if isinstance(rows, str) else rows[i].text() for rows in groups.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    spans = [f"{min(tests[n]):.1f} – {max(tests[n]):.1f}" if n in tests else "–" for n in names]
    lines.append("| the trials' test range | " + " | ".join(spans) + " |")
    return (f"test {select} of the trial chosen on k val images per class (of its runs on the search seeds): "
            f"mean ± std over the draws, and the share of draws that chose the whole val split's trial\n\n"
            + "\n".join(lines))
