"""Per-image evaluator records and the paired bootstrap of metric differences (acol.evaluation.bootstrap)."""
import numpy as np
import pytest
import torch

from acol.evaluation import BoxEvaluator, MaskEvaluator
from acol.evaluation.bootstrap import PER_IMAGE, aligned, paired_difference, resampled_metrics, run_records
from tests.test_evaluation import _dataset


def _data(count=12):
    """test_evaluation's maps, boxes and hits; foreground masks with 10% of the pixels flipped."""
    maps, boxes, top1, top5, fg, ignore = _dataset(0, count)
    return maps, boxes, top1, top5, fg ^ (np.random.default_rng(5).random(fg.shape) < 0.1), ignore


def _evaluated(count=12, per_image=True):
    maps, boxes, top1, top5, fg, ignore = _data(count)
    box = BoxEvaluator(0.01, (30, 50, 70), per_image=per_image)
    mask = MaskEvaluator(0.01, per_image=per_image)
    for part in (slice(0, 5), slice(5, None)):  # two batches
        box.accumulate(maps[part], boxes[part], top1[part], top5[part])
        mask.accumulate(maps[part], fg[part], ignore[part])
    return box, mask


def test_per_image_records_sum_to_the_counts_and_leave_them_unchanged():
    box, mask = _evaluated()
    plain_box, plain_mask = _evaluated(per_image=False)
    for ours, plain in ((box, plain_box), (mask, plain_mask)):
        for name, counts in plain.state.items():
            assert torch.equal(ours.state[name], counts), name
    r = {**box.per_image_records(), **mask.per_image_records()}
    assert r["gt_known"].shape == (12, 100) and r["box_v2"].shape == (12, 3, 100)
    np.testing.assert_array_equal(r["gt_known"].sum(0), box.state["gt_known"].numpy())
    np.testing.assert_array_equal((r["gt_known"] & r["top1"][:, None]).sum(0), box.state["top1_loc"].numpy())
    np.testing.assert_array_equal(r["box_v2"].sum(0), box.state["box_v2"].numpy())
    assert r["top5"].sum() == int(box.state["top5_cls"]) and r["boxed"].sum() == int(box.state["num_boxed"])
    np.testing.assert_array_equal(r["fg_hist"].sum(0), mask.state["fg_hist"].numpy())
    np.testing.assert_array_equal(r["bg_hist"].sum(0), mask.state["bg_hist"].numpy())
    assert BoxEvaluator().records is None and MaskEvaluator().records is None  # opt-in
    with pytest.raises(ValueError, match="keeps no per-image records"):
        plain_box.per_image_records()


def test_unit_weights_give_the_evaluators_metrics_exactly():
    box, mask = _evaluated()
    val_tau = 0.37
    expected = {**box.compute(threshold=val_tau), **mask.compute()}
    records = run_records(box, mask, val_tau)
    got = resampled_metrics(records, np.ones((1, 12)))
    assert set(got) == {"top1_cls", "gt_known_loc@fixed", "top1_loc@fixed", "gt_known_loc@val", "top1_loc@val",
                        "maxboxacc", "maxboxacc_v2", "pxap"}
    for key, values in got.items():
        assert values[0] == expected[key], key  # exactly
    assert 0 < expected["maxboxacc"] < 100 and 0 < expected["pxap"] < 100

    # integer weights = an evaluator fed each image that many times
    counts = np.array([0, 2, 1, 3, 0, 1, 1, 0, 2, 1, 0, 1])
    maps, boxes, top1, top5, fg, ignore = _data()
    again = np.repeat(np.arange(12), counts)
    box2, mask2 = BoxEvaluator(0.01), MaskEvaluator(0.01)
    box2.accumulate(maps[again], [boxes[i] for i in again], top1[again], top5[again])
    mask2.accumulate(maps[again], fg[again], ignore[again])
    expected = {**box2.compute(threshold=val_tau), **mask2.compute()}
    for key, values in resampled_metrics(records, counts[None]).items():
        assert values[0] == pytest.approx(expected[key], abs=1e-9), key


