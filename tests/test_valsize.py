"""The val-size study on hand-built per-image records: which trial a subset of k images per class
chooses, and what the study reports."""
from pathlib import Path

import numpy as np

from acol.datasets.metadata import Metadata, per_class_subset
from acol.valsize import picks, study, subset_weights, table

IDS = ["a0", "a1", "a2", "b0", "b1", "b2"]  # class 0: a*, class 1: b*
META = Metadata(Path("val"), IDS, {i: int(i[0] == "b") for i in IDS}, {i: (8, 8) for i in IDS})


def records(hit: set[str]) -> dict:
    """Box records with one threshold: an image is a hit (at every IoU) if it is in `hit`."""
    hits = np.array([[i in hit] for i in IDS])
    return {"top1": np.ones(len(IDS), bool), "boxed": np.ones(len(IDS), bool), "gt_known": hits,
            "box_v2": np.repeat(hits[:, None, :], 3, axis=1), "thresholds": np.array([0.5]), "fixed_threshold": 0.5}


# trial 0 finds class 0's objects (3 of 6), trial 1 a0 and class 1's (4 of 6): the whole split chooses
# trial 1; one image per class chooses trial 1 only when it draws a0 (else a tie at 50%, and the first wins)
TRIALS = [[records({"a0", "a1", "a2"})], [records({"a0", "b0", "b1", "b2"})]]


def test_subset_weights_mark_the_per_class_draws():
    weights = subset_weights(META, 2, 5)
    assert weights.shape == (5, 6) and set(weights.sum(1)) == {4.0}
    for d in range(5):
        assert [IDS[i] for i in np.flatnonzero(weights[d])] == sorted(per_class_subset(META, 2, d).image_ids)


def test_a_subset_chooses_the_trial_best_on_it_and_the_first_of_equals():
    weights = subset_weights(META, 1, 12)
    drew_a0 = np.array(["a0" in per_class_subset(META, 1, d).image_ids for d in range(12)])
    assert 0 < drew_a0.sum() < 12  # both cases occur
    assert picks(TRIALS, weights, "maxboxacc_v2").tolist() == drew_a0.astype(int).tolist()
    assert picks(TRIALS, np.ones((1, 6)), "maxboxacc_v2").tolist() == [1]
    # two search seeds: the mean over them chooses (trial 1's second seed finds nothing: 2/6 < 3/6)
    assert picks([TRIALS[0], [TRIALS[1][0], records(set())]], np.ones((1, 6)), "maxboxacc_v2").tolist() == [0]


def test_the_study_reports_the_chosen_trials_test_metric_and_the_agreement():
    rows = study(TRIALS, [70.0, 80.0], META, [1, 3], 12, "maxboxacc_v2")
    drew_a0 = [("a0" in per_class_subset(META, 1, d).image_ids) for d in range(12)]
    assert [(r.k, r.images) for r in rows] == [(1, 2), (3, 6), (0, 6)]
    assert rows[0].tests == [80.0 if a0 else 70.0 for a0 in drew_a0]
    assert rows[0].agree == sum(drew_a0) / 12
    assert rows[1].tests == [80.0] * 12 and rows[1].agree == 1.0  # 3 per class: the whole split every time
    assert rows[2].tests == [80.0] and rows[2].agree == 1.0
    text = table({"CAM": rows, "FSL": "trains on val"}, {"CAM": [70.0, 80.0]}, "maxboxacc_v2", 12)
    assert "| all (6 images) | 80.0 (100%) | trains on val |" in text
    assert "| 3 (6 images, 12 draws) | 80.0 ± 0.0 (100%) | trains on val |" in text
    assert "| the trials' test range | 70.0 – 80.0 | – |" in text
