"""Train a WSOL model: `python -m acol.train --config experiments/X.toml [key=value ...]`.

The same command again, once the run has finished, prints its results table and does nothing else;
a run folder without results.json (an interrupted run) is continued with `--resume auto`.

The same command runs on one process or under `torchrun --nproc-per-node=N` (DDP). The run
directory `<log.runs_dir>/<name>/` gets config.toml (re-runnable), meta.json, log.txt,
metrics.jsonl, TensorBoard events, checkpoints/{last,best}.pt and results.json.
"""
from __future__ import annotations

if __name__ == "__main__":  # python -m acol.train: a signal while torch imports is one line too
    from acol.cli import stop_quietly_during_start_up
    stop_quietly_during_start_up()

import argparse
import contextlib
import errno
import hashlib
import json
import os
import random
import re
import sys
import threading
import tomllib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from acol import cli, dist
from acol.config import Config, ConfigError, load_config, locate, to_toml
from acol.datasets.dataset import build_dataset, build_loader, worker_error_line
from acol.datasets.check import check_data
from acol.datasets.images import ImageError
from acol.datasets.metadata import Metadata, MetadataError, check_disjoint, check_ground_truth, check_labels
from acol.datasets.synthetic import ensure_synthetic
from acol.engine import (CheckpointError, amp_dtype, build_optimizer, check_resumable, evaluate, grad_scaler,
                         load_checkpoint, load_weights, rng_state, train_one_epoch, unwrap)
from acol.evaluation.report import format_table, threshold_line
from acol.methods import METHODS, build_method
from acol.models.backbones import WeightsError
from acol.models.external import BackboneError
from acol.run import Interrupted, Run, Signals, finite_weights, open_run, say
from acol.schedule import build_schedule
from acol.visualize import heatmap_strips

WRITE_ERRNOS = {  # OSErrors of writing the run folder -> what to do (the message names the path and the cause)
    errno.ENOSPC: "free space", errno.EDQUOT: "free space (or raise the quota)",
    errno.EFBIG: "raise the file size limit (ulimit -f)", errno.EROFS: "set log.runs_dir to a writable folder",
    errno.EACCES: "make the folder writable or set log.runs_dir to one that is",
    errno.EPERM: "make the folder writable (an immutable attribute?) or set log.runs_dir to one that is",
    errno.EIO: "check the disk (an I/O error)"}


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.Parser(cli.prog("train"), __doc__, "--config experiments/synthetic_acol.toml train.seed=1")
    p.add_argument("--config", help="experiment TOML file, or acol:NAME for experiments/NAME of acol (defaults "
                                    "apply without one)")
    p.add_argument("--name", help="run name (default: config stem + overrides + seed)")
    p.add_argument("--resume", help="'auto' (the run's checkpoints/last.pt, if any) or a checkpoint path")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--check-data", action="store_true",
                   help="check every split of the configured data set (files, images, metadata): counts, a "
                        "summary of the problems by kind, and exit (1 if there are problems)")
    p.add_argument("--verbose", action="store_true", help="with --check-data: list every problem")
    cli.add_overrides(p, "acol.threshold=0.7")
    args = p.parse_args(argv)
    _, args.overrides = cli.overrides_of(args)
    return args


MAX_NAME = 120  # longer default names are cut and end in a hash of the whole (file names stop at 255 bytes)


