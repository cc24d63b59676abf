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

import pytest

from acol import ablate
from acol.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write_grid(tmp_path) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(f'description = "tiny grid"\nbase = "{ROOT / "experiments" / "synthetic_acol.toml"}"\n'
                    'seeds = [0, 1]\nselect = "maxboxacc_v2"\n\n[axes]\n'
                    '"acol.threshold" = [0.5, 0.7]\n"acol.loss_weight_b" = [0.5, 1.0]\n')
    return path


def test_grid_killed_mid_way_completes_and_matches_the_runs(tiny_overrides, tmp_path, capsys):
    grid = write_grid(tmp_path)
    runs = tmp_path / "ablation_runs"
    args = [str(grid), "--runs-dir", str(runs), *[f"--override={o}" for o in tiny_overrides]]
    folder = runs / "ablations" / "grid"
    # start the grid in a subprocess and SIGKILL it (and its training child) once a run has finished
    process = subprocess.Popen([sys.executable, "-m", "acol.ablate", *args], cwd=ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(folder.glob("*/results.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in folder.glob("*/results.json")}
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
    table = (folder / "results.md").read_text()
    assert f"**{chosen[0]}** (chosen on val)" in table and "acol.threshold=0.5,acol.loss_weight_b=0.5" in table


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


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "experiments" / "ablations").glob("*.toml")))
def test_every_shipped_ablation_loads_and_its_cells_configure(name):
    ablation = ablate.load_ablation(name)
    assert ablation.base.is_file() and len(ablation.cells) >= 2 and ablation.seeds == [0, 1, 2]
    for cell in ablation.cells:
        ablate.load_config(ablation.base, cell.overrides)
