"""In-forward vs post-hoc maps: every applicable localizer of trained runs, under one protocol.

    python -m acol.compare [RUN ...] [--methods all | inforward,cam,gradcam] [--target gt|pred]
                           [--checkpoint last|best] [--out runs/compare] [--num-images 6]
                           [--reference GROUP/LOCALIZER] [--replicates 1000] [--confidence 0.95]
                           [--bootstrap-seed 0] [--baselines centre,brightness | --no-baselines]
                           [--report] [key=value ...]

Without RUNs: the synthetic benchmark runs of `scripts/train_acol.sh`, `runs/synthetic_acol-s*` and
`runs/synthetic_cam-s*`. For each run and each localizer that applies to its model
(`acol.cams.applicable_localizers`; without `--methods`, all but the many-forward ones,
`acol.cams.localizers.MANY_FORWARD`, which `--methods all` or their names add), the localizer's maps are evaluated on `val` (which chooses the
box threshold) and on `test` (reported at the fixed threshold and at val's). Runs whose names
differ only in `-s<seed>` form a group; the tables give mean ± std over a group's seeds.

Beside them, the difference of each group x localizer from the reference one (`--reference`, default:
the `cam` localizer of a CAM group if there is one, else the first row) in the main test metrics, with
its paired bootstrap interval over test images and seeds (`acol.evaluation.bootstrap`):
`+3.1 [+1.9, +4.4]` is the difference of the means over seeds and its 95% percentile interval.

Below the runs, one row per class-agnostic baseline map (`--baselines`, default `centre,brightness`:
`acol.evaluation.baselines`, no model) on the reference cell's first run's data set, val and test
splits, scored the same way (the box threshold chosen on its val), with its difference from the
reference; no classification metrics (a class-agnostic map has no class), no maps/s, not in the grid.

Written to --out: `results.jsonl` (one record per run x method: val and test metrics, maps/s, the
difference from the reference), `per_image/<run>__<method>.npz` (the test split's per-image records,
from which `acol.evaluation.bootstrap` recomputes the metrics and intervals without the maps),
`results.md` and `results.csv` (the tables), `grid.png` (methods x test images: overlays with the GT
boxes in green and the predicted box at val's threshold in red, from each group's first run), and
TensorBoard events with the same grid and each method's BoxAcc-vs-threshold curves on test (mean over
seeds): `tensorboard --logdir runs/compare`.

With `--report`, `report.html` too (`acol.report`): one self-contained page with the table, then every test
image with its GT boxes and, for each run x localizer and baseline, the map's overlay with its predicted box at
its val-chosen threshold (that of GT-known @val τ) and the box's IoU with the best-matching GT box, the rows
sortable by one map's IoU or by the difference of two maps' (worst first). It costs one more test pass per map.

With `--faithfulness` and / or `--sanity` (the options of `python -m acol.evaluate`), each localizer's
pointing game, deletion / insertion AUCs and randomization-test similarities on `test` join the
records and the tables (beside the box metrics), and `randomization.png` (Spearman and SSIM vs the
cascade steps done: one panel per method, one colour per group, mean over seeds) joins the outputs and
TensorBoard.

Each run x localizer's result (and each baseline's, as `baseline__<name>`) is kept in `--out/done/` as
soon as it is finished: the same command again (after an interruption, or with more runs or
localizers) reuses every result whose settings (checkpoint file, target, overrides, localizer options,
checks; a baseline's: its data and evaluation settings) are unchanged and computes the rest; `--fresh`
recomputes everything.

maps/s counts the localizer alone (forward, backward where the method needs one, map arithmetic)
over the val and test passes, after one untimed warm-up batch, not the box evaluation.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from acol import cli
from acol.cams import LOCALIZERS, applicable_localizers, build_localizer, default_localizer_name
from acol.cams.localizers import MANY_FORWARD, TARGETS
from acol.config import ConfigError, to_dict
from acol.datasets.dataset import build_dataset, build_loader, worker_error_line
from acol.datasets.images import ImageError
from acol.datasets.metadata import MetadataError
from acol.datasets.transforms import normalize_on_device
from acol.engine import accumulate_split, autocast
from acol.progress import progress
from acol.evaluate import (add_faithfulness_options, add_localizer_options, baseline_result,
                           check_faithfulness_options, check_run, faithfulness_of, load_run, localizer_options,
                           map_checks, run_config, spread_batch, write_png)
from acol.evaluation.baselines import BASELINE_MAPS, baseline_maps
from acol.evaluation.bootstrap import Difference, paired_difference, run_records
from acol.evaluation.sanity import cascade_panels
from acol.evaluation.report import iou_columns, mean_std, seed_group
from acol.report import FailureReport
from acol.textfile import write_atomic
from acol.tracking import Tracker
from acol.visualize import heatmap_rows, labelled_rows

DEFAULT_RUNS = ("runs/synthetic_acol-s*", "runs/synthetic_cam-s*")
# (split, metric key, column title)
COLUMNS = [
    ("test", "top1_cls", "top-1 cls"),
    ("test", "gt_known_loc@fixed", "GT-known @fixed"),
    ("test", "top1_loc@fixed", "top-1 loc @fixed"),
    ("test", "gt_known_loc@val", "GT-known @val τ"),
    ("test", "top1_loc@val", "top-1 loc @val τ"),
    ("test", "maxboxacc_v2", "MaxBoxAccV2"),
    ("test", "pxap", "PxAP"),
    ("val", "maxboxacc_v2", "val MaxBoxAccV2"),
    ("test", "pointing_game", "pointing game"),
    ("test", "deletion_auc", "deletion AUC ↓"),
    ("test", "insertion_auc", "insertion AUC ↑"),
    ("test", "randomization_spearman", "randomized Spearman"),
    ("test", "randomization_ssim", "randomized SSIM"),
    ("", "maps_per_s", "maps/s"),
]
TWO_DECIMALS = ("randomization_spearman", "randomization_ssim")  # in [-1, 1]; the others in %
# (test metric key, column title) given as a difference from the reference, with its bootstrap interval
DIFFERENCES = [("top1_cls", "top-1 cls"), ("gt_known_loc@val", "GT-known @val τ"), ("maxboxacc_v2", "MaxBoxAccV2"),
               ("pxap", "PxAP")]


class Timed:
    """A localizer that counts its maps and the seconds spent in it (CUDA work included)."""

    def __init__(self, localizer):
        self.localizer, self.seconds, self.maps = localizer, 0.0, 0

    def __call__(self, model, images, labels):
        start = time.perf_counter()
        logits, maps = self.localizer(model, images, labels)
        if maps.is_cuda:
            torch.cuda.synchronize(maps.device)
        self.seconds += time.perf_counter() - start
        self.maps += len(maps)
        return logits, maps


def evaluate_methods(run: Path, methods: list[str] | None, target: str, checkpoint: str, overrides,
                     checks=None, options: dict | None = None, done: Path | None = None) -> list[tuple[dict, dict]]:
    """(record, test per-image records) per localizer applicable to the run's model (and in `methods` when
    given); with `checks` (the parsed options) asking for them, the faithfulness / sanity metrics on test
    too; `options`: {localizer name: its keyword options}. With `done` (a folder), each run x localizer's
    result is kept there as it finishes and reused by a later call with the same settings
    (`finished_result`), so an interrupted comparison goes on where it stopped."""
    cfg, model, device, dtype = load_run(run, checkpoint, overrides)
    loaders = {split: build_loader(cfg, build_dataset(cfg, split, train=False), train=False) for split in ("val", "test")}
    names = [n for n in applicable_localizers(model) if methods is None or n in methods]
    records = []
    warm_up = next(iter(loaders["val"]))
    warm_up = normalize_on_device(warm_up["image"], device), warm_up["label"].to(device)
    for name in names:
        setting = result_setting(run, name, target, checkpoint, overrides, checks, (options or {}).get(name, {}))
        if done is not None and (found := finished_result(done, result_stem(run, name), setting)) is not None:
            print(f"{run.name} {name}: done before ({done})", file=sys.stderr, flush=True)
            records.append(found)
            continue
        localizer = build_localizer(name, target, **(options or {}).get(name, {}))
        with autocast(device, dtype):
            localizer(model, *warm_up)  # first-call costs (allocations, lazy inits) stay out of maps/s
        timed = Timed(localizer)
        print(f"{run.name} {name}: {len(loaders['val'].dataset)} val and {len(loaders['test'].dataset)} test images "
              "...", file=sys.stderr, flush=True)
        val_boxes, val_masks = accumulate_split(model, loaders["val"], device, dtype, cfg, localizer=timed,
                                                desc=f"{run.name} {name} val")
        val = val_boxes.compute()
        faithfulness = faithfulness_of(model, localizer, dtype, checks) if checks is not None else None
        test_boxes, test_masks = accumulate_split(model, loaders["test"], device, dtype, cfg, localizer=timed,
                                                  desc=f"{run.name} {name} test", on_batch=faithfulness,
                                                  per_image=True)
        test = test_boxes.compute(threshold=val.get("best_cam_threshold"))
        for metrics, masks in ((val, val_masks), (test, test_masks)):
            if masks is not None:
                metrics.update(masks.compute())
        curves = {k: v.tolist() for k, v in test_boxes.box_acc_curves().items()}
        record = {"run": str(run), "group": seed_group(run.name), "model": cfg.model.name, "method": name,
                  "target": target, "val": val, "test": test, "maps_per_s": timed.maps / timed.seconds,
                  "test_curves": curves}
        if checks is not None and (checks.faithfulness or checks.sanity):
            extra, details = map_checks(model, cfg, device, dtype, localizer, "test", checks, faithfulness)
            test.update(extra)
            if "perturbation" in details:
                record["test_perturbation_curves"] = {k: v.tolist() for k, v in details["perturbation"].mean_curves().items()}
            if "cascade" in details:
                record["randomization"] = {k: details["cascade"][k] for k in ("groups", "spearman", "ssim")}
        records.append((record, run_records(test_boxes, test_masks, val.get("best_cam_threshold"))))
        if done is not None:
            keep_result(done, result_stem(run, name), setting, *records[-1])
        print(f"{run.name} {name}: test MaxBoxAccV2 {test['maxboxacc_v2']:.2f}, GT-known @val "
              f"{test['gt_known_loc@val']:.2f}, {timed.maps / timed.seconds:.0f} maps/s", flush=True)
    return records


def baseline_results(names: list[str], cfg, done: Path | None = None) -> list[tuple[dict, dict]]:
    """(record, test per-image records) of each baseline map in `names` on `cfg`'s data set
    (`acol.evaluate.baseline_result`); with `done`, kept there as `baseline__<name>` and reused while the
    data and evaluation settings are the same."""
    results = []
    for name in names:
        setting = {"baseline": name, "data": to_dict(cfg)["data"], "eval": to_dict(cfg)["eval"],
                   "seed": cfg.train.seed}
        stem = f"baseline__{name}"
        if done is not None and (found := finished_result(done, stem, setting)) is not None:
            print(f"baseline {name}: done before ({done})", file=sys.stderr, flush=True)
            results.append(found)
            continue
        results.append(baseline_result(name, cfg))
        if done is not None:
            keep_result(done, stem, setting, *results[-1])
        test = results[-1][0]["test"]
        shown = (("maxboxacc_v2", "MaxBoxAccV2"), ("gt_known_loc@val", "GT-known @val"), ("pxap", "PxAP"))
        print(f"baseline {name}: test " + ", ".join(f"{title} {test[key]:.2f}" for key, title in shown if key in test),
              flush=True)
    return results


def baseline_rows(names: list[str], cfg, done: Path | None = None) -> list[tuple[dict, dict]]:
    """`baseline_results` as comparison records: group "baseline", method the baseline's name."""
    return [({"run": "baseline", "group": "baseline", "model": None, "method": record["baseline"], "target": None,
              **record}, per_image) for record, per_image in baseline_results(names, cfg, done)]