def default_run_name(config_path: str | None, overrides: list[str], seed: int) -> str:
    """`<config stem>[+<overrides>]-s<seed>`, filesystem-safe and deterministic; past MAX_NAME characters
    `<first characters>~<8 hex digits of the whole name's SHA-1>-s<seed>`. Overrides of how a run runs
    (`RUN_SETTINGS`: threads, workers, data and log folders, ...) are not in it, so the same experiment
    with other settings (a `--resume auto` with fewer threads, say) is the same run."""
    name = locate(config_path, Path()).stem if config_path else "default"
    extra = [o for o in overrides
             if not o.startswith("train.seed=") and not o.split("=", 1)[0].startswith(RUN_SETTINGS)]
    if extra:
        name += "+" + ",".join(extra)
    name = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)
    if len(name) > MAX_NAME:
        name = name[:MAX_NAME - 9] + "~" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name}-s{seed}"


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and torch in this process with `seed + rank` (ranks draw different
    augmentations); deterministic mode also asks torch for deterministic kernels."""
    seed += dist.get_rank()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for deterministic results
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def prepare_data(cfg: Config) -> None:
    """Generate the synthetic benchmark on the main process if it is missing or stale."""
    if cfg.data.dataset == "SYNTHETIC":
        if dist.is_main_process():
            ensure_synthetic(cfg.data.synthetic, cfg.data.root, cfg.data.metadata_root)
        dist.barrier()


def final_report(cfg: Config, run_dir: Path, results: dict) -> str:
    """The table a run prints at its end: val and test metrics, the box thresholds used."""
    table = format_table([("val", results["val"]), ("test", results["test"])])
    return (f"\n{cfg.model.name} / {cfg.model.backbone} on {cfg.data.dataset} ({run_dir})\n"
            f"{threshold_line(results['test'], cfg.eval.fixed_threshold)}\n{table}\n")


def config_changes(saved_toml: str, cfg: Config) -> dict[str, tuple]:
    """{key: (saved, now)} for each config value that differs between a run's config.toml and `cfg` (a
    key the saved file lacks, added to acol since, counts with its default value)."""
    def leaves(node: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in node.items():
            out |= leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
        return out

    saved, now = leaves(tomllib.loads(saved_toml)), leaves(tomllib.loads(to_toml(cfg, full=True)))
    if now.keys() - saved.keys():  # keys added to acol after the run, or left out: it ran with their defaults
        defaults = leaves(tomllib.loads(to_toml(load_config(overrides=[f"model.name={cfg.model.name}"]), full=True)))
        saved = {k: defaults[k] for k in now.keys() - saved.keys() if k in defaults} | saved
    return {k: (saved.get(k), now.get(k)) for k in {**saved, **now} if saved.get(k) != now.get(k)}


def describe_changes(changes: dict[str, tuple], most: int = 3) -> str:
    """`key: saved -> now; ...` for the first `most` changes."""
    lines = [f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items()]
    return "; ".join(lines[:most]) + ("; ..." if len(lines) > most else "")


# Keys (or prefixes) that say where the data lie and how a run runs and logs, not what it trains; a
# resume may change them, and how long the run trains (RESUME_EXTENDS).
RUN_SETTINGS = ("train.threads", "train.device", "train.compile", "train.checkpoint_every_steps", "data.root",
                "data.metadata_root", "data.num_workers", "data.cache", "eval.batch_size", "eval.every", "log.")
RESUME_EXTENDS = ("train.epochs", "train.max_steps")
RESUME_MAY_CHANGE = (*RESUME_EXTENDS, *RUN_SETTINGS)


def show_finished(cfg: Config, run_dir: Path) -> dict:
    """The same command once its run has finished: the run's results table again, and how to start
    another run. A finished run of another config under this name is refused."""
    saved = run_dir / "config.toml"
    changes = config_changes(saved.read_text(), cfg) if saved.is_file() else {}
    changes = {k: change for k, change in changes.items() if not k.startswith(RUN_SETTINGS)}
    if changes:
        cli.fail(f"error: {run_dir} holds a finished run of another config ({describe_changes(changes)}): pass "
                 "--name NEW to train this one")
    results = json.loads((run_dir / "results.json").read_text())
    if dist.is_main_process():
        print(final_report(cfg, run_dir, results), flush=True)
        print(f"this run has finished ({run_dir / 'results.json'}); to train another, pass --name NEW "
              "(or, without --name, another train.seed=N)", flush=True)
    return results


def check_files(datasets) -> None:
    """Every image and mask listed by the splits' metadata exists (existence only; --check-data decodes)."""
    for dataset in datasets:
        missing = dataset.missing_files()
        if missing:
            listed = dataset.meta.split_dir
            cli.fail(f"data error: {len(missing)} of the files listed in {listed} are missing under "
                     f"{dataset.image_root} (data.root / data.dataset), e.g. {missing[0]}; fix data.root, or "
                     "list every problem with --check-data")


