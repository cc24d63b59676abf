"""Ablations: a family of training runs that differ in one factor, over seeds, in one table.

    python -m acol.ablate NAME [--seeds 0,1,2] [--base CONFIG] [--jobs N] [--runs-dir runs]
                               [--dry-run] [key=value ...]

NAME is `experiments/ablations/NAME.toml` of acol or the path of such a file (TOML data):

    description = "ACoL erase threshold"
    base = "../synthetic_acol.toml"   # the config of every cell, relative to this file, or acol:NAME
                                       # (--base replaces it)
    seeds = [0, 1, 2]                  # --seeds replaces it
    select = "maxboxacc_v2"            # the val metric (higher is better) that chooses the cell

    [axes]                             # a grid: one cell per combination of these dotted keys' values
    "acol.threshold" = [0.5, 0.6, 0.7]

    [[cells]]                          # explicit cells, after the grid's
    name = "Grad-CAM"                  # the table's label (default: its settings)
    set = { "model.name" = "cam" }     # config overrides, as on the command line (default: none)
    localizer = "gradcam"              # evaluate with this localizer, not the model's own map (default: none)

Each cell x seed is one `python -m acol.train` run in `<runs-dir>/ablations/<NAME>/<cell>-s<seed>`
(the cell's settings spelled out, so run names read like the table, also in TensorBoard's HParams
dashboard). A run with results.json is finished and skipped; a run folder without it was interrupted
and is resumed (`--resume auto`). `--jobs N` trains N runs at a time (each process gets 1/N of the CPU
threads, or one GPU of those visible, round robin). Cells that name a localizer reuse the run of the
same settings and evaluate it on val and test (cached in the run folder as `ablate_<localizer>.json`).

The summary `<runs-dir>/ablations/<NAME>/results.md` and `.csv` hold, per cell, the mean ± std over
seeds of the val metrics and the val `select` difference from the chosen cell (the one with the best
mean val `select`) with its 95% paired bootstrap interval over the val images and seeds (per-image val
records cached in each run folder as `ablate_<localizer or own>_val.npz`); test numbers are reported
for the chosen cell only (test never chooses anything).

A comparison of several methods, each tuned on val with the same budget, is a file of groups:

    search_seeds = [0]                 # the cells are compared on these seeds (default: all seeds);
                                       # the chosen cell of each group then runs with every seed
    [[groups]]
    name = "CAM"                       # the row's label; runs in <runs-dir>/ablations/<NAME>/<group>/
    base = "../synthetic_cam.toml"
    [groups.axes]                      # and/or [[groups.cells]], as above
    "optim.lr" = [0.005, 0.01]

Its summary adds one row per group (the chosen cell; val `select` over the search seeds; test mean ±
std over all seeds; the test difference from the first group with its paired bootstrap interval over
test images and seeds, `acol.evaluation.bootstrap`, from per-image test records cached in each run
folder as `ablate_<localizer or own>_test.npz`) before each group's table, and `grid.png`: one row of maps per group (the chosen
cell's run of the first seed, the model's own map, its predicted box at val's threshold in red, GT
in green) on the same test images.

With `baselines = ["centre", "brightness"]` at the top level of a file with groups, the summary adds a
row per class-agnostic baseline map (`acol.evaluation.baselines`: no model, one evaluation on the first
group's first final run's data set, cached in `<runs-dir>/ablations/<NAME>/baselines/`), with its
test difference from the first group.

A random search (wsolevaluation's protocol: every method the same number of trials, chosen on val)
replaces a group's axes and cells by trials drawn from a [search] table (`acol/search.py`):

    trials = 8                         # the budget: the number of cells of every group (top level only)
    search_seed = 0                    # the sampler's seed (default 0)
    [[groups]]
    name = "ACoL"
    base = "../synthetic_acol.toml"
    set = { "model.large_feature_map" = true }           # fixed overrides of every cell (any group)
    [groups.search]                                      # per dotted key a distribution
    "optim.lr" = { log_uniform = [0.002, 0.05] }
    "acol.threshold" = { uniform = [0.5, 0.9] }
    "model.cam_head" = { choice = ["fc", "conv1x1"] }    # also int_uniform = [low, high]

`--val-sizes K,...` adds the val-size study of the search's trials (`acol/valsize.py`: which trial k
val images per class choose, `--val-draws` subsets per k, from per-image val records cached in each run
folder as `ablate_own_val.npz`; no new runs) to `val_size.md`.

A file without groups has a top-level `[search]` (and `set`). The trials of a group depend only on
(search_seed, the group's name, the trial index, the key), so adding a group or a key, or raising
`trials`, changes no other group's trials and a re-run draws the same ones (its finished runs are
skipped); `--dry-run` lists them. In a file with `trials` every group is searched. The search's bounds
and choices must each give a valid config (checked before anything trains), and command-line
overrides may not set a searched key.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import itertools
import json
import os
import queue
import statistics
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from acol import cli
from acol.search import Distribution, sample_trials, search_space
from acol.cams import LOCALIZERS
from acol.config import ConfigError, load_config, locate, recipe_dir, toml_value
from acol.datasets.metadata import read_metadata
from acol.evaluation.baselines import BASELINE_MAPS
from acol.evaluation.bootstrap import Difference, aligned, paired_difference, run_records
from acol.evaluation.report import mean_std
from acol.valsize import study, table as valsize_table
from acol.visualize import heatmap_rows, labelled_rows

ABLATIONS = recipe_dir() / "ablations"
TOP_KEYS = {"description", "base", "seeds", "search_seeds", "select", "axes", "cells", "groups", "set", "search",
            "trials", "search_seed", "baselines"}
GROUP_KEYS = {"name", "base", "axes", "cells", "set", "search"}
CELL_KEYS = {"name", "set", "localizer"}
VAL_COLUMNS = [("top1_cls", "val top-1 cls"), ("gt_known_loc@oracle", "val GT-known (val τ)"),
               ("maxboxacc_v2", "val MaxBoxAccV2"), ("pxap", "val PxAP")]
TEST_COLUMNS = [("top1_cls", "test top-1 cls"), ("gt_known_loc@val", "test GT-known @val τ"),
                ("top1_loc@val", "test top-1 loc @val τ"), ("maxboxacc_v2", "test MaxBoxAccV2"), ("pxap", "test PxAP")]


def _spelled(settings: dict) -> str:
    """`key=value,...` with TOML's spelling of booleans; "base" for no settings."""
    text = (f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in settings.items())
    return ",".join(text) or "base"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_.,=+-" else "_" for c in text)


