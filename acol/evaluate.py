"""Evaluate localization maps under the WSOL protocol.

A trained run (its config and checkpoint) on a split:

    python -m acol.evaluate --run runs/synthetic_acol-s0 [--checkpoint last|best|PATH] [--split test]
                            [--localizer gradcam [--layer NAME] [--target gt|pred]]
                            [--save-scoremaps] [key=value ...]

(the localizer: the model's own map by default; `acol.cams.localizers` lists the others). On several
processes, each evaluating a shard (counts summed, rank 0 writes):

    torchrun --nproc-per-node=4 -m acol.evaluate --run-dir runs/cub_acol_vgg16-s0

A folder of score maps in wsolevaluation's layout (`<root>/<image_id>.npy`, the id's extension kept:
`val/x.jpg` -> `val/x.jpg.npy`; the extension-stripped `val/x.npy` is read too), each 2-D float in
[0, 1] at the network input size (one shape for all), against any metadata:

    python -m acol.evaluate --scoremaps DIR --dataset CUB --split test [--metadata-root data/metadata]
                            [--data-root data] [--threshold 0.25] [key=value ...]
    python -m acol.evaluate --scoremaps DIR --dataset CUB --split val,test    # @val in one call

A class-agnostic baseline map (`acol.evaluation.baselines`: `centre`, a centre prior, or `brightness`,
the image's grey level), no model involved, on a data set named by a config (default: acol's defaults,
wsolevaluation's 224 px input) and overrides; `--dataset`, `--metadata-root`, `--data-root` stand for
data.dataset, data.metadata_root, data.root:

    python -m acol.evaluate --baseline brightness --config experiments/synthetic_base.toml [--split test]
    python -m acol.evaluate --baseline centre --dataset CUB [--metadata-root data/metadata] [--data-root data]

It is scored like a model's map (val chooses the @val threshold), without the classification metrics
(top-1 cls, top-1 / top-5 loc): a class-agnostic map has no class.

The box threshold is reported under labelled policies: `@fixed` (eval.fixed_threshold), `@val`
(chosen on the val split: evaluated first for a run; for score maps the first split of `--split
val,test`, or given with --threshold) and `@oracle` (the split's own best). Outputs: a table on stdout,
`<out>/eval_<split>.json` (`eval_val_test.json`, {split: metrics}, for a split list),
`<out>/curves_<split>.png` (BoxAcc vs threshold at each IoU, thresholds marked) and the same curves
in TensorBoard under `<out>/`.

With --run, two opt-in checks of the maps' faithfulness (they cost extra forwards): `--faithfulness`,
the pointing game and RISE's deletion / insertion AUCs on the split (`acol.evaluation.faithfulness`;
`<out>/deletion_insertion_<split>.png`), and `--sanity`, the cascading model-parameter randomization
test on `--sanity-images` images of it (`acol.evaluation.sanity`; `<out>/randomization_<split>.png`
and `<out>/randomization_maps_<split>.png`). Their numbers join the JSON, the table and TensorBoard.
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from acol import cli, dist
from acol.cams import LOCALIZERS, build_localizer, default_localizer
from acol.cams.localizers import TARGETS
from acol.config import ConfigError, load_config, parse_override, toml_value
from acol.datasets.dataset import build_dataset, build_loader, collate, load_mask, worker_error_line
from acol.datasets.images import ImageError
from acol.datasets.metadata import MetadataError, read_metadata
from acol.datasets.prepare import SPLITS
from acol.datasets.transforms import scale_boxes
from acol.datasets.transforms import normalize_on_device
from acol.engine import (CheckpointError, accumulate_baseline, accumulate_split, amp_dtype, load_checkpoint,
                         load_weights, split_metrics, unwrap)
from acol.evaluation import BoxEvaluator, MaskEvaluator, localization_only, scoremap_file, stripped_scoremap_file
from acol.evaluation.baselines import BASELINE_MAPS
from acol.evaluation.bootstrap import run_records
from acol.evaluation.faithfulness import BASELINES, DeletionInsertion, Faithfulness
from acol.evaluation.report import format_table, threshold_line
from acol.evaluation.sanity import cascade, cascade_grid, cascade_plot, summary
from acol.methods import build_model
from acol.registry import UnknownNameError
from acol.tracking import THRESHOLD_AXIS, Tracker
from acol.train import prepare_data
from acol.visualize import plot_curves


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.Parser(cli.prog("evaluate"), __doc__, "--run runs/synthetic_acol-s0 --localizer gradcam")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", "--run-dir", dest="run", type=Path,
                        help="a run directory written by python -m acol.train (under torchrun write --run-dir: "
                             "torchrun's own parser reads --run as its --run-path)")
    source.add_argument("--scoremaps", type=Path,
                        help="a folder of <image_id>.npy score maps (wsolevaluation's layout)")
    source.add_argument("--baseline", help=f"a class-agnostic baseline map, no model: "
                                           f"{' | '.join(BASELINE_MAPS.names_in_order())}")
    p.add_argument("--config", type=Path, help="with --baseline: the config naming the data set, its input size "
                                               "and val subset (default: acol's defaults)")
    p.add_argument("--checkpoint", help="last (default) | best | a checkpoint path (with --run)")
    p.add_argument("--split", default="test", help=f"one of {', '.join(SPLITS)}; with --scoremaps also a list, e.g. "
                                                   "val,test: the first split's best box threshold is reported as "
                                                   "@val on the others")
    p.add_argument("--threshold", type=float, help="box threshold chosen elsewhere, reported as @val")
    p.add_argument("--localizer", choices=LOCALIZERS.names_in_order(),
                   help="with --run: the map's localizer (default: the model's own map)")
    p.add_argument("--layer", help="with --localizer: the hooked layer's name (default: the model's default_cam_layer)")
    p.add_argument("--target", default="gt", choices=TARGETS, help="the class mapped: GT label or prediction")
    p.add_argument("--save-scoremaps", action="store_true",
                   help="with --run: save the maps evaluated (the split's, and val's when it chooses the "
                        "threshold) as <out>/scoremaps/<image_id>.npy")
    p.add_argument("--dataset", help="the metadata's data set name (e.g. CUB): with --scoremaps; with --baseline, "
                                     "data.dataset")
    p.add_argument("--metadata-root", help="default data/metadata; with --baseline, data.metadata_root")
    p.add_argument("--data-root", help="image root (for masks) with --scoremaps, default data; with --baseline, "
                                       "data.root")
    p.add_argument("--out", type=Path, help="output folder (default: <run>/eval[/<map>], <scoremaps>_eval or "
                                            "<log.runs_dir>/baselines/<data.dataset>_<baseline>_<data.crop_size>px)")
    add_localizer_options(p)
    add_faithfulness_options(p)
    cli.add_overrides(p, "eval.cam_curve_interval=0.01")
    args = p.parse_args(argv)
    check_faithfulness_options(p, args)
    args.localizer_options = localizer_options(p, args.localizer_option)
    if (args.faithfulness or args.sanity) and not args.run:
        p.error("arguments --faithfulness / --sanity: need --run (they run the model on perturbed images)")
    _, args.overrides = cli.overrides_of(args)
    for split in args.split.split(","):
        if split not in SPLITS:
            p.error(f"argument --split: invalid choice: {split!r} (choose from {', '.join(SPLITS)})")
    if args.threshold is not None and not 0 <= args.threshold < 1:
        p.error(f"argument --threshold: a box threshold lies in [0, 1); got {args.threshold}")
    if args.layer and not args.localizer:
        p.error("argument --layer: needs --localizer (the model's own map has no layer to choose)")
    unused = sorted(set(args.localizer_options) - {args.localizer})
    if unused:
        running = f"--localizer {args.localizer}" if args.localizer else "no --localizer: the model's own map"
        p.error(f"argument --localizer-option: options for {', '.join(unused)}, which this command does not run "
                f"({running})")
    for option, given in (("--checkpoint", args.checkpoint), ("--localizer", args.localizer),
                          ("--save-scoremaps", args.save_scoremaps)):
        if given and not args.run:
            p.error(f"argument {option}: needs --run (a model's map)")
    args.checkpoint = args.checkpoint or "last"
    if args.config and not args.baseline:
        p.error("argument --config: needs --baseline (a run's config is its own; score maps take --dataset)")
    if args.baseline is not None and args.baseline not in BASELINE_MAPS:
        p.error(f"argument --baseline: unknown baseline map {args.baseline!r} (choose from "
                f"{', '.join(BASELINE_MAPS.names_in_order())})")
    return args


def add_faithfulness_options(p: argparse.ArgumentParser) -> None:
    """The opt-in faithfulness and sanity checks' options (acol.evaluate and acol.compare)."""
    g = p.add_argument_group("faithfulness and sanity checks of the maps (off by default: extra forwards)")
    g.add_argument("--faithfulness", action="store_true",
                   help="the pointing game and RISE's deletion / insertion AUCs (2 x (steps + 1) forwards per image)")
    g.add_argument("--pointing-tolerance", type=float, default=15.0,
                   help="pointing game: a hit when a GT pixel lies within this many px of the maximum (default 15)")
    g.add_argument("--perturbation-steps", type=int, default=16,
                   help="deletion / insertion: pixels changed in this many equal steps (default 16)")
    g.add_argument("--perturbation-baseline", default="blur", choices=BASELINES,
                   help="what deleted pixels become: a Gaussian blur (11x11, sigma 5) of the image or its "
                        "per-channel mean (default blur)")
    g.add_argument("--perturbation-chunk", type=int, default=64, help="perturbed images per forward (default 64)")
    g.add_argument("--sanity", action="store_true",
                   help="the cascading model-parameter randomization test (a localizer call per layer group)")
    g.add_argument("--sanity-images", type=int, default=16, help="images of the split it maps (default 16)")
    g.add_argument("--sanity-depth", type=int,
                   help="layer groups: modules sharing the first N parts of their names (default: each module "
                        "with parameters)")
    g.add_argument("--sanity-seed", type=int, default=0, help="seed of the re-initialisations (default 0)")


