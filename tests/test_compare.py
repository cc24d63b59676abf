"""`python -m acol.compare` end to end on tiny trained runs, and `python -m acol.evaluate --localizer`."""
import csv
import json
import statistics
from pathlib import Path

import cv2
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from acol import compare, evaluate, train
from acol.cams import applicable_localizers
from acol.cams.localizers import MANY_FORWARD
from acol.config import load_config
from acol.evaluation.bootstrap import resampled_metrics
from acol.methods import build_model

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture
def tiny_runs(tiny_overrides, tmp_path):
    """Two ACoL seeds and one CAM run on the tiny benchmark."""
    runs = []
    for config, seed in (("synthetic_acol", 0), ("synthetic_acol", 1), ("synthetic_cam", 0)):
        name = f"{config}-s{seed}"
        train.main(["--config", str(EXPERIMENTS / f"{config}.toml"), "--name", name, *tiny_overrides,
                    f"train.seed={seed}", "train.global_batch_size=6"])
        runs.append(tmp_path / "runs" / name)
    return runs


def test_compare_tables_figure_and_tensorboard(tiny_runs, tmp_path, capsys):
    out = tmp_path / "compare"
    records = compare.main([*map(str, tiny_runs), "--methods", "inforward,cam,gradcam,guided_gradcam",
                            "--out", str(out), "--num-images", "2"])
    first = capsys.readouterr()
    err = first.err  # a named localizer a model does not declare is said, not dropped silently
    assert "synthetic_acol-s0: cam does not apply to its model (model.localizers); left out" in err
    assert "synthetic_cam-s0: inforward does not apply to its model (model.localizers); left out" in err
    assert "gradcam does not apply" not in err
    baselines = [r for r in records if r["group"] == "baseline"]
    records = [r for r in records if r["group"] != "baseline"]
    methods = {(Path(r["run"]).name, r["method"]) for r in records}
    assert methods == {("synthetic_acol-s0", "inforward"), ("synthetic_acol-s0", "gradcam"),
                       ("synthetic_acol-s0", "guided_gradcam"), ("synthetic_acol-s1", "inforward"),
                       ("synthetic_acol-s1", "gradcam"), ("synthetic_acol-s1", "guided_gradcam"),
                       ("synthetic_cam-s0", "cam"), ("synthetic_cam-s0", "gradcam"),
                       ("synthetic_cam-s0", "guided_gradcam")}
    # the model's own map under the same protocol is exactly the training run's final report
    for r in records:
        if r["method"] in ("inforward", "cam"):
            results = json.loads((Path(r["run"]) / "results.json").read_text())
            assert r["test"] == pytest.approx(results["test"]) and r["val"] == pytest.approx(results["val"])
        assert r["maps_per_s"] > 0 and 0 <= r["test"]["pxap"] <= 100

    with open(out / "results.csv") as f:
        rows = {(row["group"], row["method"]): row for row in csv.DictReader(f)}
    acol = [r for r in records if r["group"] == "synthetic_acol" and r["method"] == "gradcam"]
    row = rows[("synthetic_acol", "gradcam")]
    assert row["n"] == "2"
    assert float(row["MaxBoxAccV2 mean"]) == pytest.approx(statistics.mean(r["test"]["maxboxacc_v2"] for r in acol),
                                                           abs=1e-4)
    assert float(row["MaxBoxAccV2 std"]) == pytest.approx(statistics.stdev(r["test"]["maxboxacc_v2"] for r in acol),
                                                          abs=1e-4)
    for d in (30, 50, 70):  # MaxBoxAccV2's per-IoU parts, beside it
        assert float(row[f"MaxBoxAcc@{d} mean"]) == pytest.approx(
            statistics.mean(r["test"][f"maxboxacc_iou{d}"] for r in acol), abs=1e-4)
    assert rows[("synthetic_cam", "cam")]["n"] == "1"
    table = (out / "results.md").read_text()
    assert "| synthetic_acol | inforward | 2 |" in table and "| synthetic_cam | cam | 1 |" in table
    assert "| MaxBoxAcc@30 | MaxBoxAcc@50 | MaxBoxAcc@70 | MaxBoxAccV2 |" in table

    # differences from the default reference, the CAM model's own map, with paired bootstrap intervals
    assert "| MaxBoxAccV2 Δ vs synthetic_cam/cam | PxAP Δ vs synthetic_cam/cam |" in table
    (cam,) = [r for r in records if r["method"] == "cam"]
    for r in records:
        vs = r["test_vs_reference"]
        assert vs["reference"] == "synthetic_cam/cam" and vs["replicates"] == 1000
        assert vs["runs_paired"] == (r["group"] == "synthetic_cam")  # same models, two localizers
        cell = [c["test"]["maxboxacc_v2"] for c in records if (c["group"], c["method"]) == (r["group"], r["method"])]
        assert vs["maxboxacc_v2"]["difference"] == pytest.approx(statistics.mean(cell) - cam["test"]["maxboxacc_v2"])
        assert vs["maxboxacc_v2"]["low"] <= vs["maxboxacc_v2"]["high"]
    assert cam["test_vs_reference"]["pxap"] == {"difference": 0.0, "low": 0.0, "high": 0.0}
    (cam_row,) = [line for line in table.splitlines() if line.startswith("| synthetic_cam | cam | 1 |")]
    assert cam_row.endswith("| reference | reference | reference | reference |") and table.count("reference |") == 4
    interval = acol[0]["test_vs_reference"]["maxboxacc_v2"]
    assert f"{interval['difference']:+.1f} [{interval['low']:+.1f}, {interval['high']:+.1f}]" in table
    assert float(row["MaxBoxAccV2 Δ high"]) == pytest.approx(interval["high"], abs=1e-4)

    # the baseline maps' rows, after the runs: acol-evaluate --baseline's numbers on the runs' data set,
    # their difference from the reference with its interval; no classification metric, no maps/s
    assert [r["method"] for r in baselines] == ["centre", "brightness"]
    for r in baselines:
        alone = evaluate.main(["--baseline", r["method"], "--config", str(tiny_runs[2] / "config.toml"),
                               "--out", str(tmp_path / f"ev_{r['method']}")])
        assert r["test"] == alone and "top1_cls" not in r["test"] and "maps_per_s" not in r
        vs = r["test_vs_reference"]
        assert "top1_cls" not in vs and not vs["runs_paired"]
        assert vs["maxboxacc_v2"]["difference"] == pytest.approx(alone["maxboxacc_v2"] - cam["test"]["maxboxacc_v2"])
        assert vs["pxap"]["low"] <= vs["pxap"]["difference"] <= vs["pxap"]["high"]
        (line,) = [line for line in table.splitlines() if line.startswith(f"| baseline | {r['method']} | 1 | – |")]
        d = vs["maxboxacc_v2"]
        assert f"| {d['difference']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}] |" in line
        row = rows[("baseline", r["method"])]
        assert row["top-1 cls mean"] == row["maps/s mean"] == row["top-1 cls Δ"] == ""
        assert float(row["MaxBoxAccV2 mean"]) == pytest.approx(alone["maxboxacc_v2"], abs=1e-4)
        assert float(row["MaxBoxAccV2 Δ"]) == pytest.approx(d["difference"], abs=1e-4)
        saved = dict(np.load(out / "per_image" / f"baseline__{r['method']}.npz"))
        assert "top1" not in saved and len(saved["boxed"]) == 6
    assert json.loads((out / "results.jsonl").read_text().splitlines()[0])["test_vs_reference"]["reference"] == \
        "synthetic_cam/cam"
    # the saved per-image records give the run's test metrics again, without the maps
    saved = dict(np.load(out / "per_image" / "synthetic_acol-s1__gradcam.npz"))
    again = resampled_metrics(saved, np.ones((1, len(saved["top1"]))))
    run = next(r for r in acol if r["run"].endswith("s1"))
    assert {k: v[0] for k, v in again.items()} == {k: run["test"][k] for k in again}
    assert table in first.out
    assert "synthetic_cam-s0 gradcam: 6 val and 6 test images ...\n" in first.err  # a notice per localizer

    grid = cv2.imread(str(out / "grid.png"))
    rows = 1 + 3 + 3  # the images, then 3 methods per group, each row labelled whole (group, method)
    labels = ("image", "synthetic_acol", "synthetic_cam", "inforward", "cam", "gradcam", "guided_gradcam")
    label_width = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0] for t in labels) + 8
    assert grid.shape == (rows * 66 + 2, label_width + 2 * 66 + 2, 3)  # 32 px tiles shown at 64 px, 2 images
    (event_file,) = out.glob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert "z_compare/grid" in events.Tags()["images"]
    curve = events.Scalars("z_compare/test/synthetic_acol/gradcam/threshold_x1000/box_acc_iou50")
    expected = [statistics.mean(r["test_curves"]["box_acc_iou50"][i] for r in acol) for i in range(len(curve))]
    assert [e.value for e in curve] == pytest.approx(expected, abs=1e-4)
    assert [e.step for e in curve[:3]] == [0, 10, 20]  # thresholds in thousandths (interval 0.01)

    # the same localizer through python -m acol.evaluate gives the same numbers
    metrics = evaluate.main(["--run", str(tiny_runs[0]), "--localizer", "gradcam", "--out", str(tmp_path / "ev")])
    assert metrics == pytest.approx(acol[0]["test"])

    # another reference, and bad ones in one line before any evaluation
    with pytest.raises(SystemExit, match="--reference nope/cam: no run group 'nope'; valid: synthetic_acol, synthetic_cam"):
        compare.main([*map(str, tiny_runs), "--reference", "nope/cam"])
    with pytest.raises(SystemExit, match="localizer 'rise' is not evaluated; valid: cam, gradcam"):
        compare.main([*map(str, tiny_runs), "--methods", "cam,gradcam", "--reference", "synthetic_cam/rise"])