@contextlib.contextmanager
def quiet_thread_write_errors():
    """A write failure (WRITE_ERRNOS) in a background thread (TensorBoard's event writer) prints no
    traceback: the main thread meets it at its next write or flush and says it in one line."""
    previous = threading.excepthook

    def hook(args) -> None:
        if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in WRITE_ERRNOS):
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def main(argv=None) -> dict:
    """Train (see the module docstring). A SIGTERM or SIGINT in any phase ends the command with a line
    saying what was kept and exit status 128 + the signal (0 when the results were already written)."""
    signals = Signals()
    with signals.installed(), quiet_thread_write_errors():
        try:
            return run(parse_args(argv), signals)
        except Interrupted as e:
            with signals.deferred():
                say(f"stopped by signal {e.signum} during {signals.phase}: {signals.note}", signals.logger)
                dist.cleanup()
            sys.exit(128 + e.signum)
        except RuntimeError as e:
            if not dist.peer_ended(e):
                raise
            with signals.deferred():  # this rank's own signal may still be pending: it changes nothing now
                print(f"rank {dist.get_rank()}: stopped: another process of the run ended ({str(e).splitlines()[0]})",
                      file=sys.stderr, flush=True)
            sys.exit(128 + signals.signum if signals.signum else 1)
        except ImageError as e:  # raised here or in a DataLoader worker
            cli.fail(f"data error: {worker_error_line(e)}; the run's checkpoints are kept: fix the file (list every "
                     "problem with --check-data), then run the same command with --resume auto")
        except OSError as e:
            if e.errno not in WRITE_ERRNOS:
                raise
            what = "no space left on device" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror.lower()
            where = os.fsdecode(e.filename) if e.filename else "the run folder"  # TensorBoard's writer gives bytes
            say(f"error: {what} writing {where} (during {signals.phase}); "
                f"{WRITE_ERRNOS[e.errno]}, then run the same command (with --resume auto once a checkpoint exists)",
                signals.logger)
            sys.exit(1)


def load_resume(path: Path, model: nn.Module, cfg: Config) -> dict:
    """The checkpoint at `path`, checked to be a resumable acol checkpoint whose weights fit `model`
    (loaded into it); one line naming the file otherwise."""
    try:
        ckpt = load_checkpoint(path)
        check_resumable(ckpt, path)
        load_weights(unwrap(model), ckpt, path, f"the {cfg.model.name} / {cfg.model.backbone} model")
    except (FileNotFoundError, CheckpointError) as e:
        cli.fail(f"cannot resume: {e}")
    return ckpt


def check_best_metric(metric: str, val: Metadata) -> None:
    """Before any training: the metric that picks best.pt must be one val can give (the box metrics
    need its boxes, PxAP its masks); one line otherwise."""
    need = "masks" if metric.startswith("pxap") else "boxes" if ("box" in metric or "loc" in metric) else None
    if need and not any((val.masks if need == "masks" else val.boxes).values()):
        other, instead = ("boxes", "maxboxacc_v2") if need == "masks" else ("masks", "pxap")
        cli.fail(f"config error: eval.best_metric={metric!r} needs {need} on val, and {val.split_dir} has {other} "
                 f"only; set eval.best_metric={instead}")