def value(record: dict, split: str, key: str) -> float | None:
    return record.get(key) if not split else record[split].get(key)


def cells_of(records: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """{(group, method): its records}, in the records' order."""
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        cells.setdefault((r["group"], r["method"]), []).append(r)
    return cells


def choose_reference(records: list[dict], reference: str | None) -> tuple[str, str]:
    """The (group, method) cell of `--reference GROUP/LOCALIZER`; default: the first `cam` cell, else the
    first cell."""
    cells = list(cells_of(records))
    if reference is None:
        return next((c for c in cells if c[1] == "cam"), cells[0])
    cell = tuple(reference.rsplit("/", 1))
    if cell not in cells:
        cli.fail(f"error: --reference {reference}: no such group/localizer was evaluated; valid: "
                 f"{', '.join(f'{g}/{m}' for g, m in cells)}")
    return cell


def differences(records: list[dict], per_image: list[dict], reference: tuple[str, str], replicates: int,
                confidence: float, seed: int) -> None:
    """Add to each record `test_vs_reference`: its cell's difference from the reference cell in the
    `DIFFERENCES` metrics (A - reference), with the paired bootstrap interval (runs resampled together when
    the two cells are the same runs under two localizers)."""
    by_run = {(r["run"], r["method"]): p for r, p in zip(records, per_image)}
    cells = cells_of(records)
    ref_runs = sorted(r["run"] for r in cells[reference])
    for (group, method), runs in cells.items():
        names = sorted(r["run"] for r in runs)
        try:
            found = paired_difference([by_run[name, method] for name in names],
                                      [by_run[name, reference[1]] for name in ref_runs],
                                      [k for k, _ in DIFFERENCES], replicates, confidence, seed,
                                      paired_runs=names == ref_runs)
        except ValueError as e:
            cli.fail(f"error: cannot compare {group}/{method} with the reference {'/'.join(reference)}: {e}")
        summary = {"reference": "/".join(reference), "confidence": confidence, "replicates": replicates,
                   "seed": seed, "runs_paired": names == ref_runs,
                   **{k: vars(d) for k, d in found.items()}}
        for r in runs:
            r["test_vs_reference"] = summary


def tables(records: list[dict]) -> tuple[str, list[list[str]], list[list[str]]]:
    """(markdown table, CSV rows, the markdown's cells: header, then rows): one row per group x method, mean ±
    std over the group's runs, then the differences from the reference cell (`differences`) with their
    intervals."""
    columns = []
    for split, key, title in COLUMNS:  # test MaxBoxAccV2 preceded by its per-IoU parts
        if (split, key) == ("test", "maxboxacc_v2"):
            columns += [("test", k, t) for k, t in iou_columns([r["test"] for r in records])]
        columns.append((split, key, title))
    present = [c for c in columns if any(value(r, c[0], c[1]) is not None for r in records)]
    vs = records[0]["test_vs_reference"]
    deltas = [(k, t) for k, t in DIFFERENCES if k in vs]
    cells = [["run group", "method", "n"] + [t for _, _, t in present]
             + [f"{t} Δ vs {vs['reference']}" for _, t in deltas]]
    rows = [["group", "method", "n"] + [f"{t} mean" for _, _, t in present] + [f"{t} std" for _, _, t in present]
            + ["Δ reference"] + [f"{t} Δ{end}" for _, t in deltas for end in ("", " low", " high")]]
    for (group, method), runs in cells_of(records).items():  # a metric a cell lacks (a baseline's top-1 cls): –
        values = [[v for r in runs if (v := value(r, split, key)) is not None] for split, key, _ in present]
        text = ["–" if not v else f"{statistics.mean(v):.0f}" if key == "maps_per_s"
                else mean_std(v, 2 if key in TWO_DECIMALS else 1) for v, (_, key, _) in zip(values, present)]
        vs = runs[0]["test_vs_reference"]
        is_reference = f"{group}/{method}" == vs["reference"]
        text += ["reference" if is_reference else Difference(**vs[k]).text() if k in vs else "–" for k, _ in deltas]
        cells.append([group, method, str(len(runs))] + text)
        rows.append([group, method, str(len(runs))] + [f"{statistics.mean(v):.4f}" if v else "" for v in values]
                    + [f"{statistics.stdev(v) if len(v) > 1 else 0.0:.4f}" if v else "" for v in values]
                    + [vs["reference"]] + [f"{vs[k][end]:.4f}" if k in vs else "" for k, _ in deltas
                                           for end in ("difference", "low", "high")])
    lines = ["| " + " | ".join(cells[0]) + " |", "|---|---|---:|" + "---:|" * (len(cells[0]) - 3)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells[1:]]), rows, cells