def add_localizer_options(p: argparse.ArgumentParser) -> None:
    """--localizer-option NAME.KEY=VALUE (acol.evaluate and acol.compare)."""
    p.add_argument("--localizer-option", action="append", default=[], metavar="NAME.KEY=VALUE",
                   help="an option of a localizer, TOML value (repeatable), e.g. rise.n_masks=4000 "
                        "or smoothgradcampp.samples=10")


def localizer_options(p: argparse.ArgumentParser, items: list[str]) -> dict[str, dict]:
    """{localizer name: {option: value}} of --localizer-option items, each checked by building the
    localizer (an unknown name, option or value is one line with the valid ones)."""
    options: dict[str, dict] = {}
    for item in items:
        name, dot, rest = item.partition(".")
        key, equals, raw = rest.partition("=")
        if not (dot and equals and key.isidentifier()):
            p.error(f"argument --localizer-option: {item!r} is not NAME.KEY=VALUE (e.g. rise.n_masks=4000)")
        value = parse_override(f"v={raw}")["v"]  # the TOML value grammar of config overrides
        if name not in LOCALIZERS:
            p.error(f"argument --localizer-option: unknown localizer {name!r}; valid: "
                    f"{', '.join(LOCALIZERS.names_in_order())}")
        options.setdefault(name, {})[key] = value
    for name, given in options.items():
        try:
            build_localizer(name, **given)
        except (TypeError, ValueError) as e:
            p.error(f"argument --localizer-option: {e}")
    return options