def run(args: argparse.Namespace, signals: Signals) -> dict:
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        cli.fail(f"config error: {e}")
    if args.print_config:
        print(to_toml(cfg))
        return {}
    cli.check_device(cfg.train.device)
    cli.set_threads(cfg.train.threads)
    if args.check_data:  # every problem of every split at once, then exit (1 if any)
        prepare_data(cfg)
        sys.exit(1 if check_data(cfg, verbose=args.verbose) else 0)

    # Everything that can be checked is checked before the run folder is created or touched.
    device = dist.init_distributed(dist.device_type(cfg.train.device))
    name = args.name or default_run_name(args.config, args.overrides, cfg.train.seed)
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        cli.fail(f"error: --name {name!r}: a run name is one folder inside log.runs_dir ({cfg.log.runs_dir}): no "
                 "'/', not '.' or '..'")
    run_dir = Path(cfg.log.runs_dir) / name
    if args.resume not in (None, "auto") and not Path(args.resume).is_file():
        cli.fail(f"error: --resume {args.resume!r} is neither 'auto' nor a checkpoint file")
    saved = run_dir / "config.toml"
    changes = config_changes(saved.read_text(), cfg) if args.resume is not None and saved.is_file() else {}
    refused = {k: change for k, change in changes.items() if not k.startswith(RESUME_MAY_CHANGE)}
    if refused:
        cli.fail(f"error: --resume: {run_dir} was trained with another config ({describe_changes(refused)}); "
                 "resume it with its own config.toml, or pass --name NEW to train this one. A resume may change "
                 f"only {', '.join(k.rstrip('.') + ('.*' if k.endswith('.') else '') for k in RESUME_MAY_CHANGE)}")
    # a finished run is reported again, also under --resume unless the config extends it (more epochs or steps)
    report_finished = not any(k in RESUME_EXTENDS for k in changes)
    if report_finished and (run_dir / "results.json").is_file():
        results = show_finished(cfg, run_dir)
        dist.cleanup()
        return results
    if cfg.train.sync_bn and device.type != "cuda":
        cli.fail("config error: train.sync_bn needs CUDA devices (SyncBatchNorm has no CPU kernel); "
                 "set train.sync_bn=false for CPU runs")
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    dtype = amp_dtype(cfg.train.amp, device)
    prepare_data(cfg)
    try:
        train_set = build_dataset(cfg, cfg.data.train_split, train=True,
                                  foreground=METHODS.get(cfg.model.name).trains_on_masks)
        val_set, test_set = (build_dataset(cfg, split, train=False) for split in ("val", "test"))
        num_classes = cfg.model.num_classes or train_set.meta.num_classes
        check_labels(train_set.meta, (val_set.meta, test_set.meta), num_classes)
        check_ground_truth((val_set.meta, test_set.meta))
        if not cfg.data.allow_split_overlap:
            check_disjoint((train_set.meta, val_set.meta, test_set.meta))
    except MetadataError as e:
        cli.fail(f"data error: {e} (data.metadata_root={cfg.data.metadata_root}, data.dataset={cfg.data.dataset})")
    check_files((train_set, val_set, test_set))
    check_best_metric(cfg.eval.best_metric, val_set.meta)
    try:
        train_loader = build_loader(cfg, train_set, train=True, seed=cfg.train.seed)
    except ConfigError as e:
        cli.fail(f"config error: {e}")
    if len(train_loader) == 0:
        cli.fail(f"config error: train.global_batch_size={cfg.train.global_batch_size} exceeds the {len(train_set)} "
                 f"images of the {cfg.data.train_split} split (each epoch drops its last, incomplete batch, so it would "
                 "train nothing); lower it")
    try:
        schedule = build_schedule(cfg, steps_per_epoch=len(train_loader))
    except ValueError as e:
        cli.fail(f"config error: {e}")
    method = build_method(cfg, num_classes)
    try:
        model = method.model().to(device)
    except WeightsError as e:
        cli.fail(f"config error: model.pretrained: {e}")
    except (BackboneError, ConfigError) as e:
        cli.fail(f"config error: {e}")
    ckpt = load_resume(Path(args.resume), model, cfg) if args.resume not in (None, "auto") else None

    with contextlib.ExitStack() as held:
        verdict = open_run(run_dir, args.resume, held, report_finished)
        if verdict == "finished":  # finished while this process was starting
            results = show_finished(cfg, run_dir)
            dist.cleanup()
            return results
        if verdict == "resume" and ckpt is None:
            ckpt = load_resume(run_dir / "checkpoints" / "last.pt", model, cfg)
        resume_path = (Path(args.resume) if args.resume != "auto" else run_dir / "checkpoints" / "last.pt") \
            if ckpt is not None else None
        signals.note = ("the run is as it was; continue it with --resume auto" if ckpt is not None else
                        "nothing was trained; the same command starts again")
        return train_run(cfg, args, signals, run_dir, device, dtype, method, model, ckpt, resume_path,
                         (train_set, val_set, test_set), train_loader, schedule, num_classes)