def test_maps(run: Path, methods: list[str] | None, target: str, checkpoint: str, overrides,
              num_images: int, options: dict | None = None) -> tuple[torch.Tensor, list[np.ndarray], dict[str, torch.Tensor], object]:
    """(images, GT boxes, {method: maps}, cfg) of `num_images` test images spread evenly over a run's
    test split; methods None: the model's own map (`default_localizer`), under its name."""
    cfg, model, device, dtype = load_run(run, checkpoint, overrides)
    batch = spread_batch(build_dataset(cfg, "test", train=False), num_images)
    images = normalize_on_device(batch["image"], device)
    labels = batch["label"].to(device)
    maps = {}
    for name in methods or [default_localizer_name(model)]:
        with autocast(device, dtype):
            maps[name] = build_localizer(name, target, **(options or {}).get(name, {}))(model, images, labels)[1]
    return images, [b.numpy() for b in batch["boxes"]], maps, cfg


def figure(records: list[dict], target: str, checkpoint: str, overrides, num_images: int,
           options: dict | None = None) -> np.ndarray:
    """Methods x test images: a row of the images, then a row per method labelled group:method (each
    group's first run), each map with its predicted box at its val threshold."""
    rows, titles = None, ["image"]
    first_runs: dict[str, str] = {}
    for r in records:
        first_runs.setdefault(r["group"], r["run"])
    for run in first_runs.values():
        chosen = [r for r in records if r["run"] == run]
        images, boxes, maps, cfg = test_maps(Path(run), [r["method"] for r in chosen], target, checkpoint, overrides,
                                             num_images, options)
        boxed = {r["method"]: r["test"].get("val_cam_threshold", cfg.eval.fixed_threshold) for r in chosen}
        titles += [f"{r['group']}:{r['method']}" for r in chosen]
        new = heatmap_rows(images, maps, boxes, boxed)
        rows = new if rows is None else [old + row[1:] for old, row in zip(rows, new)]
    return labelled_rows([list(column) for column in zip(*rows)], titles)


