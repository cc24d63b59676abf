"""Random search (`acol.search`, a mode of `acol.ablate`): the sampler, the spec's one-line errors, and a
tiny search of two methods, killed mid-way, finished, its val-chosen trials reported on test."""
import csv
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pytest

from acol import ablate, cli
from acol.config import ConfigError
from acol.search import distribution, sample_trials, search_space
from tests.test_ablate import kill_after_a_result

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"


def draws(key, spec, n=400):
    d = distribution(key, spec)
    return [d.draw(np.random.default_rng([7, i])) for i in range(n)]


def test_draws_stay_in_bounds_log_uniform_is_uniform_in_log_space_and_rounds_to_3_digits():
    uniform = draws("acol.threshold", {"uniform": [0.5, 0.9]})
    assert all(0.5 <= x <= 0.9 for x in uniform) and max(uniform) > 0.88 and min(uniform) < 0.52
    log = draws("optim.lr", {"log_uniform": [0.001, 1.0]})
    assert all(0.001 <= x <= 1.0 for x in log)
    # half of a log-uniform's mass lies below the geometric mean of its bounds; 3% of a uniform's
    assert 0.45 < np.mean(np.array(log) < math.sqrt(0.001)) < 0.55
    assert np.mean(np.array(draws("optim.lr", {"uniform": [0.001, 1.0]})) < math.sqrt(0.001)) < 0.06
    assert all(float(f"{x:.3g}") == x and isinstance(x, float) for x in uniform + log)


def test_integer_keys_and_int_uniform_draw_integers():
    grid = draws("has.grid_size", {"log_uniform": [4, 32]})  # has.grid_size is an int in the schema
    assert all(type(x) is int for x in grid) and min(grid) == 4 and max(grid) == 32
    assert sum(x < math.sqrt(4 * 32) for x in grid) > 0.4 * len(grid)
    ints = draws("optim.lr", {"int_uniform": [1, 3]})  # a float key may take integer draws
    assert set(ints) == {1, 2, 3} and all(type(x) is int for x in ints)
    assert set(draws("model.large_feature_map", {"choice": [True, False]})) == {True, False}


def test_trials_are_deterministic_per_group_and_key_and_distinct():
    space = search_space({"optim.lr": {"log_uniform": [0.001, 0.1]}, "acol.threshold": {"uniform": [0.5, 0.9]}})
    trials = sample_trials(space, 5, 0, "ACoL")
    assert trials == sample_trials(space, 5, 0, "ACoL")
    assert sample_trials(space, 8, 0, "ACoL")[:5] == trials          # a larger budget extends the same trials
    assert sample_trials(space, 5, 1, "ACoL") != trials               # the search seed
    assert [t["optim.lr"] for t in sample_trials(space, 5, 0, "CAM")] != [t["optim.lr"] for t in trials]
    more = search_space({"optim.lr": {"log_uniform": [0.001, 0.1]}, "acol.threshold": {"uniform": [0.5, 0.9]},
                         "acol.fuse": {"choice": ["max", "mean"]}})
    assert [{k: t[k] for k in space} for t in sample_trials(more, 5, 0, "ACoL")] == trials  # a new key: no other draw moves
    # duplicates are drawn again: 3 trials of a 3-point space are its 3 points; a 4th does not exist
    small = search_space({"has.grid_size": {"int_uniform": [1, 3]}})
    assert sorted(t["has.grid_size"] for t in sample_trials(small, 3, 0, "HaS")) == [1, 2, 3]
    with pytest.raises(ConfigError, match="fewer than 4 distinct configurations"):
        sample_trials(small, 4, 0, "HaS")


def write_search(path: Path, groups: dict[str, tuple[str, str]], top: str = "trials = 2\n") -> Path:
    """A file of groups {name: (base file, [groups.search] body)}."""
    text = f"seeds = [0, 1]\nsearch_seeds = [0]\n{top}"
    for name, (base, body) in groups.items():
        text += f'\n[[groups]]\nname = "{name}"\nbase = "{EXPERIMENTS / base}"\n[groups.search]\n{body}\n'
    path.write_text(text)
    return path


