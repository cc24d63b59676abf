"""`python -m acol.evaluate` on a trained tiny run and on the score maps it saves."""
import json
from pathlib import Path

import numpy as np
import pytest

from acol import evaluate, train

CONFIG = str(Path(__file__).resolve().parents[1] / "experiments" / "synthetic_acol.toml")


@pytest.fixture
def trained_run(tiny_overrides, tmp_path):
    train.main(["--config", CONFIG, "--name", "run", *tiny_overrides, "train.global_batch_size=6"])
    return tmp_path / "runs" / "run"


def test_run_and_scoremap_modes_agree_with_training(trained_run, tiny_data, tmp_path, capsys):
    results = json.loads((trained_run / "results.json").read_text())
    metrics = evaluate.main(["--run", str(trained_run), "--save-scoremaps", "--out", str(tmp_path / "eval")])
    # the last checkpoint on test at val's threshold: exactly the training run's final report
    assert metrics == pytest.approx(results["test"])
    assert json.loads((tmp_path / "eval" / "eval_test.json").read_text()) == pytest.approx(metrics)
    assert (tmp_path / "eval" / "curves_test.png").is_file()
    assert len(list((tmp_path / "eval").glob("events.out.tfevents.*"))) == 1
    assert "| test |" in capsys.readouterr().out

    _, metadata_root = tiny_data
    maps = sorted((tmp_path / "eval" / "scoremaps").rglob("*.npy"))
    assert len(maps) == 6 and np.load(maps[0]).shape == (32, 32)
    from_maps = evaluate.main(["--scoremaps", str(tmp_path / "eval" / "scoremaps"), "--dataset", "SYNTHETIC",
                               "--metadata-root", str(metadata_root), "--data-root", str(tiny_data[0]),
                               "--threshold", str(metrics["val_cam_threshold"]), "eval.cam_curve_interval=0.01",
                               "--out", str(tmp_path / "eval_maps")])
    assert "top1_cls" not in from_maps and "top1_loc@val" not in from_maps  # no classifier, no such metrics
    for key in ("gt_known_loc@fixed", "gt_known_loc@val", "gt_known_loc@oracle", "maxboxacc_v2", "pxap"):
        assert from_maps[key] == pytest.approx(metrics[key]), key


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