def randomization_figure(records: list[dict]) -> np.ndarray | None:
    """Small multiples of Spearman and SSIM vs the fraction of the cascade steps done: one panel per method
    (localizer), one colour per group (mean over its seeds); None without randomization results."""
    cells: dict[str, dict[str, list[dict]]] = {}
    for r in records:
        if "randomization" in r:
            cells.setdefault(r["method"], {}).setdefault(r["group"], []).append(r["randomization"])
    if not cells:
        return None
    return cascade_panels({method: {group: {k: np.mean([run[k] for run in runs], axis=0).tolist()
                                            for k in ("spearman", "ssim")} for group, runs in groups.items()}
                           for method, groups in cells.items()})


def report_page(records: list[dict], target: str, checkpoint: str, overrides, options: dict,
                baseline_cfg) -> FailureReport:
    """`--report`'s page of every test image x map: each run x localizer of `records` (one more pass over the
    test split each, the maps as `accumulate_split` gives the evaluator), then each baseline (on `baseline_cfg`'s
    data), boxed at the map's val-chosen threshold (`val_cam_threshold`, that of GT-known @val τ)."""
    page, loaded = FailureReport(), None
    for r in records:
        name, threshold = f"{Path(r['run']).name}/{r['method']}", r["test"].get("val_cam_threshold")
        if threshold is None:
            raise ValueError(f"{name} has no val-chosen box threshold (no GT boxes on val or test, e.g. a masks-only "
                             "data set): there is no box to show")
        add = page_adder(page, name, threshold)
        if r["group"] == "baseline":
            loader = build_loader(baseline_cfg, build_dataset(baseline_cfg, "test", train=False), train=False)
            for batch in progress(loader, f"report {name}"):
                add(batch, baseline_maps(r["method"], batch["image"]))
            continue
        if loaded != r["run"]:  # records come run by run: one model in memory
            loaded = r["run"]
            cfg, model, device, dtype = load_run(Path(loaded), checkpoint, overrides)
            loader = build_loader(cfg, build_dataset(cfg, "test", train=False), train=False)
        accumulate_split(model, loader, device, dtype, cfg, localizer=build_localizer(r["method"], target,
                                                                                    **options.get(r["method"], {})),
                         desc=f"report {name}", on_batch=add)
    page.check_complete()
    return page


