"""`python -m acol.ablate`: a 2x2 grid x 2 seeds of tiny runs, killed mid-grid, completed, summarised."""
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from acol import ablate, evaluate
from acol.config import ConfigError
from acol.evaluation.bootstrap import resampled_metrics

ROOT = Path(__file__).resolve().parents[1]


def write_grid(tmp_path) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(f'description = "tiny grid"\nbase = "{ROOT / "experiments" / "synthetic_acol.toml"}"\n'
                    'seeds = [0, 1]\nselect = "maxboxacc_v2"\n\n[axes]\n'
                    '"acol.threshold" = [0.5, 0.7]\n"acol.loss_weight_b" = [0.5, 1.0]\n')
    return path


def kill_after_a_result(args: list[str], folder: Path, pattern: str) -> dict[Path, int]:
    """Start `python -m acol.ablate ARGS` in a subprocess and SIGKILL it (and its training child) once a
    `folder.glob(pattern)` results.json exists; {finished run folder: its results.json's mtime}."""
    process = subprocess.Popen([sys.executable, "-m", "acol.ablate", *args], cwd=ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(folder.glob(pattern)) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return {p.parent: p.stat().st_mtime_ns for p in folder.glob(pattern)}


def test_grid_killed_mid_way_completes_and_matches_the_runs(tiny_overrides, tmp_path, capsys):
    grid = write_grid(tmp_path)
    runs = tmp_path / "ablation_runs"
    args = [str(grid), "--runs-dir", str(runs), *[f"--override={o}" for o in tiny_overrides]]
    folder = runs / "ablations" / "grid"
    finished = {run.name: mtime for run, mtime in kill_after_a_result(args, folder, "*/results.json").items()}
    assert 1 <= len(finished) < 8

    ablate.main([*args, "--jobs", "2"])
    assert len(list(folder.glob("*/results.json"))) == 8
    assert len(list(folder.glob("*-s[01].out"))) == 8  # each run's console output, next to it
    for name, mtime in finished.items():  # runs finished before the kill were not trained again
        assert (folder / name / "results.json").stat().st_mtime_ns == mtime
    capsys.readouterr()
    ablate.main(args)  # the same command again: nothing left to train
    assert "training" not in capsys.readouterr().out

    with open(folder / "results.csv") as f:
        rows = {row["cell"]: row for row in csv.DictReader(f)}
    assert len(rows) == 4
    val_means = {}
    for label, row in rows.items():
        records = []
        for seed in (0, 1):
            lines = (folder / f"{label}-s{seed}" / "metrics.jsonl").read_text().splitlines()
            records.append({r["split"]: r for r in map(json.loads, lines)})
        val = [r["val"]["maxboxacc_v2"] for r in records]
        val_means[label] = statistics.mean(val)
        assert float(row["val MaxBoxAccV2 mean"]) == pytest.approx(statistics.mean(val), abs=1e-4)
        assert float(row["val MaxBoxAccV2 std"]) == pytest.approx(statistics.stdev(val), abs=1e-4)
        assert float(row["val top-1 cls mean"]) == pytest.approx(statistics.mean(r["val"]["top1_cls"] for r in records),
                                                                 abs=1e-4)
        if row["chosen"]:
            test = [r["test"]["maxboxacc_v2"] for r in records]
            assert float(row["test MaxBoxAccV2 mean"]) == pytest.approx(statistics.mean(test), abs=1e-4)
        else:
            assert row["test MaxBoxAccV2 mean"] == ""  # test is reported for the val-chosen cell only
    chosen = [label for label, row in rows.items() if row["chosen"]]
    assert chosen == [max(val_means, key=val_means.get)]
    for label, row in rows.items():  # each cell's val difference from the chosen one, inside its interval
        delta = [float(row[f"val MaxBoxAccV2 Δ vs chosen{end}"]) for end in ("", " low", " high")]
        assert delta[0] == pytest.approx(val_means[label] - val_means[chosen[0]], abs=1e-4)
        assert delta[1] <= delta[0] <= delta[2] and (label != chosen[0] or delta == [0.0, 0.0, 0.0])
    table = (folder / "results.md").read_text()
    assert f"**{chosen[0]}** (chosen on val)" in table and "acol.threshold=0.5,acol.loss_weight_b=0.5" in table
    assert "| val MaxBoxAccV2 Δ vs chosen |" in table and "| reference |" in table


def test_bad_ablation_files_name_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('base = "x.toml"\n[axes]\n"acol.threshold" = []\n')
    with pytest.raises(ConfigError, match="bad.toml: axes.acol.threshold must be a non-empty list"):
        ablate.load_ablation(str(path))
    path.write_text('base = "x.toml"\nseed = [1]\n')
    with pytest.raises(ConfigError, match="bad.toml: unknown key 'seed'"):
        ablate.load_ablation(str(path))
    path.write_text('base = "x.toml"\n[[cells]]\nlocalizer = "gradcamm"\n')
    with pytest.raises(ConfigError, match=r"cells\[0\]: unknown localizer 'gradcamm'"):
        ablate.load_ablation(str(path))
    with pytest.raises(ConfigError, match="known ablations: .*delta"):
        ablate.load_ablation("no_such_ablation")
    path.write_text('base = "x.toml"\nbaselines = ["centre"]\n[axes]\n"acol.threshold" = [0.5]\n')
    with pytest.raises(ConfigError, match="bad.toml: baselines are rows of the method table of a file with"):
        ablate.load_ablation(str(path))
    path.write_text('baselines = ["centre", "middle"]\n[[groups]]\nname = "A"\nbase = "x.toml"\n[[groups.cells]]\n')
    with pytest.raises(ConfigError, match=r"bad.toml: baselines: unknown baseline map 'middle' \(valid: centre, "
                                          r"brightness\)"):
        ablate.load_ablation(str(path))
    path.write_text('baselines = "centre"\n[[groups]]\nname = "A"\nbase = "x.toml"\n[[groups.cells]]\n')
    with pytest.raises(ConfigError, match="bad.toml: baselines must be a list of baseline map names"):
        ablate.load_ablation(str(path))


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "experiments" / "ablations").glob("*.toml")))
def test_every_shipped_ablation_loads_and_its_cells_configure(name):
    ablation = ablate.load_ablation(name)
    assert ablation.seeds == [0, 1, 2]
    for group in ablation.groups:
        assert group.base.is_file() and len(group.cells) >= 2
        for cell in group.cells:
            ablate.load_config(group.base, cell.overrides)