def train_run(cfg: Config, args, signals: Signals, run_dir: Path, device, dtype, method, model, ckpt,
              resume_path, datasets, train_loader, schedule, num_classes: int) -> dict:
    """The locked run: training epochs, each validated and checkpointed, then the final test."""
    train_set, val_set, test_set = datasets
    run = Run(cfg, run_dir, signals, resume_step=ckpt["step"] if ckpt is not None else None)
    val_loader, test_loader = (build_loader(cfg, split, train=False) for split in (val_set, test_set))
    model = distribute(model, cfg, device)
    optimizer, scaler = build_optimizer(model, cfg), grad_scaler(device, dtype)
    base_lrs = [group["lr"] for group in optimizer.param_groups]  # the schedule scales these (acol/schedule.py)
    run.track(model, optimizer, scaler, train_loader)
    start_epoch, skip, step, best = (run.resume(ckpt, resume_path) if ckpt is not None else
                                     (0, 0, 0, {"metric": cfg.eval.best_metric, "value": -1.0, "epoch": -1}))
    world, threads = dist.get_world_size(), torch.get_num_threads()
    run.record_start({"device": str(device), "threads": threads, "world_size": world,
                      "per_process_batch": cfg.train.global_batch_size // world, "seed": cfg.train.seed,
                      "amp": str(dtype), "num_classes": num_classes,
                      "resumed_from": str(resume_path) if resume_path else None}, resumed=resume_path is not None)
    run.logger.info(f"run {run_dir}: {cfg.model.name} on {cfg.model.backbone}, {num_classes} classes, "
                    f"{len(train_set)} train / {len(val_set)} val / {len(test_set)} test images, "
                    f"device {device} x{world} ({threads} CPU thread{'s' * (threads != 1)}), "
                    f"amp {str(dtype).removeprefix('torch.') if dtype else 'off (float32)'}")
    runner = torch.compile(model) if cfg.train.compile else model  # the training forward; evaluation uses `model`
    val_metrics, epochs_done = {}, start_epoch
    with run.stops_cleanly():
        for epoch in range(start_epoch, cfg.train.epochs):
            run.phase(f"training epoch {epoch + 1}")
            with signals.deferred():  # the loop acts on a signal after its step (Run.after_step)
                step = train_one_epoch(runner, train_loader, optimizer, scaler, device, dtype, epoch, step,
                                       run.tracker, cfg, run.logger, skip=skip if epoch == start_epoch else 0,
                                       after_step=run.after_step(epoch, best), transform=method.transform_batch,
                                       schedule=schedule, base_lrs=base_lrs)
            epochs_done = epoch + 1
            trained_rng = rng_state()  # validation's loader draws from the global RNG; a resume draws again
            done = cfg.train.max_steps and step >= cfg.train.max_steps
            last_epoch = epochs_done == cfg.train.epochs or done
            if epochs_done % cfg.eval.every == 0 or last_epoch:
                val_metrics = validate(run, model, val_loader, val_set, epoch, step, best, trained_rng, last_epoch,
                                       device, dtype)
            improved = bool(val_metrics) and val_metrics[cfg.eval.best_metric] > best["value"]
            if improved:
                best = {"metric": cfg.eval.best_metric, "value": val_metrics[cfg.eval.best_metric],
                        "epoch": epochs_done}
            run.checkpoint(epochs_done, 0, step, best, also_best=improved)
            run.tracker.flush()
            run.phase(f"the end of epoch {epochs_done}",
                      f"its checkpoint is written ({run.last}); continue with --resume auto")
            signals.check()
            run.batches_done = 0
            if done:
                break

    # The final report: the last model on val (choosing the box threshold) and on test at that threshold.
    run.phase("the final test", f"training is complete ({run.last}); --resume auto finishes the report")
    if not val_metrics:  # resumed after the last epoch
        val_metrics = evaluate(model, val_loader, device, dtype, cfg)
    test_metrics = evaluate(model, test_loader, device, dtype, cfg, threshold=val_metrics.get("best_cam_threshold"))
    results = {"val": val_metrics, "test": test_metrics, "epoch": epochs_done, "step": step}
    run.write_results(results, lambda: final_report(cfg, run_dir, results))
    return results


def distribute(model: nn.Module, cfg: Config, device: torch.device) -> nn.Module:
    """The model in train.channels_last memory format, DDP-wrapped (SyncBatchNorm with train.sync_bn) under
    torchrun."""
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if dist.get_world_size() > 1:
        if cfg.train.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def validate(run: Run, model: nn.Module, val_loader, val_set, epoch: int, step: int, best: dict, trained_rng: dict,
             last_epoch: bool, device, dtype) -> dict:
    """Val metrics after `epoch` (0-based), tracked and logged, and the heatmap strips every
    log.vis_every-th validation. A signal here keeps the epoch's training: a checkpoint after its last batch."""
    cfg = run.cfg
    run.phase(f"validation after epoch {epoch + 1}")
    finite_weights(model, step)  # the last step's update: before maps of a broken model
    try:
        run.signals.check()
        metrics = evaluate(model, val_loader, device, dtype, cfg)
        run.tracker.scalars({f"val/{k}": v for k, v in metrics.items()}, step)
        run.tracker.jsonl({"epoch": epoch + 1, "step": step, "split": "val", **metrics})
        if run.main and (((epoch + 1) // cfg.eval.every) % cfg.log.vis_every == 0 or last_epoch):
            vis_indices = np.linspace(0, len(val_set) - 1, min(cfg.log.vis_num, len(val_set))).astype(int).tolist()
            for k, strip in enumerate(heatmap_strips(model, val_set, vis_indices, device, dtype,
                                                     cfg.eval.fixed_threshold)):
                run.tracker.image(f"vis/heatmaps/{k}", strip, step)
    except Interrupted:
        run.checkpoint(epoch, run.batches_done, step, best, rng=trained_rng)
        run.signals.note = f"the epoch's training is saved in {run.last}; --resume auto validates it and goes on"
        raise
    run.logger.info(f"epoch {epoch + 1} val: " + " ".join(
        f"{k}={metrics[k]:.2f}" for k in ("top1_cls", "gt_known_loc@fixed", "maxboxacc_v2", "pxap") if k in metrics))
    if cfg.eval.best_metric not in metrics:
        cli.fail(f"config error: eval.best_metric={cfg.eval.best_metric!r} is not among the val metrics "
                 f"({', '.join(sorted(metrics))}); for a masks-only data set use pxap")
    return metrics


if __name__ == "__main__":
    cli.run_command(main)