def page_adder(page: FailureReport, name: str, threshold: float):
    """`on_batch(batch, ..., scoremaps)` (as `accumulate_split` calls it) adding a loader batch's maps to `page`
    as map `name`, boxed at `threshold`."""
    return lambda batch, *rest: page.add(name, threshold, batch["image_id"], batch["image"].permute(0, 2, 3, 1).numpy(),
                                         [b.numpy() for b in batch["boxes"]], rest[-1])


def report_notes(args: argparse.Namespace, records: list[dict]) -> list[str]:
    """The page's lines on what it shows and which box threshold each map is drawn at."""
    runs = len({r["run"] for r in records if r["group"] != "baseline"})
    baselines = ", then the baselines" * any(r["group"] == "baseline" for r in records)
    return [f"{len(records)} maps ({runs} runs' localizers{baselines}), checkpoint {args.checkpoint}, maps of "
            f"the {'GT' if args.target == 'gt' else 'predicted'} class; the table is results.md's (test split, mean ± "
            "std over seeds).",
            "Each map is boxed at its val-chosen threshold τ: the threshold of best GT-known loc (MaxBoxAcc, V1 box, "
            "IoU ≥ 0.5) on val, taken to test's grid, the threshold of the table's 'GT-known @val τ' (the share of "
            "images with IoU ≥ 0.5 under a map's name is that run's GT-known @val τ). MaxBoxAccV2 chooses its own "
            "threshold per IoU level on test (an oracle); its boxes are not the ones shown."]


