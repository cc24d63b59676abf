"""Pointing game and deletion / insertion on hand-built maps and models with known answers."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from acol import compare, evaluate, train
from acol.evaluation.faithfulness import (DeletionInsertion, PointingGame, baseline_images, gaussian_blur,
                                          perturbation_curves, pixel_ranks, pointing_hit, rise_kernel,
                                          trapezoid_auc)
from acol.visualize import CURVE_COLORS, small_multiples, tile


def test_a_map_equal_to_the_gt_mask_always_points_inside():
    mask = np.zeros((3, 40, 40), bool)
    mask[0, 30:35, 5:9] = mask[1, 0:2, 38:40] = mask[2, 20, 20] = True
    game = PointingGame(tolerance=0)
    game.accumulate(mask.astype(np.float32), gt_masks=mask)
    assert game.compute() == {"pointing_game": 100.0}


@pytest.mark.parametrize("peak, hit", [((15, 35), True), ((15, 36), False), ((30, 30), True), ((31, 31), False),
                                       ((10, 10), True)])
def test_the_tolerance_is_euclidean_to_the_nearest_gt_pixel(peak, hit):
    """Box x, y in 10..20: (15, 35) is 15 px right of it, (30, 30) 10 px right and down of the corner
    (200 <= 15^2), (31, 31) 11 and 11 (242 > 15^2)."""
    scoremap = np.zeros((1, 64, 64), np.float32)
    box = np.array([[10, 10, 20, 20]])  # x0 y0 x1 y1, corners inclusive
    scoremap[0, peak[0], peak[1]] = 1
    game = PointingGame(tolerance=15)
    game.accumulate(scoremap, [box])
    assert game.compute()["pointing_game"] == (100.0 if hit else 0.0)


def test_pointing_ties_take_the_first_maximum_in_raster_order():
    scoremap = np.zeros((32, 32), np.float32)
    region = np.zeros((32, 32), bool)
    region[31, 31] = True
    scoremap[31, 31] = scoremap[0, 0] = 1.0
    assert not pointing_hit(scoremap, region, tolerance=15)  # (0, 0) comes first
    scoremap[0, 0] = 0.999
    assert pointing_hit(scoremap, region, tolerance=0)


def test_pointing_counts_merge_and_skip_images_without_gt():
    maps = np.zeros((4, 32, 32), np.float32)
    maps[:, 5, 5] = 1
    boxes = [np.array([[0, 0, 6, 6]]), np.array([[20, 20, 31, 31]]), np.zeros((0, 4)), np.array([[4, 4, 5, 5]])]
    whole = PointingGame(0)
    whole.accumulate(maps, boxes)
    first, second = PointingGame(0), PointingGame(0)
    first.accumulate(maps[:2], boxes[:2])
    second.accumulate(maps[2:], boxes[2:])
    first.merge(second)
    assert {k: int(v) for k, v in first.state.items()} == {k: int(v) for k, v in whole.state.items()} \
        == {"hits": 2, "num_pointed": 3}
    assert first.compute()["pointing_game"] == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="different configurations"):
        first.merge(PointingGame(15))


def test_trapezoid_auc():
    assert trapezoid_auc([0, 1]) == 0.5
    assert trapezoid_auc([1, 1, 1, 1]) == 1.0
    assert trapezoid_auc([0, 1, 0]) == 0.5
    assert trapezoid_auc([4, 2, 0, 2, 4]) == 2.0  # (3 + 1 + 1 + 3) / 4


class RegionScore(nn.Module):
    """logits = (sum of channel 0 over `region`, 0): P(class 0) = sigmoid(that sum)."""

    def __init__(self, region: torch.Tensor):
        super().__init__()
        self.register_buffer("region", region.float())
        self.seen_labels = []

    def forward(self, x, labels=None):
        self.seen_labels.append(labels)
        score = (x[:, 0] * self.region).sum(dim=(1, 2))
        return {"logits": torch.stack([score, torch.zeros_like(score)], 1)}


def region_case():
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[2:, 2:] = True                      # the last 2 x 2: late in raster order
    image = region.float().expand(1, 3, 4, 4).clone()  # 1 on the region, 0 elsewhere: the per-channel mean is 1/4
    return RegionScore(region), image, region


def test_deletion_and_insertion_by_hand_with_the_map_the_model_uses():
    model, image, region = region_case()
    curves = perturbation_curves(model, image, region.float()[None], torch.tensor([0]), torch.tensor([0]),
                                 steps=4, baseline="mean", chunk=3)
    s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    # 4 pixels a step: the first step deletes / inserts the whole region (sum 4, or 4 x 1/4 = 1 at the mean)
    assert curves["deletion"][0].tolist() == pytest.approx([s(4), s(1), s(1), s(1), s(1)])
    assert curves["insertion"][0].tolist() == pytest.approx([s(1), s(4), s(4), s(4), s(4)])
    assert all(labels.tolist() == [0] * len(labels) for labels in model.seen_labels)  # the forward got the labels
    evaluator = DeletionInsertion(steps=4, baseline="mean")
    evaluator.accumulate(curves)
    metrics = evaluator.compute()
    assert metrics["deletion_auc"] == pytest.approx(100 * (s(4) / 2 + 3 * s(1) + s(1) / 2) / 4)
    assert metrics["insertion_auc"] == pytest.approx(100 * (s(1) / 2 + 3 * s(4) + s(4) / 2) / 4)


def test_a_constant_map_removes_pixels_in_raster_order():
    """'Chance' under the tie rule: a flat map is the raster order, here the worst order for deletion."""
    model, image, region = region_case()
    flat = perturbation_curves(model, image, torch.zeros(1, 4, 4), torch.tensor([0]), None, steps=4, baseline="mean")
    raster = perturbation_curves(model, image, -torch.arange(16.0).view(1, 4, 4), torch.tensor([0]), None, steps=4,
                                 baseline="mean")
    for mode in ("deletion", "insertion"):
        assert torch.equal(flat[mode], raster[mode])
    s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    # rows 0, 1 hold no region pixel; row 2 holds 2 of them, row 3 the other 2 (each deleted -> 1/4)
    assert flat["deletion"][0].tolist() == pytest.approx([s(4), s(4), s(4), s(2.5), s(1)])
    assert pixel_ranks(torch.zeros(1, 2, 2)).tolist() == [[[0, 1], [2, 3]]]
    assert pixel_ranks(torch.tensor([[[0.0, 1.0], [1.0, 0.5]]])).tolist() == [[[3, 0], [1, 2]]]


class Pooled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x, labels=None):
        return {"logits": self.conv(x).mean(dim=(2, 3))}


def test_the_evaluator_sums_merge_to_one_pass_and_the_batch_is_exact():
    torch.manual_seed(0)
    wrapped = Pooled()
    images, maps, classes = torch.randn(3, 3, 12, 12), torch.rand(3, 12, 12), torch.tensor([0, 3, 1])
    both = perturbation_curves(wrapped, images, maps, classes, None, steps=6, chunk=5)
    one = perturbation_curves(wrapped, images[1:2], maps[1:2], classes[1:2], None, steps=6, chunk=100)
    torch.testing.assert_close(both["deletion"][1:2], one["deletion"])
    assert both["deletion"][:, -1].tolist() == pytest.approx(both["insertion"][:, 0].tolist())  # all baseline
    assert both["deletion"][:, 0].tolist() == pytest.approx(both["insertion"][:, -1].tolist())  # the image
    whole, a, b = DeletionInsertion(6), DeletionInsertion(6), DeletionInsertion(6)
    whole.accumulate(both)
    a.accumulate({k: v[:1] for k, v in both.items()})
    b.accumulate({k: v[1:] for k, v in both.items()})
    a.merge(b)
    assert a.compute() == pytest.approx(whole.compute())
    assert whole.mean_curves()["deletion"] == pytest.approx(100 * both["deletion"].mean(0).numpy())


def test_rise_kernel_is_a_reflected_gaussian_of_a_delta():
    """scipy's gaussian_filter of an 11x11 delta, sigma 5: Gaussian weights at -20..20 (truncate 4),
    the delta at 5 reflected (d c b a | a b c d | d c b a) to copies at 5 + 22 k and -6 + 22 k."""
    z = sum(math.exp(-d * d / 50) for d in range(-20, 21))
    w = lambda d: math.exp(-d * d / 50) / z if abs(d) <= 20 else 0.0  # noqa: E731
    profile = [sum(w(d) for d in (i - 5, i + 6, 16 - i, i + 17, 27 - i)) for i in range(11)]
    assert profile[5] == pytest.approx(w(0) + 2 * w(11), abs=1e-15)  # the copies at -6 and 16
    assert profile[0] == pytest.approx(w(5) + w(6) + w(16) + w(17), abs=1e-15)
    kernel = rise_kernel()
    assert kernel.shape == (11, 11) and kernel.dtype == torch.float64
    expected = torch.tensor(profile, dtype=torch.float64)
    torch.testing.assert_close(kernel, torch.outer(expected, expected), rtol=0, atol=1e-15)
    assert kernel[5, 5].item() == pytest.approx(0.0088326282, abs=1e-10)  # a sampled 11x11 Gaussian: 0.01196
    assert kernel[0, 0].item() == pytest.approx(0.0077366354, abs=1e-10)
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-14)  # reflection keeps the mass
    assert torch.equal(kernel, kernel.T)
    torch.testing.assert_close(kernel, kernel.flip(0), rtol=0, atol=1e-17)  # up to the order of the sums
    small = rise_kernel(3, 1.0)  # r = 4: the delta at 1 and its copies at -2 and 4 reach 0..2
    g = [math.exp(-d * d / 2) for d in range(5)]
    g = [x / (g[0] + 2 * sum(g[1:])) for x in g]
    edge, centre = g[1] + g[2] + g[4], g[0] + 2 * g[3]
    torch.testing.assert_close(small[0], torch.tensor([edge * edge, edge * centre, edge * edge], dtype=torch.float64),
                               rtol=0, atol=1e-15)


def test_rise_kernel_equals_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    for size, sigma in ((11, 5.0), (5, 1.5), (7, 0.8)):
        delta = np.zeros((size, size))
        delta[size // 2, size // 2] = 1
        np.testing.assert_allclose(rise_kernel(size, sigma).numpy(), ndimage.gaussian_filter(delta, sigma),
                                   rtol=0, atol=1e-15)


def test_gaussian_blur_baseline():
    delta = torch.zeros(1, 3, 21, 21)
    delta[0, :, 10, 10] = 1
    kernel = gaussian_blur(delta)[0, 0]
    assert kernel[4].abs().sum() == 0 and kernel[:, 4].abs().sum() == 0  # 11 x 11 support
    assert torch.equal(kernel[5:16, 5:16], rise_kernel().float())
    flat = torch.full((1, 3, 30, 30), 2.0)
    torch.testing.assert_close(gaussian_blur(flat)[..., 5:25, 5:25], flat[..., 5:25, 5:25])  # away from the zero padding
    with pytest.raises(ValueError, match="baseline must be one of blur, mean; got 'black'"):
        baseline_images(flat, "black")


CONFIG = str(Path(__file__).resolve().parents[1] / "experiments" / "synthetic_acol.toml")


def test_evaluate_and_compare_with_the_checks_on(tiny_overrides, tmp_path, capsys):
    """`--faithfulness --sanity` on a tiny ACoL run: the numbers in the JSON, table, PNGs and TensorBoard,
    the same through acol.evaluate and acol.compare; without the flags nothing of them appears."""
    train.main(["--config", CONFIG, "--name", "run-s0", *tiny_overrides, "train.global_batch_size=6"])
    run = tmp_path / "runs" / "run-s0"
    flags = ["--faithfulness", "--sanity", "--sanity-images", "3", "--perturbation-steps", "4"]
    metrics = evaluate.main(["--run", str(run), "--localizer", "gradcam", "--out", str(tmp_path / "ev"), *flags])
    assert 0 <= metrics["pointing_game"] <= 100 and 0 <= metrics["deletion_auc"] <= 100
    assert 0 <= metrics["insertion_auc"] <= 100
    groups = metrics["randomization"]["groups"]
    assert groups[0] == "head_b.4+head_b.2+head_b.0+head_a.4"  # branch B does not feed the logits Grad-CAM explains
    assert len(metrics["randomization"]["spearman"]) == len(groups)
    assert metrics["randomization_spearman"] == pytest.approx(np.mean(metrics["randomization"]["spearman"]))
    assert json.loads((tmp_path / "ev" / "eval_test.json").read_text()) == metrics
    out = capsys.readouterr().out
    assert "| pointing game | deletion AUC (lower better) | insertion AUC (higher better) |" in out
    for png in ("curves_test", "deletion_insertion_test", "randomization_test", "randomization_maps_test"):
        assert cv2.imread(str(tmp_path / "ev" / f"{png}.png")) is not None, png
    (event_file,) = (tmp_path / "ev").glob("events.out.tfevents.*")
    tb = EventAccumulator(str(event_file), size_guidance={"images": 0, "scalars": 0})
    tb.Reload()
    assert {"z_eval/test/deletion_insertion", "z_eval/test/randomization",
            "z_eval/test/randomization_maps"} <= set(tb.Tags()["images"])
    deletion = tb.Scalars("z_eval/test/removed_x1000/deletion")
    assert [e.step for e in deletion] == [0, 250, 500, 750, 1000]
    assert trapezoid_auc([e.value for e in deletion]) == pytest.approx(metrics["deletion_auc"], abs=1e-3)
    spearman = tb.Scalars("z_eval/test/randomization/spearman")
    assert [e.step for e in spearman] == list(range(len(groups) + 1)) and spearman[0].value == 1.0

    plain = evaluate.main(["--run", str(run), "--localizer", "gradcam", "--out", str(tmp_path / "plain")])
    assert not any(k.startswith(("pointing", "deletion", "insertion", "randomization")) for k in plain)
    assert {k: v for k, v in metrics.items() if k in plain} == pytest.approx(plain)
    assert not list((tmp_path / "plain").glob("deletion_insertion_*.png"))

    records = compare.main([str(run), "--methods", "inforward,gradcam", "--out", str(tmp_path / "cmp"),
                            "--num-images", "2", *flags])
    (gradcam,) = [r for r in records if r["method"] == "gradcam"]
    for key in ("pointing_game", "deletion_auc", "insertion_auc", "randomization_spearman", "randomization_ssim"):
        assert gradcam["test"][key] == pytest.approx(metrics[key]), key
    with open(tmp_path / "cmp" / "results.csv") as f:
        row = {r["method"]: r for r in csv.DictReader(f)}["gradcam"]
    assert float(row["insertion AUC ↑ mean"]) == pytest.approx(metrics["insertion_auc"], abs=1e-4)
    assert "| pointing game | deletion AUC ↓ | insertion AUC ↑ | randomized Spearman | randomized SSIM |" \
        in (tmp_path / "cmp" / "results.md").read_text()
    # small multiples: a legend row, one row of 4 panels (inforward, gradcam, 2 empty), the x axis line
    assert cv2.imread(str(tmp_path / "cmp" / "randomization.png")).shape == (30 + 178 + 24, 940, 3)
    (event_file,) = (tmp_path / "cmp").glob("events.out.tfevents.*")
    tb = EventAccumulator(str(event_file), size_guidance={"images": 0})
    tb.Reload()
    assert "z_compare/randomization" in tb.Tags()["images"]


def test_bad_check_options_get_one_line(tmp_path):
    with pytest.raises(SystemExit, match="--faithfulness / --sanity: need --run"):
        evaluate.main(["--scoremaps", str(tmp_path), "--dataset", "X", "--faithfulness"])
    with pytest.raises(SystemExit, match="argument --perturbation-steps: must be >= 1, got 0"):
        compare.main([str(tmp_path), "--perturbation-steps", "0"])
    with pytest.raises(SystemExit, match="argument --pointing-tolerance: must be >= 0, got -1"):
        evaluate.main(["--run", str(tmp_path), "--faithfulness", "--pointing-tolerance", "-1"])


def test_small_multiples_draws_each_line_in_its_panel_colour_and_style():
    flat = np.zeros(11)  # y = 0: the row between the top (1) and bottom (-1) of a 170-px panel
    image = small_multiples({"one": {("a", "solid"): flat, ("b", "dashed"): flat + 0.5},
                             "two": {("b", "solid"): flat}}, (-1, 1), "x", columns=2)
    assert image.shape == (30 + 178 + 24, 2 * 234 + 4, 3)
    panels = [image[30 + 4:30 + 4 + 170, 4 + i * 234:4 + i * 234 + 230] for i in range(2)]
    zero, half = 22 + (170 - 22 - 22) // 2, 22 + (170 - 22 - 22) // 4  # y of 0 and of 0.5 (top 22, bottom 22 px)
    a, b = np.array(CURVE_COLORS[0]), np.array(CURVE_COLORS[1])
    solid_a = (np.abs(panels[0][zero, 40:220].astype(int) - a).sum(1) == 0).mean()
    dashed_b = (np.abs(panels[0][half, 40:220].astype(int) - b).sum(1) == 0).mean()
    assert solid_a > 0.95 and 0.3 < dashed_b < 0.7                  # "b" on the second style: dashed
    assert not (np.abs(panels[1].astype(int) - a).sum(2) == 0).any()  # "a" is not in panel "two"
    assert (np.abs(panels[1][zero, 40:220].astype(int) - b).sum(1) == 0).mean() > 0.95


def test_tile_resizes_a_tile_of_another_size_to_the_first():
    small, big = np.full((4, 4, 3), 10, np.uint8), np.zeros((8, 8, 3), np.uint8)
    big[:4, :4] = 200                                   # its top-left quarter: one pixel of 4 at half size
    grid = tile([[small, big]], pad=1)
    assert grid.shape == (1 + 4 + 1, 1 + 2 * (4 + 1), 3)
    assert (grid[1:5, 1:5] == 10).all()
    assert (grid[1:3, 6:8] == 200).all() and (grid[3:5, 8:10] == 0).all()