def test_adding_a_group_changes_no_other_groups_trials(tmp_path):
    acol = ("synthetic_acol.toml", '"acol.threshold" = { uniform = [0.5, 0.9] }')
    has = ("synthetic_has.toml", '"has.drop_rate" = { uniform = [0.2, 0.8] }')
    alone = ablate.load_ablation(str(write_search(tmp_path / "a.toml", {"ACoL": acol})))
    both = ablate.load_ablation(str(write_search(tmp_path / "b.toml", {"HaS": has, "ACoL": acol})))
    assert [c.settings for c in alone.groups[0].cells] == [c.settings for c in both.groups[1].cells]
    assert [c.run_stem for c in both.groups[1].cells] == [f"acol.threshold={c.settings['acol.threshold']}"
                                                         for c in both.groups[1].cells]


@pytest.mark.parametrize("body, top, message", [
    ('"optim.lr" = { normal = [0, 1] }', "trials = 2\n", "groups[0].search: optim.lr must be one of { uniform"),
    ('"optim.lr" = { uniform = [0.9, 0.5] }', "trials = 2\n", "optim.lr: uniform must be [low, high] with finite numbers low < high"),
    ('"optim.lr" = { log_uniform = [0, 0.1] }', "trials = 2\n", "optim.lr: log_uniform needs bounds > 0"),
    ('"acol.treshold" = { uniform = [0.5, 0.9] }', "trials = 2\n", "unknown key 'acol.treshold' (valid keys here: acol.threshold"),
    ('"model.large_feature_map" = { uniform = [0, 1] }', "trials = 2\n", "model.large_feature_map is bool: uniform draws numbers (use choice)"),
    ('"optim.lr" = { choice = [0.01, "fast"] }', "trials = 2\n", "optim.lr must be float, got 'fast'"),
    ('"has.grid_size" = { uniform = [4.5, 8] }', "trials = 2\n", "has.grid_size: uniform draws integers (the key is int)"),
    ('"has.grid_size" = { uniform = [4, 8] }', "", "groups[0].search needs trials"),
    ('"has.grid_size" = { uniform = [4, 8] }', "trials = 0\n", "trials must be a positive integer; got 0"),
    ('"has.grid_size" = { uniform = [4, 8] }\n[groups.axes]\n"has.drop_rate" = [0.5]', "trials = 2\n",
     "groups[0].search and groups[0].axes exclude each other"),
])
def test_bad_search_specs_are_one_line_naming_the_file_and_key(tmp_path, body, top, message):
    path = write_search(tmp_path / "bad.toml", {"HaS": ("synthetic_has.toml", body)}, top)
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        ablate.load_ablation(str(path))
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


def test_search_files_check_groups_bounds_and_overrides(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(f'trials = 2\n[[groups]]\nname = "CAM"\nbase = "{EXPERIMENTS / "synthetic_cam.toml"}"\ntrials = 3\n')
    with pytest.raises(ConfigError, match=r"groups\[0\]: trials and search_seed are set once, at the top level"):
        ablate.load_ablation(str(path))
    path.write_text(f'trials = 2\n[[groups]]\nname = "CAM"\nbase = "{EXPERIMENTS / "synthetic_cam.toml"}"\n'
                    '[groups.axes]\n"optim.lr" = [0.1, 0.01]\n')
    with pytest.raises(ConfigError, match=r"groups\[0\].search is missing: a file with trials searches every group"):
        ablate.load_ablation(str(path))
    path.write_text(f'trials = 2\n[[groups]]\nname = "CAM"\nbase = "{EXPERIMENTS / "synthetic_cam.toml"}"\n'
                    'set = { "optim.lr" = 0.1 }\n[groups.search]\n"optim.lr" = { uniform = [0.1, 0.2] }\n')
    with pytest.raises(ConfigError, match=r"groups\[0\].set and groups\[0\].search both give 'optim.lr'"):
        ablate.load_ablation(str(path))
    # a bound the config refuses is found before anything trains, whichever trials were drawn
    write_search(path, {"ACoL": ("synthetic_acol.toml", '"acol.threshold" = { uniform = [0.5, 1.5] }')})
    with pytest.raises(cli.UserError):
        ablate.main([str(path), "--runs-dir", str(tmp_path / "runs")])
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"ablation error: {path}: groups 'ACoL' search: acol.threshold = 1.5: ") and "\n" not in line
    # an override of a searched key would make every trial the same run
    write_search(path, {"ACoL": ("synthetic_acol.toml", '"acol.threshold" = { uniform = [0.5, 0.9] }')})
    with pytest.raises(cli.UserError):
        ablate.main([str(path), "--runs-dir", str(tmp_path / "runs"), "acol.threshold=0.6"])
    assert "override 'acol.threshold=0.6' sets a key of groups 'ACoL' search" in capsys.readouterr().err