def write_tensorboard(out: Path, records: list[dict], grid: np.ndarray, randomization: np.ndarray | None) -> None:
    """The grid (and the randomization figure) and the mean test curves per group x method, replacing an
    earlier comparison's events."""
    for old in out.glob("events.out.tfevents.*"):
        old.unlink()
    tracker = Tracker(out, enabled=True)
    tracker.image("z_compare/grid", grid, 0)
    if randomization is not None:
        tracker.image("z_compare/randomization", randomization, 0)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["group"], r["method"]), []).append(r)
    for (group, method), runs in groups.items():
        names = [k for k in runs[0]["test_curves"] if k != "thresholds"]
        mean = {k: np.mean([r["test_curves"][k] for r in runs], axis=0) for k in names}
        tracker.curves(f"z_compare/test/{group}/{method}/",
                       {"thresholds": np.array(runs[0]["test_curves"]["thresholds"]), **mean})
    tracker.close()


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.Parser(cli.prog("compare"), __doc__,
                   "runs/synthetic_acol-s0 runs/synthetic_cam-s0 --methods cam,gradcam eval.batch_size=32")
    cli.add_overrides(p, "eval.batch_size=64", metavar="RUN | key=value",
                      help=f"run folders (default: {' '.join(DEFAULT_RUNS)}) and config overrides applied to "
                           "every run")
    p.add_argument("--methods", help=f"'all' or a comma-separated subset of {','.join(LOCALIZERS.names_in_order())} "
                                     f"(default: every one a model declares but the many-forward "
                                     f"{', '.join(MANY_FORWARD)})")
    p.add_argument("--target", default="gt", choices=TARGETS, help="the class mapped: GT label or prediction")
    p.add_argument("--checkpoint", default="last", choices=("last", "best"))
    p.add_argument("--out", type=Path, default=Path("runs/compare"))
    p.add_argument("--num-images", type=int, default=6, help="rows of the figure grid")
    p.add_argument("--report", action="store_true", help="also write report.html: every test image x map with its "
                   "box and IoU, sortable (one more test pass per map)")
    p.add_argument("--fresh", action="store_true", help="recompute every run x localizer (default: reuse those "
                   "finished by an earlier call with the same settings, kept in OUT/done/)")
    p.add_argument("--reference", metavar="GROUP/LOCALIZER",
                   help="the cell the differences are taken from, e.g. synthetic_cam/cam (default: the first cam "
                        "localizer, else the first row)")
    p.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates of the differences' intervals")
    p.add_argument("--confidence", type=float, default=0.95, help="the intervals' level, in (0, 1)")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="the resampling's seed (the intervals are "
                                                                  "deterministic in it)")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--baselines", default=",".join(BASELINE_MAPS.names_in_order()), metavar="NAME,...",
                       help="class-agnostic baseline maps shown as rows, of "
                            f"{', '.join(BASELINE_MAPS.names_in_order())} (default: all)")
    shown.add_argument("--no-baselines", action="store_true", help="no baseline rows")
    add_localizer_options(p)
    add_faithfulness_options(p)
    args = p.parse_args(argv)
    check_faithfulness_options(p, args)
    args.localizer_options = localizer_options(p, args.localizer_option)
    if args.num_images < 1:
        p.error(f"argument --num-images: must be >= 1, got {args.num_images}")
    if args.replicates < 1:
        p.error(f"argument --replicates: must be >= 1, got {args.replicates}")
    if not 0 < args.confidence < 1:
        p.error(f"argument --confidence: must lie in (0, 1), got {args.confidence}")
    if args.reference is not None and "/" not in args.reference:
        p.error(f"argument --reference: GROUP/LOCALIZER, e.g. synthetic_cam/cam; got {args.reference!r}")
    args.baselines = [] if args.no_baselines else [name for name in args.baselines.split(",") if name]
    for name in args.baselines:
        if name not in BASELINE_MAPS:
            p.error(f"argument --baselines: unknown baseline map {name!r} (choose from "
                    f"{', '.join(BASELINE_MAPS.names_in_order())})")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"argument --out: {args.out} is a file; name a folder (it is created if missing)")
    for name in args.methods.split(",") if args.methods not in (None, "all") else []:
        if name not in LOCALIZERS:
            cli.fail(f"error: --methods: unknown localizer {name!r}; valid: {', '.join(LOCALIZERS.names_in_order())}")
    runs, args.override = cli.overrides_of(args, others=True)
    args.runs = [Path(r) for r in runs]
    return args