@dataclass
class Cell:
    label: str
    settings: dict = field(default_factory=dict)  # dotted key -> value
    localizer: str | None = None

    @property
    def overrides(self) -> list[str]:
        return [f"{key}={toml_value(value)}" for key, value in self.settings.items()]

    @property
    def run_stem(self) -> str:
        """The training run's name without the seed: its settings, filesystem-safe."""
        return _safe(_spelled(self.settings))


@dataclass
class Group:
    """Cells over one base config; a file without [[groups]] is one group without a name."""

    name: str
    base: Path
    cells: list[Cell]
    overrides: list[str] = field(default_factory=list)  # the group's `set`, before each cell's settings
    space: dict[str, Distribution] = field(default_factory=dict)  # its [search]; its cells are trials


@dataclass
class Ablation:
    path: Path
    description: str
    seeds: list[int]
    select: str
    groups: list[Group]
    search_seeds: list[int] | None = None  # None: the cells are compared over all seeds
    trials: int = 0                        # a random search's budget per group (0: no search)
    search_seed: int = 0
    baselines: list[str] = field(default_factory=list)  # class-agnostic baseline maps shown as method rows

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def grouped(self) -> bool:
        """A file of [[groups]] (every group has a name) rather than one unnamed group."""
        return bool(self.groups[0].name)


