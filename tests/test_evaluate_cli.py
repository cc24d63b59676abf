"""`python -m acol.evaluate` on a trained tiny run and on the score maps it saves."""
import json
import os
from os.path import join as ospj
from pathlib import Path

import numpy as np
import pytest

from acol import evaluate, train
from acol.datasets.metadata import read_metadata
from acol.evaluation import normalize_scoremap

CONFIG = str(Path(__file__).resolve().parents[1] / "experiments" / "synthetic_acol.toml")


@pytest.fixture
def trained_run(tiny_overrides, tmp_path):
    train.main(["--config", CONFIG, "--name", "run", *tiny_overrides, "train.global_batch_size=6"])
    return tmp_path / "runs" / "run"


def save_as_wsolevaluation(scoremaps: dict[str, np.ndarray], root: Path, dtype) -> None:
    """What wsolevaluation's CAMComputer does with each map: normalize_scoremap, then
    np.save(ospj(root, image_id)) in the id's folder (np.save appends .npy to the id, extension and all)."""
    for image_id, scoremap in scoremaps.items():
        cam_path = ospj(str(root), image_id)
        os.makedirs(os.path.dirname(cam_path), exist_ok=True)
        np.save(cam_path, normalize_scoremap(scoremap).astype(dtype))


def test_run_and_scoremap_modes_agree_with_training_and_wsolevaluation(trained_run, tiny_data, tmp_path, capsys):
    """A run's evaluation equals its training report; its saved maps, in wsolevaluation's layout and re-saved
    as wsolevaluation's inference saves them, evaluate identically, val and test in one call or in two."""
    results = json.loads((trained_run / "results.json").read_text())
    metrics = evaluate.main(["--run", str(trained_run), "--save-scoremaps", "--out", str(tmp_path / "eval")])
    # the last checkpoint on test at val's threshold: exactly the training run's final report
    assert metrics == pytest.approx(results["test"])
    assert json.loads((tmp_path / "eval" / "eval_test.json").read_text()) == pytest.approx(metrics)
    assert (tmp_path / "eval" / "curves_test.png").is_file()
    assert len(list((tmp_path / "eval").glob("events.out.tfevents.*"))) == 1
    assert "| test |" in capsys.readouterr().out

    data_root, metadata_root = tiny_data
    saved = tmp_path / "eval" / "scoremaps"
    ids = {split: read_metadata(metadata_root, "SYNTHETIC", split).image_ids for split in ("val", "test")}
    maps = {i: np.load(saved / f"{i}.npy") for split_ids in ids.values() for i in split_ids}  # <image_id>.npy
    assert all(str(i).endswith(".png") for i in maps) and len(list(saved.rglob("*.npy"))) == len(maps) == 6 + 6
    assert all(m.dtype == np.float32 and m.shape == (32, 32) for m in maps.values())

    # the same maps as wsolevaluation's inference writes them (float32, and float64 as its t2n makes them),
    # and in the extension-stripped form acol wrote before
    save_as_wsolevaluation(maps, tmp_path / "wsol32", np.float32)
    save_as_wsolevaluation(maps, tmp_path / "wsol64", np.float64)
    for image_id, scoremap in maps.items():
        path = tmp_path / "stripped" / Path(image_id).with_suffix(".npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, scoremap)
        np.save(tmp_path / "wsol32" / Path(image_id).with_suffix(".npy"), np.zeros_like(scoremap))  # not read
    common = ["--dataset", "SYNTHETIC", "--metadata-root", str(metadata_root), "--data-root", str(data_root),
              "eval.cam_curve_interval=0.01"]
    one_call = {name: evaluate.main(["--scoremaps", str(root), "--split", "val,test", *common,
                                     "--out", str(tmp_path / f"{name}_eval")])
                for name, root in [("acol", saved), ("wsol32", tmp_path / "wsol32"),
                                   ("wsol64", tmp_path / "wsol64"), ("stripped", tmp_path / "stripped")]}
    out = capsys.readouterr().out
    assert one_call["wsol32"] == one_call["acol"] == one_call["wsol64"] == one_call["stripped"]  # every metric
    assert json.loads((tmp_path / "acol_eval" / "eval_val_test.json").read_text()) == one_call["acol"]
    assert "| MaxBoxAcc@30 | MaxBoxAcc@50 | MaxBoxAcc@70 | MaxBoxAccV2 (oracle) |" in out
    assert "| val |" in out and "| test |" in out and "test: box thresholds: fixed=0.2, val-chosen=" in out
    assert "note: 6 val images have a map in both forms" in out and "note: 6 test images" in out

    # the two-call way: val, then test at val's threshold by hand
    val = evaluate.main(["--scoremaps", str(saved), "--split", "val", *common, "--out", str(tmp_path / "v")])
    test = evaluate.main(["--scoremaps", str(saved), "--split", "test", *common, "--threshold",
                          str(val["best_cam_threshold"]), "--out", str(tmp_path / "t")])
    assert one_call["acol"] == {"val": val, "test": test}
    assert test["val_cam_threshold"] == val["best_cam_threshold"] == metrics["val_cam_threshold"]
    assert "top1_cls" not in test and "top1_loc@val" not in test  # no classifier, no such metrics
    for key in ("gt_known_loc@fixed", "gt_known_loc@val", "gt_known_loc@oracle", "maxboxacc_iou50", "maxboxacc_v2",
                "pxap"):
        assert test[key] == pytest.approx(metrics[key]), key  # the run's own evaluation

    with pytest.raises(SystemExit, match="chooses the threshold on val; leave out --threshold"):
        evaluate.main(["--scoremaps", str(saved), "--split", "val,test", "--threshold", "0.3", *common])
    with pytest.raises(SystemExit, match="a split list is for --scoremaps"):
        evaluate.main(["--run", str(trained_run), "--split", "val,test"])


def test_the_weights_evaluated_are_named_with_their_epoch_and_an_unfinished_run_is_said(trained_run, tmp_path,
                                                                                         capsys):
    evaluate.main(["--run", str(trained_run), "--checkpoint", "best", "--out", str(tmp_path / "e1")])
    assert f"weights: {trained_run / 'checkpoints' / 'best.pt'}, after epoch 1, step 2\n" in capsys.readouterr().out
    (trained_run / "results.json").unlink()
    evaluate.main(["--run", str(trained_run), "--out", str(tmp_path / "e2")])
    assert (f"weights: {trained_run / 'checkpoints' / 'last.pt'}, after epoch 1, step 2 (the run has not finished: "
            "no results.json)\n") in capsys.readouterr().out
    (trained_run / "meta.json").unlink()
    with pytest.raises(SystemExit, match=f"^error: {trained_run} has no meta.json \\(it records the number of "
                                         r"classes\); set model.num_classes=N$"):
        evaluate.main(["--run", str(trained_run)])
    assert evaluate.main(["--run", str(trained_run), "--out", str(tmp_path / "e3"), "model.num_classes=3"])


def test_a_localizer_the_model_does_not_declare_is_refused(trained_run):
    with pytest.raises(SystemExit, match="localizer 'cam' does not apply to the acol model of .*; its localizers: "
                                         "inforward, inforward_a, inforward_b, gradcam"):
        evaluate.main(["--run", str(trained_run), "--localizer", "cam"])


@pytest.mark.parametrize("array, message", [
    (np.zeros((2, 4, 4), np.float32), "must be a 2-D float array"),
    (np.zeros((4, 4), np.int64), "must be a 2-D float array"),
    (np.full((4, 4), 1.5, np.float32), r"values must lie in \[0, 1\]"),
    (np.full((4, 4), np.nan, np.float32), r"values must lie in \[0, 1\]"),
])
def test_bad_score_maps_are_named(tmp_path, array, message):
    path = tmp_path / "m.npy"
    np.save(path, array)
    with pytest.raises(ValueError, match=f"m.npy: .*{message}"):
        evaluate.load_scoremap(path)
    with pytest.raises(FileNotFoundError, match="score map not found"):
        evaluate.load_scoremap(tmp_path / "missing.npy")


def test_score_map_files_both_forms_and_neither(tmp_path, tiny_data):
    with pytest.raises(SystemExit, match=r"^error: score map not found for 'val/000/\d+.png': tried .*\.png\.npy and "
                                         r".*\d+\.npy$"):
        evaluate.main(["--scoremaps", str(tmp_path), "--dataset", "SYNTHETIC", "--split", "val,test",
                       "--metadata-root", str(tiny_data[1]), "--out", str(tmp_path / "out")])
    image_id = "val/001/00002.jpg"
    with pytest.raises(FileNotFoundError, match="score map not found for 'val/001/00002.jpg': tried "
                                                ".*val/001/00002.jpg.npy and .*val/001/00002.npy$"):
        evaluate.find_scoremap(tmp_path, image_id)
    (tmp_path / "val" / "001").mkdir(parents=True)
    np.save(tmp_path / "val" / "001" / "00002.npy", np.zeros((4, 4), np.float32))
    assert evaluate.find_scoremap(tmp_path, image_id) == (tmp_path / "val" / "001" / "00002.npy", False)
    np.save(tmp_path / "val" / "001" / "00002.jpg", np.zeros((4, 4), np.float32))   # -> 00002.jpg.npy
    assert evaluate.find_scoremap(tmp_path, image_id) == (tmp_path / "val" / "001" / "00002.jpg.npy", True)
    assert evaluate.find_scoremap(tmp_path, "val/001/00002.jpg".removesuffix(".jpg")) == \
        (tmp_path / "val" / "001" / "00002.npy", False)                             # an id without extension


def test_float64_score_maps_keep_their_precision(tmp_path):
    """wsolevaluation evaluates float64 maps; a float32 copy can change the uint8 cut int(map * 255)."""
    value = np.nextafter(1 / 255, 0)                          # int(value * 255) == 0 in float64 ...
    assert int(value * 255) == 0 and int(np.float32(value) * np.float32(255)) == 1   # ... 1 in float32
    scoremap = np.array([[0.0, value], [1.0, 0.5]])
    np.save(tmp_path / "m.npy", scoremap)
    loaded = evaluate.load_scoremap(tmp_path / "m.npy")
    assert loaded.dtype == np.float64 and np.array_equal(loaded, scoremap)
    np.save(tmp_path / "h.npy", scoremap.astype(np.float16))
    assert evaluate.load_scoremap(tmp_path / "h.npy").dtype == np.float32
    # float32 maps need no float64: their cut is the same in either precision (checked next to every k / 255)
    ulps = np.arange(-300, 301, dtype=np.int32)
    near = (np.arange(256) / 255).astype(np.float32).view(np.int32)[:, None] + ulps
    values = near.astype(np.int32).view(np.float32).ravel()
    values = values[(values >= 0) & (values <= 1)]
    assert np.array_equal((values * 255).astype(np.uint8), (values.astype(np.float64) * 255).astype(np.uint8))


def test_evaluations_of_other_maps_of_a_run_go_to_folders_naming_them(trained_run, capsys):
    own = evaluate.main(["--run", str(trained_run)])
    first = (trained_run / "eval" / "eval_test.json").read_text()
    grad = evaluate.main(["--run", str(trained_run), "--localizer", "gradcam", "--target", "pred", "--checkpoint", "best"])
    rise = evaluate.main(["--run", str(trained_run), "--localizer", "rise", "--localizer-option", "rise.n_masks=8"])
    out = capsys.readouterr().out
    for name, metrics in (("gradcam-pred-best", grad), ("rise-n_masks=8", rise)):
        assert json.loads((trained_run / "eval" / name / "eval_test.json").read_text()) == pytest.approx(metrics)
        assert f"written to {trained_run / 'eval' / name}\n" in out
    assert (trained_run / "eval" / "eval_test.json").read_text() == first and json.loads(first) == pytest.approx(own)
    assert grad != own