def test_compare_rejects_unknown_methods_and_unfinished_runs(tmp_path):
    with pytest.raises(SystemExit, match=r"argument --baselines: unknown baseline map 'nope' \(choose from centre, "
                                         r"brightness\)"):
        compare.main([str(tmp_path), "--baselines", "centre,nope"])
    with pytest.raises(SystemExit, match="argument --no-baselines: not allowed with argument --baselines"):
        compare.main([str(tmp_path), "--baselines", "centre", "--no-baselines"])
    with pytest.raises(SystemExit, match="unknown localizer 'nope'; valid: .*gradcam_pp"):
        compare.main([str(tmp_path), "--methods", "gradcam,nope"])
    with pytest.raises(SystemExit, match="is not a run folder of python -m acol.train \\(no config.toml in it\\)"):
        compare.main([str(tmp_path)])
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit, match=f"argument --out: {tmp_path / 'a_file'} is a file; name a folder"):
        compare.main([str(tmp_path), "--out", str(tmp_path / "a_file")])  # before any evaluation work


def test_without_methods_every_declared_localizer_but_the_many_forward_ones(tiny_runs, tmp_path):
    records = compare.main([str(tiny_runs[0]), "--out", str(tmp_path / "c"), "--no-baselines", "--num-images", "1"])
    model = build_model(load_config(tiny_runs[0] / "config.toml"), 3)
    expected = [name for name in applicable_localizers(model) if name not in MANY_FORWARD]
    assert [r["method"] for r in records] == expected and "gradcam" in expected and "rise" not in expected


