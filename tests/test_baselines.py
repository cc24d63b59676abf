"""The class-agnostic baseline maps (`acol.evaluation.baselines`): exact values, invariants, their
evaluation through `acol-evaluate --baseline` against the evaluator called directly, and the metric they
can game (MaxBoxAccV2's best box over every contour)."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from acol import evaluate
from acol.config import load_config
from acol.datasets.dataset import build_dataset, collate
from acol.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_on_device
from acol.evaluation import BoxEvaluator, MaskEvaluator, localization_only
from acol.evaluation.baselines import baseline_maps, brightness, centre, centre_prior
from acol.evaluation.bootstrap import resampled_metrics
from acol.registry import UnknownNameError

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "synthetic_base.toml"


def test_centre_prior_exact_values_on_odd_even_and_non_square_sizes():
    edge = 1 - 1 / np.sqrt(2)  # 3x3: distances 0 (centre), 2/3 (edges), 2/3·√2 (corners)
    assert centre_prior(3, 3) == pytest.approx(np.array([[0, edge, 0], [edge, 1, edge], [0, edge, 0]]), abs=1e-7)
    # 4x4: no central pixel; the four inner ones are the nearest (1), the corners the farthest (0), and the
    # others at (√18 - √10) / (√18 - √2) = 1.5 - √5 / 2 of the way
    side = 1.5 - np.sqrt(5) / 2
    assert centre_prior(4, 4) == pytest.approx(np.array([[0, side, side, 0], [side, 1, 1, side],
                                                         [side, 1, 1, side], [0, side, side, 0]]), abs=1e-6)
    # 2x4: the inner columns are the nearest, the outer ones the farthest: the ellipse follows the aspect
    assert centre_prior(2, 4).tolist() == [[0, 1, 1, 0], [0, 1, 1, 0]]
    # 3x5: x offsets ±0.4, ±0.8 of the half width, y offsets ±2/3 of the half height; d_max = √(0.64 + 4/9)
    d_max = np.sqrt(0.64 + 4 / 9)
    expected = 1 - np.array([[np.hypot(x, y) for x in (-0.8, -0.4, 0, 0.4, 0.8)] for y in (-2 / 3, 0, 2 / 3)]) / d_max
    assert centre_prior(3, 5) == pytest.approx(expected, abs=1e-6)
    assert centre_prior(3, 5)[1].tolist() == pytest.approx([0.231779, 0.615889, 1, 0.615889, 0.231779], abs=1e-6)
    assert centre_prior(3, 5)[0, 2] == pytest.approx(0.359816, abs=1e-6)


def test_brightness_is_the_luma_of_the_pixels_the_model_sees():
    pixels = [[(255, 0, 0), (0, 255, 0)], [(0, 0, 255), (10, 20, 30)]]  # (R, G, B) of a 2x2 image
    images = torch.tensor(pixels, dtype=torch.uint8).permute(2, 0, 1)[None]
    luma = np.array([[76.245, 149.685], [29.07, 18.15]])  # 0.299 R + 0.587 G + 0.114 B by hand
    expected = (luma - 18.15) / (149.685 - 18.15)
    assert brightness(images)[0] == pytest.approx(expected, abs=1e-6)
    # the model's input undone (x · std + mean) gives back the same pixels, hence the same map
    shown = normalize_on_device(images, torch.device("cpu"))
    undone = shown * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    assert (undone * 255).round().to(torch.uint8).equal(images)
    # cv2's RGB2GRAY on the float image has the same weights
    grey = cv2.cvtColor(images[0].permute(1, 2, 0).numpy().astype(np.float32), cv2.COLOR_RGB2GRAY)
    assert brightness(images)[0] == pytest.approx((grey - grey.min()) / (grey.max() - grey.min()), abs=1e-6)


@pytest.mark.parametrize("name", ["centre", "brightness"])
@pytest.mark.parametrize("height, width", [(5, 5), (6, 9), (8, 3)])
def test_maps_are_float32_in_0_1_of_the_images_shape(name, height, width):
    images = torch.randint(0, 256, (3, 3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    maps = baseline_maps(name, images)
    assert maps.dtype == np.float32 and maps.shape == (3, height, width)
    assert maps.min() == 0 and maps.max() == 1  # min-max normalised, like a model's maps
    if name == "centre":
        assert (maps == maps[0]).all()  # one map for every image
    assert (brightness(torch.full((2, 3, 4, 4), 7, dtype=torch.uint8)) == 0).all()  # a flat image: zeros


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\) uint8 RGB images; got torch.float32 \(1, 3, 4, 4\)"):
        centre(torch.zeros(1, 3, 4, 4))
    with pytest.raises(UnknownNameError, match="unknown baseline map 'nope'; valid names: brightness, centre"):
        baseline_maps("nope", torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(SystemExit, match=r"argument --baseline: unknown baseline map 'nope' \(choose from centre, "
                                         r"brightness\)"):
        evaluate.parse_args(["--baseline", "nope"])
    with pytest.raises(SystemExit, match="argument --baseline: not allowed with argument --run"):
        evaluate.parse_args(["--run", "runs/x", "--baseline", "centre"])
    with pytest.raises(SystemExit, match=r"argument --checkpoint: needs --run \(a model's map\)"):
        evaluate.parse_args(["--baseline", "centre", "--checkpoint", "best"])
    with pytest.raises(SystemExit, match="argument --config: needs --baseline"):
        evaluate.parse_args(["--scoremaps", "x", "--config", "y.toml"])
    with pytest.raises(SystemExit, match="error: --config nope.toml: no such file"):
        evaluate.main(["--baseline", "centre", "--config", "nope.toml"])
    with pytest.raises(SystemExit, match="a split list is for --scoremaps; with --run or --baseline"):
        evaluate.main(["--baseline", "centre", "--split", "val,test"])


def direct_metrics(name: str, cfg, split: str, threshold=None, per_image=False):
    """The split's metrics of a baseline map fed to the evaluators by hand, one image at a time."""
    dataset = build_dataset(cfg, split, train=False)
    boxes_eval = BoxEvaluator(cfg.eval.cam_curve_interval, cfg.eval.iou_thresholds, cfg.eval.fixed_threshold)
    masks_eval = MaskEvaluator(cfg.eval.cam_curve_interval)
    for i in range(len(dataset)):
        batch = collate([dataset[i]])
        scoremap = baseline_maps(name, batch["image"])
        boxes_eval.accumulate(scoremap, [batch["boxes"][0].numpy()], [False], [False])
        masks_eval.accumulate(scoremap, batch["mask"].numpy() == 1, batch["mask"].numpy() == 255)
    return {**localization_only(boxes_eval.compute(threshold)), **masks_eval.compute()}


