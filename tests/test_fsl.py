"""The few-shot (FSL) baseline: val subsampling, foreground masks at the crop, the loss, a tiny run."""
import csv
import json
import math
from pathlib import Path

import pytest
import torch

from acol import ablate, train
from acol.config import ConfigError, load_config
from acol.datasets.dataset import WSOLDataset, box_mask, build_dataset, build_loader
from acol.datasets.metadata import Metadata, MetadataError, per_class_subset, read_metadata
from acol.datasets.transforms import WSOLTransform
from acol.methods.fsl import foreground_loss

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def write_split(root: Path, labels: dict[str, int]) -> Path:
    """A val split of 8x8 images with one box each under root/DS/val; returns the metadata root."""
    split = root / "DS" / "val"
    split.mkdir(parents=True)
    (split / "image_ids.txt").write_text("".join(f"{i}\n" for i in labels))
    (split / "class_labels.txt").write_text("".join(f"{i},{label}\n" for i, label in labels.items()))
    (split / "image_sizes.txt").write_text("".join(f"{i},8,8\n" for i in labels))
    (split / "localization.txt").write_text("".join(f"{i},1,1,4,4\n" for i in labels))
    return root


# --- data.val_per_class ----------------------------------------------------------------------------------

LABELS = dict(zip("abcdefghi", [1, 0, 1, 0, 2, 1, 0, 2, 1]))  # class 0: b d g, class 1: a c f i, class 2: e h


@pytest.mark.parametrize("k, seed, expected", [
    (2, 0, "gdfieh"),   # class 2 has exactly k: still drawn (a permutation), as wsolevaluation does
    (3, 1, "bgdfcieh"),  # class 2 has fewer than k: kept whole, in file order, nothing drawn
])
def test_val_per_class_takes_wsolevaluations_draw(k, seed, expected, tmp_path):
    # np.random.seed(seed); per label in ascending order np.random.choice(its positions, k, replace=False)
    meta = read_metadata(write_split(tmp_path, LABELS), "DS", "val")
    subset = per_class_subset(meta, k, seed)
    assert subset.image_ids == list(expected)
    assert subset.labels == {i: LABELS[i] for i in expected}
    assert set(subset.boxes) == set(expected) and subset.split_dir == meta.split_dir


def test_val_per_class_zero_keeps_the_split(tmp_path):
    meta = read_metadata(write_split(tmp_path, LABELS), "DS", "val")
    assert per_class_subset(meta, 0, 0) is meta


def test_val_per_class_applies_to_val_only_and_follows_train_seed(tiny_overrides):
    cfg = load_config(None, [*tiny_overrides, "data.val_per_class=1"])
    val = build_dataset(cfg, "val", train=False)
    assert len(val) == 3 and sorted(val.meta.labels.values()) == [0, 1, 2]
    assert len(build_dataset(cfg, "test", train=False)) == 6
    other_seeds = {tuple(build_dataset(load_config(None, [*tiny_overrides, "data.val_per_class=1",
                                                          f"train.seed={s}"]), "val", False).meta.image_ids)
                   for s in range(1, 6)}
    assert len(other_seeds | {tuple(val.meta.image_ids)}) > 1


@pytest.mark.parametrize("override, message", [
    ("data.val_per_class=-1", r"data\.val_per_class must be >= 0 \(0: all\); got -1"),
    ("data.train_split='test'", r"data\.train_split must be one of train, val; got 'test'"),
])
def test_bad_fsl_keys_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


# --- the foreground mask at the crop ---------------------------------------------------------------------

def test_box_mask_covers_the_box_corners_included():
    mask = box_mask(torch.tensor([[1, 0, 2, 1], [3, 2, 3, 2]]), 3, 5)
    assert mask.tolist() == [[0, 1, 1, 0, 0],
                             [0, 1, 1, 0, 0],
                             [0, 0, 0, 1, 0]]


def test_foreground_mask_is_cropped_then_flipped_with_the_image():
    image = torch.arange(6 * 8, dtype=torch.uint8).reshape(1, 6, 8).repeat(3, 1, 1)
    boxes = torch.tensor([[1, 1, 3, 2]])                     # rows 1-2, columns 1-3
    transform = WSOLTransform(train=True, resize_size=6, crop_size=4, keep_aspect=True)
    crop, _, mask = transform.crop_and_flip(image, boxes, box_mask(boxes, 6, 8), top=1, left=2, flip=True)
    # the crop holds rows 1-4, columns 2-5: the box's columns 2-3 land in crop columns 0-1, flipped to 2-3
    assert mask.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert torch.equal(crop[0], image[0, 1:5, 2:6].flip(-1))