def _error(path: Path, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def _cells(table: dict, path: Path, where: str) -> list[Cell]:
    """The cells of a file's (or a group's) [axes] grid and [[cells]] list."""
    cells = []
    axes = table.get("axes", {})
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise _error(path, f"{where}axes.{key} must be a non-empty list of values")
    for combination in itertools.product(*axes.values()) if axes else []:
        settings = dict(zip(axes, combination))
        cells.append(Cell(_spelled(settings), settings))
    for i, cell in enumerate(table.get("cells", [])):
        unknown = set(cell) - CELL_KEYS
        if unknown:
            raise _error(path, f"{where}cells[{i}]: unknown key {sorted(unknown)[0]!r} "
                               f"(valid: {', '.join(sorted(CELL_KEYS))})")
        localizer = cell.get("localizer")
        if localizer is not None and localizer not in LOCALIZERS:
            raise _error(path, f"{where}cells[{i}]: unknown localizer {localizer!r} "
                               f"(valid: {', '.join(LOCALIZERS.names())})")
        settings = dict(cell.get("set", {}))
        default = _spelled(settings)
        cells.append(Cell(cell.get("name", default + (f" + {localizer}" if localizer else "")), settings, localizer))
    if not cells:
        raise _error(path, f"no cells: give {where}axes or {where}cells")
    labels = [c.label for c in cells]
    if len(set(labels)) != len(labels):
        raise _error(path, f"{where}: two cells share the label {next(x for x in labels if labels.count(x) > 1)!r}")
    return cells


def _group(table: dict, path: Path, where: str, name: str, budget: tuple[int, int] | None) -> Group:
    """The group of a file's top level or of one [[groups]] entry: its base, its `set`, and its cells (the
    axes and cells, or `budget` = (trials, search seed) draws of its [search])."""
    base = locate(table["base"], path.parent).resolve()
    fixed = table.get("set", {})
    if not isinstance(fixed, dict):
        raise _error(path, f"{where}set must be a table of config keys and values; got {fixed!r}")
    overrides = [f"{key}={toml_value(value)}" for key, value in fixed.items()]
    if "search" not in table:
        if budget is not None:
            raise _error(path, f"{where}search is missing: a file with trials searches every group (the same budget)")
        return Group(name, base, _cells(table, path, where), overrides)
    if budget is None:
        raise _error(path, f"{where}search needs trials (the budget of every group) at the top level")
    mixed = sorted(set(table) & {"axes", "cells"})
    if mixed:
        raise _error(path, f"{where}search and {where}{mixed[0]} exclude each other (the trials are the cells)")
    try:
        space = search_space(table["search"])
        cells = [Cell(_spelled(settings), settings) for settings in sample_trials(space, *budget, name)]
    except ConfigError as e:
        raise _error(path, f"{where}search: {e}") from None
    both = sorted(set(space) & set(fixed))
    if both:
        raise _error(path, f"{where}set and {where}search both give {both[0]!r}")
    return Group(name, base, cells, overrides, space)


def _budget(data: dict, path: Path) -> tuple[int, int] | None:
    """(trials, search seed) of a file with `trials`, else None."""
    if "trials" not in data:
        if "search_seed" in data:
            raise _error(path, "search_seed needs trials (the budget of a random search)")
        return None
    trials, seed = data["trials"], data.get("search_seed", 0)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise _error(path, f"trials must be a positive integer; got {trials!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise _error(path, f"search_seed must be an integer >= 0; got {seed!r}")
    return trials, seed


def _seeds(data: dict, key: str, path: Path) -> list[int]:
    seeds = data[key]
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds) or not seeds:
        raise _error(path, f"{key} must be a non-empty list of integers")
    return seeds


def known_ablations() -> str:
    return ", ".join(sorted(p.stem for p in ABLATIONS.glob("*.toml")))


def load_ablation(name_or_path: str) -> Ablation:
    """Read and check an ablation file (unknown keys and bad values name the file and key)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = ABLATIONS / f"{name_or_path}.toml"
    if not path.is_file():
        raise ConfigError(f"ablation file not found: {path} (known ablations: {known_ablations()})")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise _error(path, f"invalid TOML: {e}") from None
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise _error(path, f"unknown key {sorted(unknown)[0]!r} (valid: {', '.join(sorted(TOP_KEYS))})")
    budget = _budget(data, path)
    if "groups" in data:
        mixed = set(data) & {"base", "axes", "cells", "set", "search"}
        if mixed:
            raise _error(path, f"{sorted(mixed)[0]!r} belongs inside each [[groups]] entry of a file with groups")
        groups = []
        for i, table in enumerate(data["groups"]):
            if {"trials", "search_seed"} & set(table):
                raise _error(path, f"groups[{i}]: trials and search_seed are set once, at the top level "
                                   "(the same budget for every group)")
            unknown = set(table) - GROUP_KEYS
            if unknown:
                raise _error(path, f"groups[{i}]: unknown key {sorted(unknown)[0]!r} "
                                   f"(valid: {', '.join(sorted(GROUP_KEYS))})")
            if "name" not in table or "base" not in table:
                raise _error(path, f"groups[{i}]: a group needs a name and a base")
            groups.append(_group(table, path, f"groups[{i}].", table["name"], budget))
    else:
        if "base" not in data:
            raise _error(path, "missing key 'base' (the config every cell starts from)")
        groups = [_group(data, path, "", "", budget)]
    seeds = _seeds(data, "seeds", path) if "seeds" in data else [0]
    search_seeds = _seeds(data, "search_seeds", path) if "search_seeds" in data else None
    if search_seeds is not None and not set(search_seeds) <= set(seeds):
        raise _error(path, "search_seeds must be some of the seeds")
    return Ablation(path, data.get("description", ""), seeds, data.get("select", "maxboxacc_v2"), groups, search_seeds,
                    *(budget or (0, 0)), _baselines(data, path))


def _baselines(data: dict, path: Path) -> list[str]:
    """The file's `baselines`: names of baseline maps (`acol.evaluation.baselines`), rows of a method table."""
    names = data.get("baselines", [])
    valid = ", ".join(BASELINE_MAPS.names_in_order())
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _error(path, f"baselines must be a list of baseline map names ({valid}); got {names!r}")
    for name in names:
        if name not in BASELINE_MAPS:
            raise _error(path, f"baselines: unknown baseline map {name!r} (valid: {valid})")
    if names and "groups" not in data:
        raise _error(path, "baselines are rows of the method table of a file with [[groups]]; this file has none")
    return names


@dataclass
class Job:
    group: Group
    cell: Cell
    seed: int
    run_dir: Path

    @property
    def done(self) -> bool:
        return (self.run_dir / "results.json").is_file()

    @property
    def console(self) -> Path:
        """The training process's console output, next to its run folder."""
        return self.run_dir.parent / f"{self.run_dir.name}.out"


def plan(ablation: Ablation, runs_dir: Path, seeds: list[int], cells: dict[str, list[Cell]] | None = None) -> list[Job]:
    """One job per group x cell x seed (`cells`: a subset per group name; cells with a localizer share
    the run of their settings)."""
    folder = runs_dir / "ablations" / ablation.name
    return [Job(group, cell, seed, folder / _safe(group.name) / f"{cell.run_stem}-s{seed}")
            for group in ablation.groups for cell in (cells[group.name] if cells else group.cells) for seed in seeds]


def train(job: Job, overrides: list[str], env: dict) -> int:
    """Train (or resume) one run in a subprocess; its console output goes to `job.console`."""
    command = [sys.executable, "-m", "acol.train", "--config", str(job.group.base), *job.group.overrides,
               *job.cell.overrides, *overrides,
               f"train.seed={job.seed}", f"log.runs_dir={job.run_dir.parent}", "--name", job.run_dir.name]
    if job.run_dir.exists():
        command += ["--resume", "auto"]
    job.run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(job.console, "a") as out:
        return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode


def run_all(jobs: list[Job], overrides: list[str], workers: int) -> list[Job]:
    """Train the unfinished runs, `workers` at a time; returns the jobs that failed."""
    todo = list({job.run_dir: job for job in jobs if not job.done}.values())
    gpus = torch.cuda.device_count()
    slots: queue.Queue = queue.Queue()
    for slot in range(workers):
        slots.put(slot)
    threads = max(1, (os.cpu_count() or 1) // workers)

    def one(job: Job) -> tuple[Job, int]:
        slot = slots.get()
        try:
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
            print(f"training {job.run_dir}", flush=True)
            return job, train(job, overrides, env)
        finally:
            slots.put(slot)

    failed = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for job, code in pool.map(one, todo):
            if code != 0:
                print(f"FAILED ({code}): {job.run_dir} (see {job.console})", flush=True)
                failed.append(job)
    return failed


def last_records(run_dir: Path) -> dict[str, dict]:
    """The final val and test records of a run's metrics.jsonl."""
    records = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        records[record["split"]] = record
    return records


def _per_image_cache(job: Job, split: str = "test") -> Path:
    return job.run_dir / f"ablate_{job.cell.localizer or 'own'}_{split}.npz"


def _evaluate_localizer(job: Job) -> None:
    """Evaluate a finished job's model with the cell's localizer: its metrics to `ablate_<localizer>.json`,
    its per-image test records to `_per_image_cache`."""
    from acol.compare import evaluate_methods  # loads the model: only where a cell needs it

    evaluated = evaluate_methods(job.run_dir, [job.cell.localizer], "gt", "last", [])
    if not evaluated:
        raise ConfigError(f"localizer {job.cell.localizer!r} does not apply to the model of {job.run_dir}")
    (record, per_image), = evaluated
    (job.run_dir / f"ablate_{job.cell.localizer}.json").write_text(json.dumps({"val": record["val"],
                                                                              "test": record["test"]}))
    np.savez_compressed(_per_image_cache(job), **per_image)


def cell_metrics(job: Job) -> dict[str, dict]:
    """{"val": ..., "test": ...} of one finished job: the model's own map, or the cell's localizer."""
    if job.cell.localizer is None:
        return last_records(job.run_dir)
    cache = job.run_dir / f"ablate_{job.cell.localizer}.json"
    if not cache.is_file():
        _evaluate_localizer(job)
    return json.loads(cache.read_text())


def split_records(job: Job, split: str = "test") -> dict:
    """A finished job's per-image records (`acol.evaluation.bootstrap`) of the map its metrics are of
    (`cell_metrics`) on the run's own `split` (test: at the run's val threshold), with its image ids;
    computed once, then read from `_per_image_cache`."""
    cache = _per_image_cache(job, split)
    if not cache.is_file() and job.cell.localizer is not None and split == "test":
        _evaluate_localizer(job)
    elif not cache.is_file():  # the model's own map (as the run's final evaluation) or the cell's localizer
        from acol.cams import build_localizer
        from acol.datasets.dataset import build_dataset, build_loader
        from acol.engine import accumulate_split
        from acol.evaluate import load_run

        cfg, model, device, dtype = load_run(job.run_dir)
        loader = build_loader(cfg, build_dataset(cfg, split, train=False), train=False)
        localizer = build_localizer(job.cell.localizer, "gt") if job.cell.localizer else None
        boxes, masks = accumulate_split(model, loader, device, dtype, cfg, localizer=localizer, per_image=True,
                                        desc=" ".join(filter(None, (job.run_dir.name, job.cell.localizer, split))))
        threshold = last_records(job.run_dir)["test"].get("val_cam_threshold") if split == "test" else None
        np.savez_compressed(cache, **run_records(boxes, masks, threshold, loader.dataset.meta.image_ids))
    return dict(np.load(cache))


def choose(group: Group, jobs: list[Job], select: str) -> Cell:
    """The group's cell with the best mean val `select` over its jobs."""
    means = {}
    for cell in group.cells:
        values = [cell_metrics(j)["val"][select] for j in jobs if j.group is group and j.cell is cell]
        means[cell.label] = statistics.mean(values)
    best = max(means, key=means.get)
    return next(c for c in group.cells if c.label == best)


def _numbers(values: list[float] | None) -> list[str]:
    if values is None:
        return ["", ""]
    return [f"{statistics.mean(values):.4f}", f"{statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"]


def val_differences(group: Group, search: list[Job], chosen: Cell, select: str) -> dict[str, Difference | None]:
    """Per cell label, its val `select` minus the chosen cell's, with the 95% paired bootstrap interval
    over the val images and both cells' search seeds (None for runs validated on different images, or a
    metric the records lack). Two cells of the same runs (own map and a localizer) are paired by run."""
    def val_jobs(cell: Cell) -> list[Job]:
        return [j for j in search if j.group is group and j.cell is cell]

    reference = val_jobs(chosen)
    out = {}
    for cell in group.cells:
        jobs = val_jobs(cell)
        both = aligned([split_records(j, "val") for j in jobs + reference])
        same_runs = [j.run_dir for j in jobs] == [j.run_dir for j in reference]
        out[cell.label] = None if both is None else paired_difference(
            both[:len(jobs)], both[len(jobs):], [select], paired_runs=same_runs).get(select)
    return out


def summarize(group: Group, search: list[Job], final: list[Job], chosen: Cell,
              select: str) -> tuple[str, list[list[str]]]:
    """(markdown table, CSV rows) of one group: val metrics of every cell over the search jobs and its val
    `select` difference from the chosen cell (`val_differences`), test metrics of the chosen cell over
    the final jobs."""
    per_cell = {cell.label: [cell_metrics(j) for j in search if j.group is group and j.cell is cell]
                for cell in group.cells}
    tested = [cell_metrics(j) for j in final if j.group is group]
    deltas = val_differences(group, search, chosen, select)
    val_cols = [c for c in VAL_COLUMNS if all(c[0] in m["val"] for runs in per_cell.values() for m in runs)]
    test_cols = [c for c in TEST_COLUMNS if all(c[0] in m["test"] for m in tested)]
    delta_title = f"val {dict(VAL_COLUMNS).get(select, select).removeprefix('val ')} Δ vs chosen"
    lines = [f"| cell | n | {' | '.join(t for _, t in val_cols)} | {delta_title} | {' | '.join(t for _, t in test_cols)} |",
             "|---|---:|" + "---:|" * (len(val_cols) + 1 + len(test_cols))]
    rows = [["cell", "n", "chosen"] + [f"{t} {s}" for _, t in val_cols + test_cols for s in ("mean", "std")]
            + [f"{delta_title}{end}" for end in ("", " low", " high")]]
    for label, runs in per_cell.items():
        is_chosen = label == chosen.label
        val = [[m["val"][k] for m in runs] for k, _ in val_cols]
        test = [[m["test"][k] for m in tested] for k, _ in test_cols] if is_chosen else [None] * len(test_cols)
        delta = "reference" if is_chosen and deltas[label] else deltas[label].text() if deltas[label] else "–"
        cells = [mean_std(v) for v in val] + [delta] + [mean_std(v) if v else "–" for v in test]
        name = f"**{label}** (chosen on val)" if is_chosen else label
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
        rows.append([label, str(len(runs)), "yes" if is_chosen else ""] + [x for v in val + test for x in _numbers(v)]
                    + [f"{getattr(deltas[label], end):.4f}" if deltas[label] else "" for end in ("difference", "low", "high")])
    return "\n".join(lines), rows


GROUP_COLUMNS = [("test", "top1_cls", "top-1 cls"), ("test", "gt_known_loc@val", "GT-known @val τ"),
                 ("test", "top1_loc@val", "top-1 loc @val τ"), ("test", "maxboxacc_v2", "MaxBoxAccV2"),
                 ("test", "pxap", "PxAP")]


def summarize_groups(ablation: Ablation, search: list[Job], final: list[Job], chosen: dict[str, Cell],
                     overrides: list[str] = ()) -> tuple[str, list[list[str]]]:
    """(markdown table, CSV rows): per group the chosen cell, its val `select` over the search seeds,
    its test metrics (mean ± std over the seeds) and their differences from the first group's, with
    95% paired bootstrap intervals (1000 replicates over the test images and both groups' seeds); then
    a row per baseline map of `ablation.baselines` (`baseline_rows`)."""
    reference = ablation.groups[0]
    records = {group.name: [split_records(j) for j in final if j.group is group] for group in ablation.groups}

    def reported(group: Group) -> set[str]:  # the metrics every run of the group reports (FSL: no top-1)
        tested = [cell_metrics(j)["test"] for j in final if j.group is group]
        return {key for _, key, _ in GROUP_COLUMNS if all(key in m for m in tested)}
    lines = [f"| method | chosen on val | val {ablation.select} | n | "
             + " | ".join(t for _, _, t in GROUP_COLUMNS)
             + "".join(f" | {t} Δ vs {reference.name}" for _, _, t in GROUP_COLUMNS) + " |",
             "|---|---|---:|---:|" + "---:|" * 2 * len(GROUP_COLUMNS)]
    rows = [["group", "chosen", f"val {ablation.select} mean", "n"]
            + [f"{t} {s}" for _, _, t in GROUP_COLUMNS for s in ("mean", "std")]
            + [f"{t} Δ{end}" for _, _, t in GROUP_COLUMNS for end in ("", " low", " high")]]
    for group in ablation.groups:
        cell = chosen[group.name]
        val = [cell_metrics(j)["val"][ablation.select] for j in search if j.group is group and j.cell is cell]
        tested = [cell_metrics(j) for j in final if j.group is group]
        columns = [[m[split][key] for m in tested] if all(key in m[split] for m in tested) else None
                   for split, key, _ in GROUP_COLUMNS]
        both = reported(group) & reported(reference)
        found = paired_difference(records[group.name], records[reference.name], [k for _, k, _ in GROUP_COLUMNS
                                                                                 if k in both])
        deltas = [found.get(key) for _, key, _ in GROUP_COLUMNS]
        lines.append(f"| {group.name} | {cell.label} | {statistics.mean(val):.1f} | {len(tested)} | "
                     + " | ".join(mean_std(v) if v else "–" for v in columns) + " | "
                     + " | ".join("reference" if group is reference else d.text() if d else "–" for d in deltas) + " |")
        rows.append([group.name, cell.label, f"{statistics.mean(val):.4f}", str(len(tested))]
                    + [x for v in columns for x in _numbers(v)]
                    + [f"{getattr(d, end):.4f}" if d else "" for d in deltas for end in ("difference", "low", "high")])
    for name, record, found in baseline_rows(ablation, final, records[reference.name], reported(reference), overrides):
        columns = [[record["test"][key]] if key in record["test"] else None for _, key, _ in GROUP_COLUMNS]
        deltas = [found.get(key) for _, key, _ in GROUP_COLUMNS]
        val = record["val"].get(ablation.select)
        lines.append(f"| {name} (baseline) | none (no training) | {'–' if val is None else f'{val:.1f}'} | 1 | "
                     + " | ".join(mean_std(v) if v else "–" for v in columns) + " | "
                     + " | ".join(d.text() if d else "–" for d in deltas) + " |")
        rows.append([f"{name} (baseline)", "", "" if val is None else f"{val:.4f}", "1"]
                    + [x for v in columns for x in _numbers(v)]
                    + [f"{getattr(d, end):.4f}" if d else "" for d in deltas for end in ("difference", "low", "high")])
    return "\n".join(lines), rows


def baseline_rows(ablation: Ablation, final: list[Job], reference_records: list[dict], reported: set[str],
                  overrides: list[str]) -> list[tuple[str, dict, dict]]:
    """(name, {"val", "test"} metrics, {metric: Difference vs the reference group}) of each baseline map
    of `ablation.baselines`, evaluated once (no training, no seeds) on the data set, val subset and test
    split of the reference group's first final run (its config and `overrides`) and cached in
    `<runs-dir>/ablations/<NAME>/baselines/`; the differences are paired over the test images, the
    reference's runs resampled (`paired_difference`), in the `reported` metrics the baseline has too."""
    if not ablation.baselines:
        return []
    from acol.compare import baseline_results  # the evaluation stack: only for a file with baselines
    from acol.evaluate import run_config

    first = next(j for j in final if j.group is ablation.groups[0])
    cfg = run_config(first.run_dir, overrides)
    out = []
    for name, (record, per_image) in zip(ablation.baselines, baseline_results(ablation.baselines, cfg,
                                                                              first.run_dir.parents[1] / "baselines")):
        keys = [key for _, key, _ in GROUP_COLUMNS if key in reported and key in record["test"]]
        out.append((name, record, paired_difference([per_image], reference_records, keys)))
    return out


def val_size_study(ablation: Ablation, search: list[Job], overrides: list[str], ks: list[int], draws: int) -> str:
    """The val-size study (`acol.valsize`) of every group's trials, from their search runs: markdown."""
    studied, tests = {}, {}
    for group in ablation.groups:
        name = group.name or ablation.name
        cfg = load_config(group.base, group.overrides + overrides)
        if cfg.data.train_split == "val":
            studied[name] = "trains on val"
            continue
        jobs = [[j for j in search if j.group is group and j.cell is cell] for cell in group.cells]
        flat = aligned([split_records(j, "val") for js in jobs for j in js])
        meta = read_metadata(cfg.data.metadata_root, cfg.data.dataset, "val")
        if flat is None or flat[0]["image_ids"].tolist() != sorted(meta.image_ids):
            studied[name] = f"validates on part of val (data.val_per_class={cfg.data.val_per_class})"
            continue
        records = [[flat.pop(0) for _ in js] for js in jobs]
        tests[name] = [statistics.mean(cell_metrics(j)["test"][ablation.select] for j in js) for js in jobs]
        studied[name] = study(records, tests[name], meta, ks, draws, ablation.select, sorted(meta.image_ids))
    if not tests:
        raise ConfigError("no group to study: every group trains on val or validates on part of it")
    return valsize_table(studied, tests, ablation.select, draws)


def method_grid(ablation: Ablation, final: list[Job], overrides: list[str], num_images: int) -> np.ndarray:
    """Rows: the test images with their GT boxes, then each group's map (the chosen cell's first-seed
    run, the model's own map) with its predicted box at the run's val threshold; the same images (a
    group at another input size resized to the first's by `tile`)."""
    from acol.compare import test_maps  # loads models: only for a file with groups

    rows, labels = [], ["image"]
    for group in ablation.groups:
        job = next(j for j in final if j.group is group and j.seed == ablation.seeds[0])
        images, boxes, maps, cfg = test_maps(job.run_dir, None, "gt", "last", overrides, num_images)
        threshold = cell_metrics(job)["test"].get("val_cam_threshold", cfg.eval.fixed_threshold)
        tiles = heatmap_rows(images, maps, boxes, {name: threshold for name in maps})
        if not rows:
            rows.append([row[0] for row in tiles])
        rows.append([row[1] for row in tiles])
        labels.append(group.name)
    return labelled_rows(rows, labels)



def parse_args(argv=None) -> argparse.Namespace:
    p = cli.Parser(cli.prog("ablate"), __doc__, "erasing --seeds 0,1 --jobs 2 train.epochs=5")
    cli.add_overrides(p, "train.epochs=5", metavar="NAME | key=value",
                      help="NAME: a name in experiments/ablations/ or the path of an ablation file; then config "
                           "overrides for every run")
    p.add_argument("--seeds", type=_seed_list, help="comma-separated seeds (default: the file's)")
    p.add_argument("--base", help="another base config, e.g. experiments/cub_acol_vgg16.toml or "
                                  "acol:cub_acol_vgg16.toml (files without groups)")
    p.add_argument("--jobs", type=_positive_int, default=1, help="runs trained at the same time")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--num-images", type=int, default=8, help="columns of a group file's grid.png")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state, train nothing")
    p.add_argument("--val-sizes", type=_seed_list, metavar="K,K,...",
                   help="also the val-size study (acol/valsize.py): the trials chosen on K val images per class, "
                        "to val_size.md")
    p.add_argument("--val-draws", type=_positive_int, default=20, help="val subsets drawn per K (default 20)")
    args = p.parse_args(argv)
    if args.num_images < 1:
        p.error(f"argument --num-images: must be >= 1, got {args.num_images}")
    if args.val_sizes and min(args.val_sizes) < 1:
        p.error(f"argument --val-sizes: every K must be >= 1, got {min(args.val_sizes)}")
    names, args.override = cli.overrides_of(args, others=True)
    if len(names) != 1:
        p.error(f"give one ablation NAME (got {len(names)}: {' '.join(names) or 'none'}); known: {known_ablations()}")
    args.ablation = names[0]
    return args


def _seed_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _configure(args) -> Ablation:
    ablation = load_ablation(args.ablation)
    if args.seeds:
        ablation.seeds = args.seeds
        ablation.search_seeds = ablation.search_seeds and [s for s in ablation.search_seeds if s in ablation.seeds]
    if args.base:
        if ablation.grouped:
            raise ConfigError(f"--base applies to an ablation without groups; {args.ablation} has groups")
        ablation.groups[0].base = locate(args.base, Path.cwd()).resolve()
    for group in ablation.groups:  # every cell's config must load before anything trains
        where = f"groups {group.name!r} search" if group.name else "search"
        clash = [o for o in args.override if o.split("=", 1)[0].strip() in group.space]
        if clash:
            raise ConfigError(f"override {clash[0]!r} sets a key of {where} (the trials would all be the same)")
        load_config(group.base, group.overrides + args.override)
        for key, distribution in group.space.items():  # the bounds and choices, whichever trials are drawn
            for value in distribution.values:
                try:
                    load_config(group.base, group.overrides + [f"{key}={toml_value(value)}"] + args.override)
                except ConfigError as e:
                    raise _error(ablation.path, f"{where}: {key} = {toml_value(value)}: {e}") from None
        for cell in group.cells:
            cli.check_device(load_config(group.base, group.overrides + cell.overrides + args.override).train.device)
    return ablation


def main(argv=None) -> str:
    args = parse_args(argv)
    try:
        ablation = _configure(args)
    except (ConfigError, ValueError) as e:
        cli.fail(f"ablation error: {e}")
    search = plan(ablation, args.runs_dir, ablation.search_seeds or ablation.seeds)
    if args.dry_run:
        for job in search:
            print(f"{'done' if job.done else 'todo'}  {job.group.name}  {job.cell.label}  seed {job.seed}  {job.run_dir}")
        return ""
    workers = max(1, args.jobs)
    failed = run_all(search, args.override, workers)
    if failed:
        sys.exit(f"{len(failed)} run(s) failed; fix the cause and run the same command again to finish the grid")
    chosen = {group.name: choose(group, search, ablation.select) for group in ablation.groups}
    final = plan(ablation, args.runs_dir, ablation.seeds, {name: [cell] for name, cell in chosen.items()})
    failed = run_all(final, args.override, workers)
    if failed:
        sys.exit(f"{len(failed)} run(s) of the chosen cells failed; fix the cause and run the same command again")
    folder = args.runs_dir / "ablations" / ablation.name
    search_note = f"; cells compared on seeds {', '.join(map(str, ablation.search_seeds))}" if ablation.search_seeds else ""
    if ablation.trials:
        search_note += f"; random search: {ablation.trials} trials per group (search seed {ablation.search_seed})"
    header = (f"{ablation.description or ablation.name}: seeds {', '.join(map(str, ablation.seeds))}{search_note}; "
              f"mean ± std; chosen on val {ablation.select}")
    parts, rows = [header], []
    if ablation.grouped:
        table, rows = summarize_groups(ablation, search, final, chosen, args.override)
        parts.append(table)
        rows.append([])
    for group in ablation.groups:
        table, group_rows = summarize(group, search, final, chosen[group.name], ablation.select)
        title = f"{group.name}: base {group.base.name}" if group.name else f"base {group.base.name}"
        parts.append(f"{title}; chosen: {chosen[group.name].label}\n\n{table}")
        rows += [[group.name, *row] for row in group_rows] if group.name else group_rows
    text = "\n\n".join(parts)
    (folder / "results.md").write_text(text + "\n")
    with open(folder / "results.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    written = "results.md and results.csv"
    if ablation.grouped:
        grid = method_grid(ablation, final, args.override, args.num_images)
        cv2.imwrite(str(folder / "grid.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        written += ", grid.png"
    if args.val_sizes:
        try:
            study_text = val_size_study(ablation, search, args.override, args.val_sizes, args.val_draws)
        except ConfigError as e:
            cli.fail(f"val-size study: {e}")
        (folder / "val_size.md").write_text(study_text + "\n")
        text += "\n\n" + study_text
        written += ", val_size.md"
    print(f"\n{text}\nwritten to {folder}: {written}")
    return text


if __name__ == "__main__":
    cli.run_command(main)