def test_a_second_call_reuses_finished_results_and_recomputes_what_changed(tiny_runs, tmp_path, capsys):
    out = tmp_path / "compare"
    argv = [*map(str, tiny_runs[:2]), "--methods", "inforward,gradcam", "--out", str(out), "--num-images", "1"]
    first = compare.main(argv)
    assert sorted(p.name for p in (out / "done").glob("*.json")) == [
        "baseline__brightness.json", "baseline__centre.json",
        "synthetic_acol-s0__gradcam.json", "synthetic_acol-s0__inforward.json",
        "synthetic_acol-s1__gradcam.json", "synthetic_acol-s1__inforward.json"]
    (out / "done" / "synthetic_acol-s1__gradcam.json").unlink()  # as if interrupted before its end
    capsys.readouterr()
    second = compare.main(argv)
    err = capsys.readouterr().err
    assert err.count("done before") == 5 and "synthetic_acol-s1 gradcam: 6 val and 6 test images" in err
    strip = lambda records: [{k: v for k, v in r.items() if k != "maps_per_s"} for r in records]  # noqa: E731
    assert strip(second) == strip(first)  # the recomputed one too: maps are deterministic
    assert [r["maps_per_s"] for r in second[:3]] == [r["maps_per_s"] for r in first[:3]]  # reused as they were
    compare.main([*argv, "--target", "pred"])  # another target: no run's result reused (the baselines have none)
    assert capsys.readouterr().err.count("done before") == 2
    compare.main([*argv, "eval.fixed_threshold=0.3"])  # an evaluation setting: nothing reused
    assert "done before" not in capsys.readouterr().err
    compare.main([*argv, "--fresh", "--baselines", "centre"])
    assert "done before" not in capsys.readouterr().err
    assert [r["method"] for r in compare.main([*argv, "--no-baselines"])] == [r["method"] for r in first[:4]]