CHECK_SETTINGS = ("faithfulness", "pointing_tolerance", "perturbation_steps", "perturbation_baseline", "sanity",
                  "sanity_images", "sanity_depth", "sanity_seed")  # what changes a record (not chunk sizes)


def result_setting(run: Path, name: str, target: str, checkpoint: str, overrides, checks, options: dict) -> dict:
    """Everything a run x localizer's record depends on: the checkpoint file (path, size, mtime), the
    target, overrides, the localizer's options and the checks' settings."""
    path = run / "checkpoints" / f"{checkpoint}.pt" if checkpoint in ("last", "best") else Path(checkpoint)
    stat = path.stat()
    return {"run": str(run.resolve()), "localizer": name, "checkpoint": [str(path.resolve()), stat.st_size,
                                                                            stat.st_mtime_ns],
            "target": target, "overrides": list(overrides), "options": options,
            "checks": {k: getattr(checks, k) for k in CHECK_SETTINGS} if checks is not None else None}


def result_stem(run: Path, name: str) -> str:
    """The name of a run x localizer's files in `done`."""
    return f"{run.name}__{name}"


def _result_files(done: Path, stem: str) -> tuple[Path, Path]:
    return done / f"{stem}.json", done / f"{stem}.npz"


def finished_result(done: Path, stem: str, setting: dict) -> tuple[dict, dict] | None:
    """(record, per-image records) kept by `keep_result` under `stem` with the same setting, else None."""
    record_file, arrays_file = _result_files(done, stem)
    if not (record_file.is_file() and arrays_file.is_file()):
        return None
    kept = json.loads(record_file.read_text())
    if kept.get("setting") != json.loads(json.dumps(setting)):
        return None
    with np.load(arrays_file) as arrays:
        return kept["record"], dict(arrays)


def keep_result(done: Path, stem: str, setting: dict, record: dict, per_image: dict) -> None:
    """Write a result to `done` under `stem` (the arrays first, then the record, each atomically: a record
    file means a whole result)."""
    done.mkdir(parents=True, exist_ok=True)
    record_file, arrays_file = _result_files(done, stem)
    tmp = arrays_file.with_name(f".{arrays_file.stem}.tmp.npz")
    np.savez_compressed(tmp, **per_image)
    os.replace(tmp, arrays_file)
    write_atomic(record_file, json.dumps({"setting": setting, "record": record}))