def test_a_split_without_boxes_or_masks_cannot_train_a_localizer(tmp_path):
    meta = Metadata(tmp_path / "DS" / "val", ["a.png"], {"a.png": 0}, {})
    with pytest.raises(MetadataError, match=r"val: no boxes or masks"):
        WSOLDataset(tmp_path, meta, WSOLTransform(True, 8, 8, False), foreground=True)


# --- the loss --------------------------------------------------------------------------------------------

def test_foreground_loss_by_hand_ignore_pixels_left_out():
    logits = torch.tensor([[[0.0, math.log(3)], [5.0, math.log(3)]]])
    masks = torch.tensor([[[1, 0], [255, 1]]], dtype=torch.uint8)
    # BCE(0, 1) = ln 2; BCE(ln 3, 0) = -ln(1 - 3/4) = ln 4; ignored; BCE(ln 3, 1) = -ln(3/4)
    expected = (math.log(2) + math.log(4) + math.log(4 / 3)) / 3
    assert foreground_loss(logits, masks).item() == pytest.approx(expected, rel=1e-6)


def test_foreground_loss_upsamples_the_map_to_the_mask():
    logits = torch.full((2, 1, 1), 2.0)
    masks = torch.ones(2, 4, 4, dtype=torch.uint8)
    assert foreground_loss(logits, masks).item() == pytest.approx(-math.log(torch.sigmoid(torch.tensor(2.0)).item()))
    assert foreground_loss(logits, torch.full((2, 4, 4), 255, dtype=torch.uint8)).item() == 0.0


# --- end to end ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cache", ["off", "memory"])
def test_fsl_trains_on_val_and_reports_localization_only(cache, tiny_overrides, tmp_path):
    results = train.main(["--config", str(EXPERIMENTS / "synthetic_fsl.toml"), "--name", "fsl", *tiny_overrides,
                          "data.val_per_class=2", "train.epochs=2", f"data.cache={cache}"])
    run = tmp_path / "runs" / "fsl"
    assert "6 train / 6 val / 6 test images" in (run / "log.txt").read_text()  # trains on val's 2 per class
    assert results["step"] == 2  # 6 images, batch 4, drop_last: one step an epoch
    for split in ("val", "test"):
        assert 0 <= results[split]["maxboxacc_v2"] <= 100 and 0 <= results[split]["pxap"] <= 100
        assert not [k for k in results[split] if k.startswith(("top1", "top5"))]
    assert json.loads((run / "results.json").read_text()) == results
    assert "train/cls_acc" not in (run / "metrics.jsonl").read_text()


def test_fsl_train_batches_carry_masks_and_wsol_batches_do_not(tiny_overrides):
    cfg = load_config(None, [*tiny_overrides, "data.train_split=val"])
    fsl = next(iter(build_loader(cfg, build_dataset(cfg, "val", train=True, foreground=True), train=True)))
    assert fsl["mask"].shape == (4, 32, 32) and set(fsl["mask"].unique().tolist()) <= {0, 1}
    wsol = next(iter(build_loader(cfg, build_dataset(cfg, "train", train=True), train=True)))
    assert wsol["mask"] is None  # a WSOL method's targets stay its labels


def test_fsl_beside_cam_in_a_method_table_compares_localization_only(tiny_overrides, tmp_path):
    """The few-shot baseline as a group of a method comparison: differences from CAM in the metrics both
    report, none in classification; the val-size study leaves it out (it trains on val)."""
    path = tmp_path / "duel.toml"
    path.write_text("seeds = [0]\n" + "".join(
        f'\n[[groups]]\nname = "{name}"\nbase = "{EXPERIMENTS / base}"\n[[groups.cells]]\nset = {{ "train.epochs" = 2 }}\n'
        for name, base in (("CAM", "synthetic_cam.toml"), ("FSL", "synthetic_fsl.toml"))))
    runs = tmp_path / "ablation_runs"
    ablate.main([str(path), "--runs-dir", str(runs), "--num-images", "2", "--val-sizes", "1", "--val-draws", "2",
                 *[f"--override={o}" for o in [*tiny_overrides, "data.val_per_class=2"]]])
    folder = runs / "ablations" / "duel"
    with open(folder / "results.csv") as f:
        rows = list(csv.reader(f))
    fsl = dict(zip(rows[0], next(r for r in rows if r and r[0] == "FSL")))
    assert fsl["top-1 cls mean"] == fsl["top-1 cls Δ"] == fsl["top-1 loc @val τ Δ"] == ""
    tests = {g: ablate.last_records(folder / g / "train.epochs=2-s0")["test"]["maxboxacc_v2"] for g in ("CAM", "FSL")}
    assert float(fsl["MaxBoxAccV2 Δ"]) == pytest.approx(tests["FSL"] - tests["CAM"], abs=1e-4)
    assert "| trains on val |" in (folder / "val_size.md").read_text()