def test_methods_comparison_gives_every_method_the_same_budget():
    ablation = ablate.load_ablation("methods")
    assert [g.name for g in ablation.groups] == ["CAM", "HaS", "ACoL", "SPG", "ADL", "CutMix"]
    assert {len(g.cells) for g in ablation.groups} == {6} and ablation.search_seeds == [0]
    for group in ablation.groups:
        names = {ablate.load_config(group.base, cell.overrides).model.name for cell in group.cells}
        assert names == {group.name.lower()}


def test_groups_search_on_some_seeds_then_run_the_chosen_cell_on_all(tiny_overrides, tmp_path):
    path = tmp_path / "duel.toml"
    experiments = ROOT / "experiments"
    path.write_text(f'seeds = [0, 1]\nsearch_seeds = [0]\nbaselines = ["centre", "brightness"]\n\n[[groups]]\nname = "CAM"\n'
                    f'base = "{experiments / "synthetic_cam.toml"}"\n[groups.axes]\n"optim.lr" = [0.01, 0.001]\n\n'
                    f'[[groups]]\nname = "HaS"\nbase = "{experiments / "synthetic_has.toml"}"\n[[groups.cells]]\n'
                    f'set = {{ "has.grid_size" = 4 }}\n[[groups.cells]]\nset = {{ "has.grid_size" = 8 }}\n')
    runs = tmp_path / "ablation_runs"
    args = [str(path), "--runs-dir", str(runs), "--num-images", "3", *[f"--override={o}" for o in tiny_overrides]]
    ablate.main(args)
    folder = runs / "ablations" / "duel"
    trained = sorted(str(p.parent.relative_to(folder)) for p in folder.glob("*/*/results.json"))
    chosen = {}
    for group, cells in (("CAM", ("optim.lr=0.01", "optim.lr=0.001")), ("HaS", ("has.grid_size=4", "has.grid_size=8"))):
        val = {c: ablate.last_records(folder / group / f"{c}-s0")["val"]["maxboxacc_v2"] for c in cells}
        chosen[group] = max(val, key=val.get)
    assert trained == sorted([f"{g}/{c}-s0" for g, cells in (("CAM", ("optim.lr=0.01", "optim.lr=0.001")),
                                                              ("HaS", ("has.grid_size=4", "has.grid_size=8")))
                              for c in cells] + [f"{g}/{chosen[g]}-s1" for g in chosen])
    with open(folder / "results.csv") as f:
        rows = list(csv.reader(f))
    means = {}
    for group in ("CAM", "HaS"):
        row = dict(zip(rows[0], next(r for r in rows if r and r[0] == group)))  # the groups table comes first
        tests = [ablate.last_records(folder / group / f"{chosen[group]}-s{s}")["test"]["maxboxacc_v2"] for s in (0, 1)]
        assert row["chosen"] == chosen[group] and row["n"] == "2"
        assert float(row["MaxBoxAccV2 mean"]) == pytest.approx(statistics.mean(tests), abs=1e-4)
        means[group] = statistics.mean(tests)
        # the per-image records cached in the run folders give the runs' test metrics again
        for s in (0, 1):
            records = dict(np.load(folder / group / f"{chosen[group]}-s{s}" / "ablate_own_test.npz"))
            again = resampled_metrics(records, np.ones((1, len(records["top1"]))))["maxboxacc_v2"][0]
            assert again == pytest.approx(ablate.last_records(folder / group / f"{chosen[group]}-s{s}")["test"]["maxboxacc_v2"])
    # HaS vs CAM, the first group: the difference of the means, in a bootstrap interval
    has = dict(zip(rows[0], next(r for r in rows if r and r[0] == "HaS")))
    assert float(has["MaxBoxAccV2 Δ"]) == pytest.approx(means["HaS"] - means["CAM"], abs=1e-4)
    assert float(has["MaxBoxAccV2 Δ low"]) <= float(has["MaxBoxAccV2 Δ high"])
    table = (folder / "results.md").read_text()
    assert "| MaxBoxAccV2 Δ vs CAM | PxAP Δ vs CAM |" in table and "| reference | reference |" in table
    # the baseline maps' rows: one evaluation each on the CAM runs' data set (acol-evaluate --baseline's numbers),
    # their difference from CAM's mean over seeds, with its interval; no top-1 cls
    cam_config = folder / "CAM" / f"{chosen['CAM']}-s0" / "config.toml"
    for name in ("centre", "brightness"):
        alone = evaluate.main(["--baseline", name, "--config", str(cam_config), "--out", str(tmp_path / name)])
        val = evaluate.main(["--baseline", name, "--config", str(cam_config), "--split", "val",
                             "--out", str(tmp_path / name)])
        row = dict(zip(rows[0], next(r for r in rows if r and r[0] == f"{name} (baseline)")))
        assert row["n"] == "1" and row["top-1 cls mean"] == row["top-1 cls Δ"] == ""
        assert float(row["val maxboxacc_v2 mean"]) == pytest.approx(val["maxboxacc_v2"], abs=1e-4)
        assert float(row["MaxBoxAccV2 mean"]) == pytest.approx(alone["maxboxacc_v2"], abs=1e-4)
        assert float(row["GT-known @val τ mean"]) == pytest.approx(alone["gt_known_loc@val"], abs=1e-4)
        assert float(row["MaxBoxAccV2 Δ"]) == pytest.approx(alone["maxboxacc_v2"] - means["CAM"], abs=1e-4)
        assert float(row["PxAP Δ low"]) <= float(row["PxAP Δ"]) <= float(row["PxAP Δ high"])
        (line,) = [line for line in table.splitlines() if line.startswith(f"| {name} (baseline) | none (no training) |")]
        assert f"| {float(row['MaxBoxAccV2 Δ']):+.1f} [{float(row['MaxBoxAccV2 Δ low']):+.1f}, " in line
        assert (folder / "baselines" / f"baseline__{name}.json").is_file()  # kept: the next summary reuses it
    # a cell with a localizer: its metrics and per-image records, cached in the run folder
    run = folder / "CAM" / f"{chosen['CAM']}-s0"
    job = ablate.Job(None, ablate.Cell("Grad-CAM", localizer="gradcam"), 0, run)
    metrics, records = ablate.cell_metrics(job), ablate.split_records(job)
    assert (run / "ablate_gradcam.json").is_file() and (run / "ablate_gradcam_test.npz").is_file()
    again = resampled_metrics(records, np.ones((1, len(records["top1"]))))
    assert {k: v[0] for k, v in again.items()} == pytest.approx({k: metrics["test"][k] for k in again})
    val = ablate.split_records(job, "val")  # its val records give compare's val metrics again
    again = resampled_metrics(val, np.ones((1, len(val["top1"]))))
    assert {k: v[0] for k, v in again.items()} == pytest.approx({k: metrics["val"][k] for k in again})
    # own map vs Grad-CAM of the same run: the val difference, paired by run, of the two maps' own values
    own = ablate.Cell("own", {"optim.lr": float(chosen["CAM"].split("=")[1])})
    pair = ablate.Group("CAM", path, [own, job.cell])
    jobs = [ablate.Job(pair, cell, 0, run) for cell in (own, job.cell)]
    deltas = ablate.val_differences(pair, jobs, own, "maxboxacc_v2")
    expected = metrics["val"]["maxboxacc_v2"] - ablate.last_records(run)["val"]["maxboxacc_v2"]
    assert deltas["Grad-CAM"].difference == pytest.approx(expected, abs=1e-6)
    assert deltas["Grad-CAM"].low <= deltas["Grad-CAM"].difference <= deltas["Grad-CAM"].high
    assert (deltas["own"].difference, deltas["own"].low, deltas["own"].high) == (0, 0, 0)
    grid = (folder / "grid.png")
    assert grid.is_file()
    import cv2
    label_width = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0] for t in ("image", *chosen)) + 8
    assert cv2.imread(str(grid)).shape == (2 + 3 * (2 * 32 + 2), label_width + 2 + 3 * (2 * 32 + 2), 3)  # image + 2 methods
    # the val-size study of the same runs (nothing trains): the whole val split chooses the chosen cells
    ablate.main([*args, "--val-sizes", "1", "--val-draws", "3"])
    study = (folder / "val_size.md").read_text()
    picked = []
    for group, cells in (("CAM", ("optim.lr=0.01", "optim.lr=0.001")), ("HaS", ("has.grid_size=4", "has.grid_size=8"))):
        for cell in cells:  # the whole val split's records give the run's val metric again
            records = dict(np.load(folder / group / f"{cell}-s0" / "ablate_own_val.npz"))
            again = resampled_metrics(records, np.ones((1, len(records["top1"]))))["maxboxacc_v2"][0]
            assert again == pytest.approx(ablate.last_records(folder / group / f"{cell}-s0")["val"]["maxboxacc_v2"])
        picked.append(f"{ablate.last_records(folder / group / f'{chosen[group]}-s0')['test']['maxboxacc_v2']:.1f} (100%)")
    num_val = len(records["top1"])
    assert f"| all ({num_val} images) | {' | '.join(picked)} |" in study
    assert "| 1 (3 images, 3 draws) | " in study  # 1 image of each of the 3 classes