@pytest.mark.parametrize("name", ["centre", "brightness"])
def test_evaluate_baseline_equals_the_evaluator_on_the_same_maps(name, tiny_overrides, tmp_path, capsys):
    out = tmp_path / "eval"
    metrics = evaluate.main(["--baseline", name, "--config", str(CONFIG), "--out", str(out), *tiny_overrides])
    cfg = load_config(CONFIG, tiny_overrides)
    val = direct_metrics(name, cfg, "val")
    assert metrics == direct_metrics(name, cfg, "test", val["best_cam_threshold"])
    assert metrics["val_cam_threshold"] == val["best_cam_threshold"]
    assert {"maxboxacc", "maxboxacc_v2", "pxap", "gt_known_loc@fixed", "gt_known_loc@val"} <= set(metrics)
    assert not [k for k in metrics if k.startswith(("top1", "top5"))]  # no class, no classification metrics
    assert json.loads((out / "eval_test.json").read_text()) == metrics and (out / "curves_test.png").is_file()
    printed = capsys.readouterr().out
    assert "| MaxBoxAccV2 (oracle) | PxAP |" in printed and "top-1" not in printed
    # --threshold and --split val: no val pass first; the default output folder is under log.runs_dir
    assert evaluate.main(["--baseline", name, "--config", str(CONFIG), "--threshold", "0.3", *tiny_overrides]) == \
        direct_metrics(name, cfg, "test", 0.3)
    assert (tmp_path / "runs" / "baselines" / f"SYNTHETIC_{name}_32px" / "eval_test.json").is_file()  # crop_size 32
    assert evaluate.main(["--baseline", name, "--config", str(CONFIG), "--split", "val", "--out", str(out),
                          *tiny_overrides]) == val
    # the comparison row: the same numbers, and per-image records without classification hits that give them back
    record, records = evaluate.baseline_result(name, cfg)
    assert record["test"] == metrics and record["val"] == val
    assert "top1" not in records and len(records["image_ids"]) == len(records["boxed"]) == 6
    again = resampled_metrics(records, np.ones((1, 6)))
    assert set(again) == {"gt_known_loc@fixed", "gt_known_loc@val", "maxboxacc", "maxboxacc_v2", "pxap"}
    assert {k: v[0] for k, v in again.items()} == pytest.approx({k: metrics[k] for k in again})


def test_two_bright_objects_multi_contour_matching_finds_the_smaller_gt_the_largest_contour_does_not():
    """A brightness map can game MaxBoxAccV2: it lights every bright object, and V2's best box over all
    contours picks the annotated one, while V1's largest contour is the other, larger object."""
    image = np.zeros((32, 32, 3), np.uint8)
    image[2:16, 2:16] = 230      # a large bright object, not annotated
    image[22:30, 20:28] = 200    # a smaller one, the GT
    scoremap = brightness(torch.from_numpy(image).permute(2, 0, 1)[None])
    gt = np.array([[20, 22, 27, 29]])  # x0, y0, x1, y1 of the small object, corners included
    for method in ("fast", "reference"):
        evaluator = BoxEvaluator(0.01, (30, 50, 70), method=method)
        evaluator.accumulate(scoremap, [gt], [False], [False])
        metrics = evaluator.compute()
        assert metrics["maxboxacc"] == 0  # the largest contour is the large object at every threshold
        assert metrics["maxboxacc_iou30"] == metrics["maxboxacc_iou50"] == metrics["maxboxacc_iou70"] == 100
        assert metrics["maxboxacc_v2"] == 100