def check_faithfulness_options(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name, low in (("perturbation_steps", 1), ("perturbation_chunk", 1), ("sanity_images", 1),
                      ("sanity_depth", 1), ("pointing_tolerance", 0)):
        value = getattr(args, name)
        if value is not None and value < low:
            p.error(f"argument --{name.replace('_', '-')}: must be >= {low}, got {value:g}")


def spread_batch(dataset, num_images: int) -> dict:
    """A collated batch of `num_images` images spread evenly over `dataset` (its first and last included)."""
    indices = np.linspace(0, len(dataset) - 1, min(num_images, len(dataset))).astype(int).tolist()
    return collate([dataset[i] for i in indices])


def map_checks(model, cfg, device, dtype, localizer, split: str, args, faithfulness=None) -> tuple[dict, dict]:
    """The checks asked for (`args.faithfulness`, `args.sanity`) of one localizer (None: the model's own
    map) on a split: (flat metrics, details), details holding those asked for of "perturbation" (the
    `DeletionInsertion` evaluator) and "cascade" (`cascade`'s result plus the "images" and "boxes" mapped).
    `faithfulness`: the `Faithfulness` fed by the split's box pass (`checks_pass`), with --faithfulness."""
    localizer = localizer or default_localizer(model)
    metrics, details = {}, {}
    if faithfulness is not None:
        faithfulness.all_reduce()
        metrics.update(faithfulness.compute())
        details["perturbation"] = faithfulness.perturbation
    if args.sanity:
        batch = spread_batch(build_dataset(cfg, split, train=False), args.sanity_images)
        images = normalize_on_device(batch["image"], device)
        result = cascade(model, localizer, images, batch["label"].to(device), dtype, args.sanity_seed,
                         args.sanity_depth)
        metrics.update(summary(result))
        details["cascade"] = {**result, "images": images.cpu(), "boxes": [b.numpy() for b in batch["boxes"]]}
    return metrics, details


def faithfulness_of(model, localizer, dtype, args):
    """A `Faithfulness` to feed to a split's box pass (`accumulate_split`'s on_batch) when
    --faithfulness is asked for, else None."""
    if not args.faithfulness:
        return None
    return Faithfulness(model, localizer or default_localizer(unwrap(model)), dtype, args.pointing_tolerance,
                        args.perturbation_steps, args.perturbation_baseline, args.perturbation_chunk)


def check_run(run: Path, checkpoint: str) -> None:
    """A run folder with config.toml and the checkpoint asked for (last, best or a file), or one line."""
    if not (run / "config.toml").is_file():
        what = "no such folder" if not run.exists() else "no config.toml in it"
        cli.fail(f"error: {run} is not a run folder of python -m acol.train ({what})")
    if checkpoint in ("last", "best"):
        if not (run / "checkpoints" / f"{checkpoint}.pt").is_file():
            there = sorted(p.stem for p in (run / "checkpoints").glob("*.pt"))
            cli.fail(f"error: {run} has no checkpoints/{checkpoint}.pt (an unfinished run?); checkpoints there: "
                     f"{', '.join(there) or 'none'}")
    elif not Path(checkpoint).is_file():
        cli.fail(f"error: --checkpoint {checkpoint!r} is not last, best or a checkpoint file")


def run_config(run: Path, overrides=()):
    """The config of a training run folder with `overrides` applied."""
    # config.toml holds absolute paths; one saved before they were holds paths relative to where it ran
    return load_config(run / "config.toml", list(overrides), paths_from=Path.cwd())


def load_run(run: Path, checkpoint: str = "last", overrides=(), describe: bool = False) -> tuple:
    """(cfg, model with the checkpoint's weights, device, autocast dtype) of a training run.
    checkpoint: "last", "best" or a path. `describe`: say (stdout) which epoch and step the weights are
    of, and whether the run has finished."""
    cfg = run_config(run, overrides)
    cli.check_device(cfg.train.device)
    cli.set_threads(cfg.train.threads)
    device = dist.init_distributed(dist.device_type(cfg.train.device))  # under torchrun: this rank's device
    path = run / "checkpoints" / f"{checkpoint}.pt" if checkpoint in ("last", "best") else Path(checkpoint)
    if not cfg.model.num_classes and not (run / "meta.json").is_file():
        cli.fail(f"error: {run} has no meta.json (it records the number of classes); set model.num_classes=N")
    num_classes = cfg.model.num_classes or json.loads((run / "meta.json").read_text())["num_classes"]
    untrained = copy.deepcopy(cfg)  # the checkpoint holds every weight: no pretrained file or download needed
    untrained.model.pretrained, untrained.model.pretrained_classifier = "", False
    model = build_model(untrained, num_classes).to(device)
    try:
        state = load_checkpoint(path)
        load_weights(model, state, path, f"the {cfg.model.name} / {cfg.model.backbone} model of {run}")
    except CheckpointError as e:
        cli.fail(f"error: {e}")
    if describe and dist.is_main_process() and "step" in state:
        batches = f" and {state['batch']} batches of the next" if state.get("batch") else ""
        unfinished = "" if (run / "results.json").is_file() else " (the run has not finished: no results.json)"
        print(f"weights: {path}, after epoch {state['epoch']}{batches}, step {state['step']}{unfinished}", flush=True)
    return cfg, model, device, amp_dtype(cfg.train.amp, device)


def evaluate_run(args, out: Path) -> tuple[dict, BoxEvaluator, float, dict]:
    cfg, model, device, dtype = load_run(args.run, args.checkpoint, args.overrides, describe=True)
    localizer = (build_localizer(args.localizer, args.target, args.layer, **args.localizer_options.get(args.localizer, {}))
                 if args.localizer else None)
    if args.localizer and args.localizer not in model.localizers:
        cli.fail(f"error: localizer {args.localizer!r} does not apply to the {cfg.model.name} model of {args.run}; "
                 f"its localizers: {', '.join(model.localizers)}")
    layers = [name for name, _ in model.named_modules() if name]
    if args.layer and args.layer not in layers:
        shallow = [name for name in layers if name.count(".") < 2]
        cli.fail(f"error: --layer {args.layer!r} is not a layer of the {cfg.model.name} model (default: "
                 f"{getattr(model, 'default_cam_layer', None)}); its layers include {', '.join(shallow)}")

    def run_split(split: str, on_batch=None):
        dataset = build_dataset(cfg, split, train=False)
        return accumulate_split(model, build_loader(cfg, dataset, train=False), device, dtype, cfg,
                                out / "scoremaps" if args.save_scoremaps else None, localizer,
                                desc=f"{args.localizer or 'own map'} {split}", on_batch=on_batch)

    threshold = args.threshold
    if threshold is None and args.split != "val":
        threshold = run_split("val")[0].compute().get("best_cam_threshold")
    faithfulness = faithfulness_of(model, localizer, dtype, args)
    boxes_eval, masks_eval = run_split(args.split, faithfulness)
    metrics = split_metrics(model.classifies, boxes_eval, masks_eval, threshold)
    details = {}
    if args.faithfulness or args.sanity:
        checks, details = map_checks(model, cfg, device, dtype, localizer, args.split, args, faithfulness)
        metrics.update(checks)
        if "cascade" in details:
            metrics["randomization"] = {k: details["cascade"][k] for k in ("groups", "spearman", "ssim")}
    return metrics, boxes_eval, cfg.eval.fixed_threshold, details


def baseline_split(name: str, cfg, split: str,
                   per_image: bool = False) -> tuple[BoxEvaluator, MaskEvaluator | None, list[str]]:
    """(box evaluator, mask evaluator or None, the image ids in accumulation order) of the baseline map
    `name` on `split` of `cfg`'s data set (`accumulate_baseline`)."""
    loader = build_loader(cfg, build_dataset(cfg, split, train=False), train=False)
    return (*accumulate_baseline(name, loader, cfg, f"{name} {split}", per_image), loader.dataset.meta.image_ids)


def baseline_config(args):
    """The config of `--baseline`: --config (or the defaults), then --dataset / --metadata-root / --data-root
    as data.dataset / data.metadata_root / data.root, then the overrides; the synthetic benchmark is
    generated when missing (as training does)."""
    named = [f"data.{key}={toml_value(value)}" for key, value in
             (("dataset", args.dataset), ("metadata_root", args.metadata_root), ("root", args.data_root)) if value]
    cfg = load_config(args.config, named + args.overrides)
    prepare_data(cfg)
    return cfg


def baseline_result(name: str, cfg) -> tuple[dict, dict]:
    """The baseline map `name` on `cfg`'s val (which chooses the box threshold) and test splits, as a
    comparison row: ({"baseline": name, "val": metrics, "test": metrics at val's threshold, "test_curves":
    BoxAcc vs threshold}, the test split's per-image records with their image ids, without classification
    hits: `run_records`)."""
    val = split_metrics(False, *baseline_split(name, cfg, "val")[:2])
    threshold = val.get("best_cam_threshold")
    boxes_eval, masks_eval, image_ids = baseline_split(name, cfg, "test", per_image=True)
    record = {"baseline": name, "val": val, "test": split_metrics(False, boxes_eval, masks_eval, threshold),
              "test_curves": {k: v.tolist() for k, v in boxes_eval.box_acc_curves().items()}}
    return record, run_records(boxes_eval, masks_eval, threshold, image_ids, classifies=False)


def evaluate_baseline(args) -> tuple[dict, BoxEvaluator, float, object]:
    """(metrics, box evaluator, fixed threshold, cfg) of `--baseline` on `--split` (val first, to choose the
    @val threshold, unless --threshold gives it or the split is val)."""
    cfg = baseline_config(args)
    threshold = args.threshold
    if threshold is None and args.split != "val":
        threshold = split_metrics(False, *baseline_split(args.baseline, cfg, "val")[:2]).get("best_cam_threshold")
    boxes_eval, masks_eval, _ = baseline_split(args.baseline, cfg, args.split)
    return split_metrics(False, boxes_eval, masks_eval, threshold), boxes_eval, cfg.eval.fixed_threshold, cfg


def find_scoremap(root: Path, image_id: str) -> tuple[Path, bool]:
    """(file of `image_id`'s map, whether the other form exists too): wsolevaluation's
    `<root>/<image_id>.npy` (extension kept) when it exists, else the extension-stripped
    `<root>/<image_id without extension>.npy`; FileNotFoundError naming both when neither exists."""
    tried = list(dict.fromkeys([scoremap_file(root, image_id), stripped_scoremap_file(root, image_id)]))
    found = [path for path in tried if path.is_file()]
    if not found:
        raise FileNotFoundError(f"score map not found for {image_id!r}: tried {' and '.join(map(str, tried))}")
    return found[0], len(found) > 1


def majority_shape(paths: list[Path]) -> tuple[tuple[int, int] | None, str]:
    """(the shape most of the 2-D maps at `paths` have, read from their .npy headers, or None; the
    evidence for an error message: "the shape of N of the M maps, e.g. FILE"). Unreadable files are
    skipped here (`load_scoremap` names them)."""
    shapes: dict[tuple, list[Path]] = {}
    for path in paths:
        try:
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        except (ValueError, OSError, EOFError, AttributeError):
            continue
        if len(shape) == 2:
            shapes.setdefault(shape, []).append(path)
    if not shapes:
        return None, ""
    shape, having = max(shapes.items(), key=lambda item: len(item[1]))
    return shape, f"the shape of {len(having)} of the {len(paths)} maps, e.g. {having[0]}"


def load_scoremap(path: Path, shape: tuple[int, int] | None = None, evidence: str = "") -> np.ndarray:
    """A wsolevaluation score map: 2-D float in [0, 1], of `shape` (H, W) when it is given (`evidence`:
    where that shape comes from, for the message); anything else is an error naming the file. float64 maps stay float64 (wsolevaluation evaluates in float64: its
    inference saves float64 maps and its evaluation casts what it loads to float64), others become
    float32 (for float32 maps the uint8 cut `int(map * 255)` is the same in either precision)."""
    if not path.is_file():
        raise FileNotFoundError(f"score map not found: {path}")
    try:
        scoremap = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        if "Object arrays" in str(e):
            raise ValueError(f"{path}: a score map must be a 2-D float array; got Python objects (dtype object)") from None
        raise ValueError(f"{path}: not a readable .npy score map ({e})") from None
    if not isinstance(scoremap, np.ndarray):
        raise ValueError(f"{path}: a score map must be one .npy array, not an .npz archive")
    if scoremap.ndim != 2 or not np.issubdtype(scoremap.dtype, np.floating):
        raise ValueError(f"{path}: a score map must be a 2-D float array; got {scoremap.dtype} {scoremap.shape}")
    if shape is not None and scoremap.shape != tuple(shape):
        raise ValueError(f"{path}: the score map's shape is {scoremap.shape}, expected {tuple(shape)}"
                         + (f" ({evidence})" if evidence else ""))
    finite = np.isfinite(scoremap)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise ValueError(f"{path}: score map values must lie in [0, 1]; it has NaN or infinite values "
                         f"({np.isnan(scoremap).sum()} NaN, {np.isinf(scoremap).sum()} inf; the first at row {row}, "
                         f"column {col})")
    if scoremap.min() < 0 or scoremap.max() > 1:
        raise ValueError(f"{path}: score map values must lie in [0, 1] "
                         f"(min {scoremap.min():.4g}, max {scoremap.max():.4g})")
    return scoremap if scoremap.dtype == np.float64 else scoremap.astype(np.float32)


def evaluate_scoremaps(args, split: str, threshold: float | None) -> tuple[dict, BoxEvaluator, float]:
    """One split of a score-map folder; `threshold` (chosen elsewhere) is reported as @val."""
    if not args.dataset:
        cli.fail("error: --scoremaps needs --dataset (the metadata folder's name, e.g. CUB)")
    cfg = load_config(overrides=args.overrides)
    meta = read_metadata(args.metadata_root or "data/metadata", args.dataset, split)
    boxes_eval = BoxEvaluator(cfg.eval.cam_curve_interval, tuple(cfg.eval.iou_thresholds), cfg.eval.fixed_threshold)
    masks_eval = MaskEvaluator(cfg.eval.cam_curve_interval) if meta.masks else None
    no = np.zeros(1, bool)
    try:
        found = {image_id: find_scoremap(args.scoremaps, image_id) for image_id in meta.image_ids}
    except FileNotFoundError as e:
        cli.fail(f"error: {e}")
    # every map of a split has one shape (the network input size): the one most of them have
    shape, evidence = majority_shape([path for path, _ in found.values()])
    both = [image_id for image_id, (_, other_too) in found.items() if other_too]  # the wsolevaluation form is read
    for image_id, (path, _) in found.items():
        try:
            scoremap = load_scoremap(path, shape, evidence)
        except (FileNotFoundError, ValueError) as e:
            cli.fail(f"error: {e}")
        height, width = scoremap.shape
        if image_id in meta.boxes:
            if image_id not in meta.sizes:
                cli.fail(f"data error: {meta.split_dir / 'image_sizes.txt'}: no size for {image_id!r}, needed to "
                         "rescale its boxes to the score map")
            boxes = scale_boxes(torch.tensor(meta.boxes[image_id]), meta.sizes[image_id], (width, height))
            boxes_eval.accumulate(scoremap[None], [boxes.numpy()], no, no)
        if masks_eval is not None:
            image_root = Path(args.data_root or "data") / args.dataset
            masks = [load_mask(image_root / rel).numpy() for rel in meta.masks.get(image_id, [])]
            fg = np.zeros((height, width), bool)
            for m in masks:
                fg |= cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
            ignore = np.zeros_like(fg)
            if image_id in meta.ignore:
                ig = load_mask(image_root / meta.ignore[image_id]).numpy()
                ignore = cv2.resize(ig, (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
            masks_eval.accumulate(scoremap[None], fg[None], ignore[None])
    if both:
        pair = scoremap_file(args.scoremaps, both[0]), stripped_scoremap_file(args.scoremaps, both[0])
        print(f"note: {len(both)} {split} images have a map in both forms (e.g. {pair[0]} and {pair[1]}); "
              "the <image_id>.npy ones (wsolevaluation's) were read")
    metrics = {}
    if int(boxes_eval.state["num_boxed"]):
        metrics = localization_only(boxes_eval.compute(threshold))
    if masks_eval is not None:
        metrics.update(masks_eval.compute())
    return metrics, boxes_eval, cfg.eval.fixed_threshold


def evaluate_scoremap_splits(args, splits: list[str]) -> tuple[list[tuple[str, dict, BoxEvaluator]], float]:
    """([(split, metrics, evaluator) of each split], fixed threshold); with several, the first split's best
    box threshold (its @oracle, as a run's val chooses it) is reported as @val on the others."""
    if len(splits) > 1 and args.threshold is not None:
        cli.fail(f"error: --split {args.split} chooses the threshold on {splits[0]}; leave out --threshold")
    results, threshold = [], args.threshold
    for i, split in enumerate(splits):
        metrics, boxes_eval, fixed = evaluate_scoremaps(args, split, threshold)
        results.append((split, metrics, boxes_eval))
        if i == 0 and len(splits) > 1:
            threshold = metrics.get("best_cam_threshold")
    return results, fixed


def write_curves(boxes_eval: BoxEvaluator, metrics: dict, split: str, out: Path, tracker: Tracker) -> None:
    """BoxAcc vs threshold (V2 at each IoU, V1 GT-known) as a PNG and in TensorBoard (`out` is its own run):
    `z_eval/<split>/threshold_x1000/<curve>` scalars (step: threshold x 1000), the PNG, the metrics as text."""
    curves = boxes_eval.box_acc_curves()
    lines = {f"IoU {d}": curves[f"box_acc_iou{d}"] for d in boxes_eval.iou_thresholds}
    lines["GT-known (V1)"] = curves["gt_known"]
    marks = {"fixed": metrics["fixed_cam_threshold"], "oracle": metrics["best_cam_threshold"]}
    if "val_cam_threshold" in metrics:
        marks["val"] = metrics["val_cam_threshold"]
    image = plot_curves(curves["thresholds"], lines, marks, f"BoxAcc vs box threshold ({split})")
    write_png(out / f"curves_{split}.png", image)
    tracker.curves(f"z_eval/{split}/", curves)
    tracker.image(f"z_eval/{split}/box_acc_curves", image, 0)
    note = f"Curves `z_eval/{split}/threshold_x1000/<curve>`: {THRESHOLD_AXIS}."
    tracker.text(f"z_eval/{split}/metrics",
                 f"{format_table([(split, metrics)])}\n\n{threshold_line(metrics, marks['fixed'])}\n\n{note}")


def write_png(path: Path, image_rgb: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))


PERTURBATION_AXIS = ("x axis: the fraction of pixels deleted / inserted x 1000 (highest-ranked first); y axis: "
                     "the softmax probability of the target class in %")
RANDOMIZATION_AXIS = ("x axis: the cascade steps, top (logits side) first, 0 = the trained model; y axis: "
                      "similarity with the trained model's maps (mean over images)")


def write_perturbation(perturbation: DeletionInsertion, split: str, out: Path, tracker: Tracker, title: str) -> None:
    """The mean deletion / insertion curves: `<out>/deletion_insertion_<split>.png` and TensorBoard
    `z_eval/<split>/removed_x1000/{deletion,insertion}` (step: fraction x 1000) plus the image."""
    curves = perturbation.mean_curves()
    lines = {mode: curves[mode] for mode in ("deletion", "insertion")}
    image = plot_curves(curves["fraction"], lines, {}, f"deletion / insertion ({title})",
                        xlabel="fraction of pixels deleted / inserted")
    write_png(out / f"deletion_insertion_{split}.png", image)
    for i, fraction in enumerate(curves["fraction"]):
        tracker.scalars({f"z_eval/{split}/removed_x1000/{mode}": float(v[i]) for mode, v in lines.items()},
                        step=int(round(fraction * 1000)), description=PERTURBATION_AXIS)
    tracker.image(f"z_eval/{split}/deletion_insertion", image, 0)


def write_cascade(result: dict, split: str, out: Path, tracker: Tracker, title: str) -> None:
    """The randomization cascade: `<out>/randomization_<split>.png` (Spearman and SSIM vs step),
    `<out>/randomization_maps_<split>.png` (maps per step) and TensorBoard
    `z_eval/<split>/randomization/{spearman,ssim}` (step: the cascade step) plus both images."""
    plot = cascade_plot({title: result}, split)
    grid = cascade_grid(result["images"], result["boxes"], result)
    write_png(out / f"randomization_{split}.png", plot)
    write_png(out / f"randomization_maps_{split}.png", grid)
    for step, values in enumerate(zip([1.0, *result["spearman"]], [1.0, *result["ssim"]])):
        tracker.scalars(dict(zip((f"z_eval/{split}/randomization/spearman", f"z_eval/{split}/randomization/ssim"),
                                 values)), step=step, description=RANDOMIZATION_AXIS)
    tracker.image(f"z_eval/{split}/randomization", plot, 0)
    tracker.image(f"z_eval/{split}/randomization_maps", grid, 0)


def run_eval_folder(args: argparse.Namespace) -> Path:
    """The default output folder of --run: <run>/eval for the model's own map of the last checkpoint for
    the GT class; another map, layer, target, checkpoint or localizer option gets a subfolder naming
    them (e.g. eval/gradcam-head_a.3-pred-best), so that evaluations of one run never overwrite each other."""
    options = args.localizer_options.get(args.localizer, {}) if args.localizer else {}
    parts = [args.localizer or "", args.layer or "", "pred" if args.target == "pred" else "",
             "" if args.checkpoint == "last" else Path(args.checkpoint).stem,
             *(f"{key}={value}" for key, value in sorted(options.items()))]
    name = "-".join(part for part in parts if part)
    return args.run / "eval" / name if name else args.run / "eval"


def main(argv=None) -> dict:
    """Under `torchrun` (--run only) every rank evaluates its shard, counts are summed, rank 0 writes."""
    args = parse_args(argv)
    if args.run:
        check_run(args.run, args.checkpoint)
    elif args.scoremaps and not args.scoremaps.is_dir():
        cli.fail(f"error: --scoremaps {args.scoremaps}: no such folder")
    if args.config and not args.config.is_file():
        cli.fail(f"error: --config {args.config}: no such file")
    out = args.out or (run_eval_folder(args) if args.run else
                       args.scoremaps.with_name(args.scoremaps.name + "_eval") if args.scoremaps else None)
    splits = args.split.split(",")
    if not args.scoremaps and len(splits) > 1:
        cli.fail(f"error: --split {args.split}: a split list is for --scoremaps; with --run or --baseline, a "
                 "split other than val is reported at val's threshold already")
    try:
        details = {}
        if args.run:
            metrics, boxes_eval, fixed, details = evaluate_run(args, out)
            results = [(args.split, metrics, boxes_eval)]
        elif args.baseline:
            metrics, boxes_eval, fixed, cfg = evaluate_baseline(args)
            results = [(args.split, metrics, boxes_eval)]
            folder = f"{cfg.data.dataset}_{args.baseline}_{cfg.data.crop_size}px"  # the maps depend on the input size
            out = out or Path(cfg.log.runs_dir) / "baselines" / folder
        else:
            results, fixed = evaluate_scoremap_splits(args, splits)
    except ConfigError as e:
        cli.fail(f"config error: {e}")
    except MetadataError as e:
        cli.fail(f"data error: {e}")
    except UnknownNameError as e:
        cli.fail(f"error: {e}")
    except ImageError as e:  # raised here or in a DataLoader worker
        cli.fail(f"data error: {worker_error_line(e)}")
    by_split = {split: metrics for split, metrics, _ in results}
    returned = by_split if len(by_split) > 1 else results[0][1]
    if not dist.is_main_process():
        dist.cleanup()
        return returned
    out.mkdir(parents=True, exist_ok=True)
    (out / f"eval_{'_'.join(by_split)}.json").write_text(json.dumps(returned, indent=2))
    boxed = [(split, metrics, boxes_eval) for split, metrics, boxes_eval in results if int(boxes_eval.state["num_boxed"])]
    tracker = Tracker(out, enabled=True) if boxed or details else None
    for split, metrics, boxes_eval in boxed:
        write_curves(boxes_eval, metrics, split, out, tracker)
    title = args.localizer or args.baseline or "own map"
    if "perturbation" in details:
        write_perturbation(details["perturbation"], args.split, out, tracker, title)
    if "cascade" in details:
        write_cascade(details["cascade"], args.split, out, tracker, title)
    if tracker is not None:
        tracker.close()
    for split, metrics, _ in results:
        print(f"{split}: " * (len(results) > 1) + threshold_line(metrics, fixed))
    print(format_table([(split, metrics) for split, metrics, _ in results]))
    print(f"written to {out}")
    dist.cleanup()
    return returned


if __name__ == "__main__":
    cli.run_command(main)