def test_the_grid_of_groups_at_different_input_sizes_takes_the_first_groups_size(tiny_overrides, tmp_path):
    """As experiments/ablations/pretrained.toml: 64 px groups beside 96 px ones."""
    base = ROOT / "experiments" / "synthetic_cam.toml"
    path = tmp_path / "sizes.toml"
    path.write_text("seeds = [0]\n" + "".join(
        f'[[groups]]\nname = "{name}"\nbase = "{base}"\n[[groups.cells]]\n'
        f'set = {{ "data.resize_size" = {size + 4}, "data.crop_size" = {size} }}\n'
        for name, size in (("A", 32), ("B", 48))))
    overrides = [o for o in tiny_overrides if not o.startswith(("data.resize_size", "data.crop_size"))]
    runs = tmp_path / "ablation_runs"
    ablate.main([str(path), "--runs-dir", str(runs), "--num-images", "2",
                 *[f"--override={o}" for o in overrides + ["train.max_steps=1"]]])
    import cv2
    label_width = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0] for t in ("image", "A", "B")) + 8
    grid = cv2.imread(str(runs / "ablations" / "sizes" / "grid.png"))
    assert grid.shape == (2 + 3 * (2 * 32 + 2), label_width + 2 + 2 * (2 * 32 + 2), 3)  # image + 2 groups, 32 px