def _hits(rng, n, p, thresholds=10):
    """Hand-built box records: n images, each a hit at every threshold with probability p."""
    hit = rng.random(n) < p
    curve = np.repeat(hit[:, None], thresholds, 1)
    return {"top1": hit.copy(), "top5": hit.copy(), "boxed": np.ones(n, bool), "gt_known": curve,
            "box_v2": np.repeat(curve[:, None], 3, 1), "thresholds": np.arange(thresholds) / thresholds,
            "fixed_threshold": 0.2}


def test_identical_groups_give_zero():
    rng = np.random.default_rng(0)
    runs = [_hits(rng, 50, 0.6) for _ in range(3)]
    same = paired_difference(runs, runs, replicates=200, paired_runs=True)
    for d in same.values():
        assert (d.difference, d.low, d.high) == (0.0, 0.0, 0.0)
    shuffled = paired_difference(runs, runs[::-1], replicates=200)  # the same runs, resampled independently
    for d in shuffled.values():
        assert d.difference == 0.0 and d.low < 0 < d.high


def test_a_fixed_offset_gives_that_offset():
    rng = np.random.default_rng(1)
    n = 40
    b = [_hits(rng, n, 0.5) for _ in range(2)]
    a = [{**run, "top1": np.ones(n, bool), "gt_known": np.ones_like(run["gt_known"]),
          "box_v2": np.ones_like(run["box_v2"])} for run in b]  # every image a hit
    # A scores 100 on every resample; B's resampled value varies: the interval is 100 - B's interval
    d = paired_difference(a, b, replicates=300)["top1_cls"]
    assert 0 < d.low < d.difference < d.high < 100
    # a constant offset per replicate: A all hits, B all misses -> exactly [100, 100]
    misses = [{**run, "top1": np.zeros(n, bool), "gt_known": np.zeros_like(run["gt_known"]),
               "box_v2": np.zeros_like(run["box_v2"])} for run in b]
    for d in paired_difference(a, misses, replicates=300).values():
        assert (d.difference, d.low, d.high) == (100.0, 100.0, 100.0)


def test_coverage_sanity_and_determinism():
    rng = np.random.default_rng(2)
    a = [_hits(rng, 400, 0.5) for _ in range(3)]
    b = [_hits(rng, 400, 0.5) for _ in range(3)]
    same = paired_difference(a, b, replicates=1000)
    assert all(d.low < 0 < d.high for d in same.values())
    better = [_hits(rng, 400, 0.7) for _ in range(3)]
    far = paired_difference(better, b, replicates=1000)
    assert all(10 < d.low < d.difference < d.high < 30 for d in far.values())
    assert paired_difference(better, b, replicates=1000) == far  # seed 0 by default: deterministic
    assert paired_difference(better, b, replicates=1000, seed=1) != far
    narrow = paired_difference(better, b, replicates=1000, confidence=0.5)["maxboxacc"]
    assert far["maxboxacc"].low < narrow.low < narrow.high < far["maxboxacc"].high


def test_bad_inputs():
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match=r"different numbers of images: \[10, 20\]"):
        paired_difference([_hits(rng, 10, 0.5)], [_hits(rng, 20, 0.5)])
    with pytest.raises(ValueError, match="paired runs need groups of one size"):
        paired_difference([_hits(rng, 10, 0.5)], [_hits(rng, 10, 0.5)] * 2, paired_runs=True)


def test_aligned_puts_runs_of_the_same_images_in_one_order_and_refuses_others():
    box, mask = _evaluated()
    ids = [f"img{i:02d}" for i in range(12)]
    records = run_records(box, mask, image_ids=ids)
    order = np.random.default_rng(0).permutation(12)  # the same images validated in another order
    shuffled = {k: v[order] if k in PER_IMAGE or k == "image_ids" else v for k, v in records.items()}
    first, second = aligned([records, shuffled])
    for key in [*PER_IMAGE, "image_ids"]:
        assert np.array_equal(first[key], records[key]) and np.array_equal(second[key], records[key]), key
    # identical maps, whatever the order they were recorded in: a difference of exactly 0
    assert all(d.difference == 0 and d.low == d.high == 0
               for d in paired_difference([first], [second], paired_runs=True).values())
    other = run_records(box, mask, image_ids=[*ids[:11], "img99"])
    assert aligned([records, other]) is None and aligned([records, run_records(box, mask)]) is None