def write_per_image(out: Path, records: list[dict], per_image: list[dict]) -> None:
    """`<out>/per_image/<run name>__<method>.npz`: each run x method's test per-image records."""
    folder = out / "per_image"
    folder.mkdir(parents=True, exist_ok=True)
    for r, arrays in zip(records, per_image):
        np.savez_compressed(folder / f"{Path(r['run']).name}__{r['method']}.npz", **arrays)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    runs = args.runs or [p for pattern in DEFAULT_RUNS for p in sorted(Path().glob(pattern))]
    if not runs:
        cli.fail("error: no runs given and none found under runs/: train them first, e.g. bash scripts/compare_cams.sh")
    methods = None if args.methods == "all" else args.methods.split(",") if args.methods else [
        name for name in LOCALIZERS.names_in_order() if name not in MANY_FORWARD]
    for run in runs:
        check_run(run, args.checkpoint)
    if args.methods == "all":
        print(f"--methods all: also {', '.join(MANY_FORWARD)}, which run the model tens to a thousand times per "
              "image (docs/localizers.md: what each costs); on a CPU this takes long", flush=True)
    if args.reference is not None:
        group, method = args.reference.rsplit("/", 1)
        groups = sorted({seed_group(run.name) for run in runs})
        if group not in groups:
            cli.fail(f"error: --reference {args.reference}: no run group {group!r}; valid: {', '.join(groups)}")
        if method not in LOCALIZERS or (methods and method not in methods):
            cli.fail(f"error: --reference {args.reference}: localizer {method!r} is not evaluated; valid: "
                     f"{', '.join(methods or LOCALIZERS.names_in_order())}")
    baseline_cfg = None
    try:
        done = None if args.fresh else args.out / "done"
        evaluated = [pair for run in runs for pair in evaluate_methods(run, methods, args.target, args.checkpoint,
                                                                       args.override, args, args.localizer_options,
                                                                       done)]
        if evaluated and args.baselines:  # on the data set of the reference cell's first run
            group, method = choose_reference([r for r, _ in evaluated], args.reference)
            first = next(Path(r["run"]) for r, _ in evaluated if (r["group"], r["method"]) == (group, method))
            baseline_cfg = run_config(first, args.override)
            evaluated += baseline_rows(args.baselines, baseline_cfg, done)
    except ConfigError as e:
        cli.fail(f"config error: {e}")
    except MetadataError as e:
        cli.fail(f"data error: {e}")
    except ImageError as e:  # raised here or in a DataLoader worker
        cli.fail(f"data error: {worker_error_line(e)}")
    if not evaluated:
        models = [load_run(run, args.checkpoint, args.override)[1] for run in runs]
        valid = [n for n in LOCALIZERS.names_in_order() if any(n in applicable_localizers(m) for m in models)]
        cli.fail(f"error: none of the methods {', '.join(methods)} applies to these runs' models; those that do: "
                 f"{', '.join(valid)}")
    if args.methods not in (None, "all"):  # a localizer the user named that a run's model does not declare
        pairs = {(r["run"], r["method"]) for r, _ in evaluated}
        for run in runs:
            for name in [n for n in methods if (str(run), n) not in pairs]:
                print(f"{run.name}: {name} does not apply to its model (model.localizers); left out", file=sys.stderr,
                      flush=True)
    records, per_image = map(list, zip(*evaluated))
    args.out.mkdir(parents=True, exist_ok=True)
    write_per_image(args.out, records, per_image)
    differences(records, per_image, choose_reference(records, args.reference), args.replicates, args.confidence,
                args.bootstrap_seed)
    with open(args.out / "results.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    table, rows, cells = tables(records)
    (args.out / "results.md").write_text(table + "\n")
    with open(args.out / "results.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    grid = figure([r for r in records if "baseline" not in r], args.target, args.checkpoint, args.override,
                  args.num_images, args.localizer_options)
    write_png(args.out / "grid.png", grid)
    randomization = randomization_figure(records)
    if randomization is not None:
        write_png(args.out / "randomization.png", randomization)
    write_tensorboard(args.out, records, grid, randomization)
    if args.report:
        try:
            page = report_page(records, args.target, args.checkpoint, args.override, args.localizer_options,
                               baseline_cfg)
        except ValueError as e:
            cli.fail(f"error: --report: {e}")
        write_atomic(args.out / "report.html",
                     page.html(cells, f"acol-compare: {args.out}", report_notes(args, records)))
    print(f"\ntest split, box threshold chosen on val; mean ± std over seeds (target: {args.target}); Δ: minus "
          f"{records[0]['test_vs_reference']['reference']}, with its {args.confidence:.0%} paired bootstrap interval "
          f"({args.replicates} replicates over test images and seeds)\n{table}")
    print(f"written to {args.out}: results.md, results.csv, results.jsonl, per_image/*.npz, grid.png, "
          f"{'randomization.png, ' * (randomization is not None)}{'report.html, ' * args.report}TensorBoard events")
    return records


if __name__ == "__main__":
    cli.run_command(main)
