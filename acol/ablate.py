"""Ablations: a family of training runs that differ in one factor, over seeds, in one table.

    python -m acol.ablate NAME [--seeds 0,1,2] [--base CONFIG] [--jobs N] [--runs-dir runs]
                               [--override KEY=VALUE ...] [--dry-run]

NAME is `experiments/ablations/NAME.toml` or the path of such a file (TOML data):

    description = "ACoL erase threshold"
    base = "../synthetic_acol.toml"   # the config of every cell, relative to this file (--base replaces it)
    seeds = [0, 1, 2]                  # --seeds replaces it
    select = "maxboxacc_v2"            # the val metric (higher is better) that chooses the cell

    [axes]                             # a grid: one cell per combination of these dotted keys' values
    "acol.threshold" = [0.5, 0.6, 0.7]

    [[cells]]                          # explicit cells, after the grid's
    name = "Grad-CAM"                  # the table's label (default: its settings)
    set = { "model.name" = "cam" }     # config overrides (default: none)
    localizer = "gradcam"              # evaluate with this localizer, not the model's own map (default: none)

Each cell x seed is one `python -m acol.train` run in `<runs-dir>/ablations/<NAME>/<cell>-s<seed>`
(the cell's settings spelled out, so run names read like the table, also in TensorBoard's HParams
dashboard). A run with results.json is finished and skipped; a run folder without it was interrupted
and is resumed (`--resume auto`). `--jobs N` trains N runs at a time (each process gets 1/N of the CPU
threads, or one GPU of those visible, round robin). Cells that name a localizer reuse the run of the
same settings and evaluate it on val and test (cached in the run folder as `ablate_<localizer>.json`).

The summary `<runs-dir>/ablations/<NAME>/results.md` and `.csv` hold, per cell, the mean ± std over
seeds of the val metrics; the cell with the best mean val `select` is marked, and test numbers are
reported for that cell only (test never chooses anything).
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

import torch

from acol.cams import LOCALIZERS
from acol.config import ConfigError, load_config, toml_value
from acol.evaluation.report import mean_std

ABLATIONS = Path(__file__).resolve().parents[1] / "experiments" / "ablations"
TOP_KEYS = {"description", "base", "seeds", "select", "axes", "cells"}
CELL_KEYS = {"name", "set", "localizer"}
VAL_COLUMNS = [("top1_cls", "val top-1 cls"), ("gt_known_loc@oracle", "val GT-known (val τ)"),
               ("maxboxacc_v2", "val MaxBoxAccV2"), ("pxap", "val PxAP")]
TEST_COLUMNS = [("top1_cls", "test top-1 cls"), ("gt_known_loc@val", "test GT-known @val τ"),
                ("top1_loc@val", "test top-1 loc @val τ"), ("maxboxacc_v2", "test MaxBoxAccV2"), ("pxap", "test PxAP")]


def _spelled(settings: dict) -> str:
    """`key=value,...` with TOML's spelling of booleans; "base" for no settings."""
    text = (f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in settings.items())
    return ",".join(text) or "base"


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
        return "".join(c if c.isalnum() or c in "_.,=+-" else "_" for c in _spelled(self.settings))


@dataclass
class Ablation:
    name: str
    description: str
    base: Path
    seeds: list[int]
    select: str
    cells: list[Cell]