def test_shipped_searches_give_every_method_the_same_budget():
    methods = ablate.load_ablation("methods_search")
    assert [g.name for g in methods.groups] == ["CAM", "HaS", "ACoL", "SPG", "ADL", "CutMix", "FSL", "BAS", "DA-WSOL"]
    assert methods.baselines == ["centre", "brightness"]
    assert methods.trials == 8 and methods.search_seeds == [0] and methods.seeds == [0, 1, 2]
    for group in methods.groups:
        assert len(group.cells) == 8 and "optim.lr" in group.space and (group.name in ("CAM", "FSL") or len(group.space) > 1)
        assert {ablate.load_config(group.base, c.overrides).model.name for c in group.cells} == {
            group.name.lower().replace("-", "")}
    grid_sizes = [c.settings["has.grid_size"] for c in methods.groups[1].cells]
    assert all(type(x) is int for x in grid_sizes)


@pytest.mark.slow  # six tiny training runs in subprocesses: about 2 minutes on a busy 2-core machine
def test_a_search_killed_mid_way_finishes_without_retraining_and_reports_the_chosen_trials(tiny_overrides, tmp_path, capsys):
    overrides = [o for o in tiny_overrides if not o.startswith("optim.lr=")]  # the searched key
    path = write_search(tmp_path / "duel.toml", {
        "CAM": ("synthetic_cam.toml", '"optim.lr" = { log_uniform = [0.001, 0.05] }'),
        "ACoL": ("synthetic_acol.toml", '"acol.threshold" = { uniform = [0.5, 0.9] }'),
    })
    runs = tmp_path / "ablation_runs"
    args = [str(path), "--runs-dir", str(runs), "--num-images", "2", *[f"--override={o}" for o in overrides]]
    folder = runs / "ablations" / "duel"
    ablation = ablate.load_ablation(str(path))
    trials = {g.name: [c.run_stem for c in g.cells] for g in ablation.groups}
    ablate.main([*args, "--dry-run"])
    listed = capsys.readouterr().out
    assert all(f"todo  {g}  {stem}  seed 0" in listed for g, stems in trials.items() for stem in stems)

    finished = kill_after_a_result(args, folder, "*/*/results.json")
    assert len(finished) == 1

    ablate.main(args)  # the same command finishes the search and the retraining
    for run, mtime in finished.items():  # the trial finished before the kill was not trained again
        assert (run / "results.json").stat().st_mtime_ns == mtime
    val = {g: {s: ablate.last_records(folder / g / f"{s}-s0")["val"]["maxboxacc_v2"] for s in stems}
           for g, stems in trials.items()}
    chosen = {g: max(v, key=v.get) for g, v in val.items()}
    trained = sorted(str(p.parent.relative_to(folder)) for p in folder.glob("*/*/results.json"))
    assert trained == sorted([f"{g}/{s}-s0" for g, stems in trials.items() for s in stems]
                             + [f"{g}/{chosen[g]}-s1" for g in chosen])
    with open(folder / "results.csv") as f:
        rows = list(csv.reader(f))
    for group in trials:
        row = dict(zip(rows[0], next(r for r in rows if r and r[0] == group)))
        tests = [ablate.last_records(folder / group / f"{chosen[group]}-s{s}")["test"]["maxboxacc_v2"] for s in (0, 1)]
        assert ablate._safe(row["chosen"]) == chosen[group] and row["n"] == "2"
        assert float(row["MaxBoxAccV2 mean"]) == pytest.approx(statistics.mean(tests), abs=1e-4)
    assert "random search: 2 trials per group (search seed 0)" in (folder / "results.md").read_text()
    capsys.readouterr()
    ablate.main(args)  # again: nothing to train
    assert "training" not in capsys.readouterr().out