def _error(path: Path, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def load_ablation(name_or_path: str) -> Ablation:
    """Read and check an ablation file (unknown keys and bad values name the file and key)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = ABLATIONS / f"{name_or_path}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in ABLATIONS.glob("*.toml")))
        raise ConfigError(f"ablation file not found: {path} (known ablations: {known})")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise _error(path, f"invalid TOML: {e}") from None
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise _error(path, f"unknown key {sorted(unknown)[0]!r} (valid: {', '.join(sorted(TOP_KEYS))})")
    if "base" not in data:
        raise _error(path, "missing key 'base' (the config every cell starts from)")
    cells = []
    axes = data.get("axes", {})
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise _error(path, f"axes.{key} must be a non-empty list of values")
    for combination in itertools.product(*axes.values()) if axes else []:
        settings = dict(zip(axes, combination))
        cells.append(Cell(_spelled(settings), settings))
    for i, cell in enumerate(data.get("cells", [])):
        unknown = set(cell) - CELL_KEYS
        if unknown:
            raise _error(path, f"cells[{i}]: unknown key {sorted(unknown)[0]!r} (valid: {', '.join(sorted(CELL_KEYS))})")
        localizer = cell.get("localizer")
        if localizer is not None and localizer not in LOCALIZERS:
            raise _error(path, f"cells[{i}]: unknown localizer {localizer!r} (valid: {', '.join(LOCALIZERS.names())})")
        settings = dict(cell.get("set", {}))
        default = _spelled(settings)
        cells.append(Cell(cell.get("name", default + (f" + {localizer}" if localizer else "")), settings, localizer))
    if not cells:
        raise _error(path, "no cells: give [axes] or [[cells]]")
    labels = [c.label for c in cells]
    if len(set(labels)) != len(labels):
        raise _error(path, f"two cells share the label {next(x for x in labels if labels.count(x) > 1)!r}")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds) or not seeds:
        raise _error(path, "seeds must be a non-empty list of integers")
    return Ablation(path.stem, data.get("description", ""), (path.parent / data["base"]).resolve(), seeds,
                    data.get("select", "maxboxacc_v2"), cells)


@dataclass
class Job:
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


def plan(ablation: Ablation, runs_dir: Path) -> list[Job]:
    """One job per cell x seed (cells with a localizer share the run of their settings)."""
    folder = runs_dir / "ablations" / ablation.name
    return [Job(cell, seed, folder / f"{cell.run_stem}-s{seed}") for cell in ablation.cells for seed in ablation.seeds]


def train(job: Job, base: Path, overrides: list[str], env: dict) -> int:
    """Train (or resume) one run in a subprocess; its console output goes to `job.console`."""
    command = [sys.executable, "-m", "acol.train", "--config", str(base), *job.cell.overrides, *overrides,
               f"train.seed={job.seed}", f"log.runs_dir={job.run_dir.parent}", "--name", job.run_dir.name]
    if job.run_dir.exists():
        command += ["--resume", "auto"]
    job.run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(job.console, "a") as out:
        return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode


def run_all(jobs: list[Job], base: Path, overrides: list[str], workers: int) -> list[Job]:
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
            return job, train(job, base, overrides, env)
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


def cell_metrics(job: Job) -> dict[str, dict]:
    """{"val": ..., "test": ...} of one finished job: the model's own map, or the cell's localizer."""
    if job.cell.localizer is None:
        return last_records(job.run_dir)
    cache = job.run_dir / f"ablate_{job.cell.localizer}.json"
    if not cache.is_file():
        from acol.compare import evaluate_methods  # loads the model: only where a cell needs it

        records = evaluate_methods(job.run_dir, [job.cell.localizer], "gt", "last", [])
        if not records:
            raise ConfigError(f"localizer {job.cell.localizer!r} does not apply to the model of {job.run_dir}")
        cache.write_text(json.dumps({"val": records[0]["val"], "test": records[0]["test"]}))
    return json.loads(cache.read_text())


def summarize(ablation: Ablation, jobs: list[Job]) -> tuple[str, list[list[str]], str]:
    """(markdown table, CSV rows, chosen cell label)."""
    per_cell: dict[str, list[dict]] = {}
    for job in jobs:
        per_cell.setdefault(job.cell.label, []).append(cell_metrics(job))
    means = {label: statistics.mean(m["val"][ablation.select] for m in runs) for label, runs in per_cell.items()}
    chosen = max(means, key=means.get)
    val_cols = [c for c in VAL_COLUMNS if all(c[0] in m["val"] for runs in per_cell.values() for m in runs)]
    test_cols = [c for c in TEST_COLUMNS if all(c[0] in m["test"] for m in per_cell[chosen])]
    lines = [f"| cell | n | {' | '.join(t for _, t in val_cols + test_cols)} |",
             "|---|---:|" + "---:|" * (len(val_cols) + len(test_cols))]
    rows = [["cell", "n", "chosen"] + [f"{t} {s}" for _, t in val_cols + test_cols for s in ("mean", "std")]]
    for label, runs in per_cell.items():
        is_chosen = label == chosen
        val = [[m["val"][k] for m in runs] for k, _ in val_cols]
        test = [[m["test"][k] for m in runs] for k, _ in test_cols] if is_chosen else [None] * len(test_cols)
        cells = [mean_std(v) for v in val] + [mean_std(v) if v else "–" for v in test]
        name = f"**{label}** (chosen on val)" if is_chosen else label
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
        numbers = []
        for v in val + test:
            numbers += ["", ""] if v is None else [f"{statistics.mean(v):.4f}",
                                                    f"{statistics.stdev(v) if len(v) > 1 else 0.0:.4f}"]
        rows.append([label, str(len(runs)), "yes" if is_chosen else ""] + numbers)
    return "\n".join(lines), rows, chosen


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ablation", help="a name in experiments/ablations/ or the path of an ablation file")
    p.add_argument("--seeds", help="comma-separated seeds (default: the file's)")
    p.add_argument("--base", type=Path, help="another base config, e.g. experiments/cub_acol_vgg16.toml")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state, train nothing")
    return p.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    try:
        ablation = load_ablation(args.ablation)
        if args.seeds:
            ablation.seeds = [int(s) for s in args.seeds.split(",")]
        if args.base:
            ablation.base = args.base.resolve()
        for cell in ablation.cells:  # every cell's config must load before anything trains
            load_config(ablation.base, cell.overrides + args.override)
    except (ConfigError, ValueError) as e:
        sys.exit(f"ablation error: {e}")
    jobs = plan(ablation, args.runs_dir)
    if args.dry_run:
        for job in jobs:
            print(f"{'done' if job.done else 'todo'}  {job.cell.label}  seed {job.seed}  {job.run_dir}")
        return ""
    failed = run_all(jobs, ablation.base, args.override, max(1, args.jobs))
    if failed:
        sys.exit(f"{len(failed)} run(s) failed; fix the cause and run the same command again to finish the grid")
    table, rows, chosen = summarize(ablation, jobs)
    folder = args.runs_dir / "ablations" / ablation.name
    header = (f"{ablation.description or ablation.name}: base {ablation.base.name}, seeds "
              f"{', '.join(map(str, ablation.seeds))}; mean ± std; chosen on val {ablation.select}: {chosen}")
    (folder / "results.md").write_text(f"{header}\n\n{table}\n")
    with open(folder / "results.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    print(f"\n{header}\n{table}\nwritten to {folder}/results.md and results.csv")
    return table


if __name__ == "__main__":
    main()
