"""Train a WSOL model: `python -m acol.train --config experiments/X.toml [key=value ...]`.

The same command again, once the run has finished, prints its results table and does nothing else;
a run folder without results.json (an interrupted run) is continued with `--resume auto`.

The same command runs on one process or under `torchrun --nproc-per-node=N` (DDP). The run
directory `<log.runs_dir>/<name>/` gets config.toml (re-runnable), meta.json, log.txt,
metrics.jsonl, TensorBoard events, checkpoints/{last,best}.pt and results.json.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import platform
import random
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from acol import cli, dist
from acol.config import Config, ConfigError, flatten, load_config, locate, to_dict, to_toml
from acol.datasets.dataset import build_dataset, build_loader
from acol.datasets.check import check_data
from acol.datasets.metadata import MetadataError, check_labels
from acol.datasets.synthetic import ensure_synthetic
from acol.engine import (NonFiniteLossError, amp_dtype, build_optimizer, evaluate, grad_scaler, load_checkpoint,
                         rng_state, save_checkpoint, set_rng_state, train_one_epoch, unwrap)
from acol.evaluation.report import SUMMARY, format_table, threshold_line
from acol.methods import build_method
from acol.schedule import build_schedule
from acol.tracking import Tracker, setup_logging
from acol.visualize import heatmap_strips

HPARAM_METRICS = ("top1_cls", "top1_loc@val", "gt_known_loc@val", "maxboxacc_v2", "pxap")  # test, in HParams
FINAL_TEST = "the test split after training (@val: at the box threshold chosen on val), written once at the last step"


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
    `<first characters>~<8 hex digits of the whole name's SHA-1>-s<seed>`."""
    name = locate(config_path, Path()).stem if config_path else "default"
    extra = [o for o in overrides if not o.startswith("train.seed=")]
    if extra:
        name += "+" + ",".join(extra)
    name = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)
    if len(name) > MAX_NAME:
        name = name[:MAX_NAME - 9] + "~" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name}-s{seed}"


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=10,
                               cwd=Path(__file__).resolve().parent).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT arrived; a checkpoint of the state after `step` was written."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"signal {signum} at step {step}")
        self.signum, self.step = signum, step


class StopRequest:
    """Catches SIGTERM and SIGINT while installed: the training loop finishes its step, writes a
    checkpoint and exits (128 + the signal), instead of dying mid-write."""

    signum: int | None = None

    def __call__(self, signum, frame) -> None:
        self.signum = signum

    @contextlib.contextmanager
    def installed(self):
        previous = {s: signal.signal(s, self) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and torch in this process with `seed + rank` (ranks draw different
    augmentations); deterministic mode also asks torch for deterministic kernels."""
    seed += dist.get_rank()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
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


def config_changes(saved_toml: str, cfg: Config) -> list[str]:
    """`key: saved -> now` for each config value that differs between a run's config.toml and `cfg`."""
    def leaves(node: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in node.items():
            out |= leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
        return out

    saved, now = leaves(tomllib.loads(saved_toml)), leaves(tomllib.loads(to_toml(cfg)))
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in {**saved, **now} if saved.get(k) != now.get(k)]


def show_finished(cfg: Config, run_dir: Path) -> dict:
    """The same command once its run has finished: the run's results table again, and how to start
    another run. A finished run of another config under this name is refused."""
    saved = run_dir / "config.toml"
    changes = config_changes(saved.read_text(), cfg) if saved.is_file() else []
    if changes:
        cli.fail(f"error: {run_dir} holds a finished run of another config ({'; '.join(changes[:3])}"
                 f"{'; ...' if len(changes) > 3 else ''}): pass --name NEW to train this one")
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


def main(argv=None) -> dict:
    args = parse_args(argv)
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

    device = dist.init_distributed(dist.device_type(cfg.train.device))
    world, main_process = dist.get_world_size(), dist.is_main_process()
    name = args.name or default_run_name(args.config, args.overrides, cfg.train.seed)
    run_dir = Path(cfg.log.runs_dir) / name
    resume_path = None
    if args.resume == "auto":
        last = run_dir / "checkpoints" / "last.pt"
        resume_path = last if last.is_file() else None
    elif args.resume:
        resume_path = Path(args.resume)
        if not resume_path.is_file():
            cli.fail(f"error: --resume {args.resume!r} is neither 'auto' nor a checkpoint file")
    elif (run_dir / "results.json").is_file():
        results = show_finished(cfg, run_dir)
        dist.cleanup()
        return results
    elif run_dir.exists() and any(run_dir.iterdir()):
        cli.fail(f"error: run folder {run_dir} exists without results.json (an unfinished run): continue it "
                 "with --resume auto, or pass --name NEW to start another")
    if cfg.train.sync_bn and device.type != "cuda":
        cli.fail("config error: train.sync_bn needs CUDA devices (SyncBatchNorm has no CPU kernel); "
                 "set train.sync_bn=false for CPU runs")
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    dtype = amp_dtype(cfg.train.amp, device)
    prepare_data(cfg)
    try:
        train_set, val_set, test_set = (build_dataset(cfg, split, train=split == "train")
                                        for split in ("train", "val", "test"))
        num_classes = cfg.model.num_classes or train_set.meta.num_classes
        check_labels(train_set.meta, (val_set.meta, test_set.meta), num_classes)
    except MetadataError as e:
        cli.fail(f"data error: {e} (data.metadata_root={cfg.data.metadata_root}, data.dataset={cfg.data.dataset})")
    check_files((train_set, val_set, test_set))
    train_loader = build_loader(cfg, train_set, train=True, seed=cfg.train.seed)
    try:
        schedule = build_schedule(cfg, steps_per_epoch=len(train_loader))
    except ValueError as e:
        cli.fail(f"config error: {e}")
    dist.barrier()  # every rank has looked at the run directory before rank 0 writes into it
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    logger = setup_logging(run_dir if main_process else None, main_process)
    val_loader = build_loader(cfg, val_set, train=False)
    test_loader = build_loader(cfg, test_set, train=False)

    method = build_method(cfg, num_classes)
    model = method.model().to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if world > 1:
        if cfg.train.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(model, cfg)
    scaler = grad_scaler(device, dtype)
    base_lrs = [group["lr"] for group in optimizer.param_groups]  # the schedule scales these (acol/schedule.py)

    start_epoch, skip, step, best = 0, 0, 0, {"metric": cfg.eval.best_metric, "value": -1.0, "epoch": -1}
    if resume_path is not None:
        try:
            ckpt = load_checkpoint(resume_path)
        except (FileNotFoundError, RuntimeError) as e:
            cli.fail(f"cannot resume: {e}")
        unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt.get("scaler", {}))
        start_epoch, skip, step, best = ckpt["epoch"], ckpt.get("batch", 0), ckpt["step"], ckpt["best"]
        set_rng_state(ckpt["rng"])
        logger.info(f"resumed from {resume_path} at epoch {start_epoch + (skip > 0)}, step {step}"
                    + (f" (batch {skip} of the epoch)" if skip else ""))

    tracker = Tracker(run_dir, main_process, purge_step=step if resume_path else None)
    if main_process:
        (run_dir / "config.toml").write_text(to_toml(cfg))
        meta = {"argv": sys.argv, "git": git_sha(), "torch": torch.__version__, "python": platform.python_version(),
                "host": platform.node(), "device": str(device), "threads": torch.get_num_threads(), "world_size": world,
                "per_process_batch": cfg.train.global_batch_size // world, "seed": cfg.train.seed,
                "amp": str(dtype), "num_classes": num_classes, "start_time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "resumed_from": str(resume_path) if resume_path else None}
        if resume_path and (run_dir / "meta.json").is_file():  # keep the first start's record
            meta = json.loads((run_dir / "meta.json").read_text()) | {"last_resume": meta}
        (run_dir / "meta.json").write_text(json.dumps(meta, indent=2))
        tracker.text("config", "```toml\n" + to_toml(cfg) + "\n```\n\ngit: " + git_sha())
    logger.info(f"run {run_dir}: {cfg.model.name} on {cfg.model.backbone}, {num_classes} classes, "
                f"{len(train_set)} train / {len(val_set)} val / {len(test_set)} test images, "
                f"device {device} x{world} ({torch.get_num_threads()} CPU threads), amp {dtype}")

    runner = torch.compile(model) if cfg.train.compile else model  # the training forward; evaluation uses `model`
    vis_indices = np.linspace(0, len(val_set) - 1, min(cfg.log.vis_num, len(val_set))).astype(int).tolist()
    last_path = run_dir / "checkpoints" / "last.pt"

    def checkpoint(epochs_done: int, batches: int, step: int, best: dict, also_best: bool = False) -> None:
        """checkpoints/last.pt (and best.pt): everything a resume needs; `batches` > 0 mid-epoch."""
        if not main_process:
            return
        state = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict(), "epoch": epochs_done,
                 "batch": batches, "step": step, "best": best, "config": to_dict(cfg), "rng": rng_state()}
        if also_best:
            save_checkpoint(run_dir / "checkpoints" / "best.pt", state)
        save_checkpoint(last_path, state)

    if main_process:  # a process killed while writing (SIGKILL, power loss) leaves its temporary file
        for stale in (run_dir / "checkpoints").glob(".*.pt.tmp*"):
            stale.unlink()
    stop = StopRequest()
    val_metrics: dict = {}
    epochs_done = start_epoch
    with stop.installed():
        for epoch in range(start_epoch, cfg.train.epochs):
            def after_step(step: int, batches: int, epoch: int = epoch) -> None:
                every = cfg.train.checkpoint_every_steps
                if dist.any_rank(stop.signum is not None):
                    checkpoint(epoch, batches, step, best)
                    raise TrainingInterrupted(stop.signum or signal.SIGTERM, step)
                if every and step % every == 0:
                    checkpoint(epoch, batches, step, best)

            skip_now = skip if epoch == start_epoch else 0
            try:
                step = train_one_epoch(runner, train_loader, optimizer, scaler, device, dtype, epoch, step, tracker,
                                       cfg, logger, skip=skip_now, after_step=after_step,
                                       transform=method.transform_batch, schedule=schedule, base_lrs=base_lrs)
            except NonFiniteLossError as e:
                kept = f"the last good checkpoint, {last_path}, is kept" if last_path.is_file() else \
                    "no checkpoint had been written yet"
                logger.error(f"stopped: {e}; {kept}")
                sys.exit(f"training stopped: {e}; {kept}. Lower optim.lr, or check the batch's images.")
            except TrainingInterrupted as e:
                logger.info(f"stopped by signal {e.signum} at step {e.step}: checkpoint written to {last_path}; "
                            "continue with --resume auto")
                tracker.close()
                dist.cleanup()
                sys.exit(128 + e.signum)
            epochs_done = epoch + 1
            done = cfg.train.max_steps and step >= cfg.train.max_steps
            last_epoch = epoch + 1 == cfg.train.epochs or done
            if (epoch + 1) % cfg.eval.every == 0 or last_epoch:
                val_metrics = evaluate(model, val_loader, device, dtype, cfg)
                tracker.scalars({f"val/{k}": v for k, v in val_metrics.items()}, step)
                tracker.jsonl({"epoch": epoch + 1, "step": step, "split": "val", **val_metrics})
                evals = (epoch + 1) // cfg.eval.every
                if main_process and (evals % cfg.log.vis_every == 0 or last_epoch):
                    strips = heatmap_strips(model, val_set, vis_indices, device, dtype, cfg.eval.fixed_threshold)
                    for k, strip in enumerate(strips):
                        tracker.image(f"vis/heatmaps/{k}", strip, step)
                logger.info(f"epoch {epoch + 1} val: " + " ".join(
                    f"{k}={val_metrics[k]:.2f}" for k in ("top1_cls", "gt_known_loc@fixed", "maxboxacc_v2", "pxap")
                    if k in val_metrics))
            if val_metrics and cfg.eval.best_metric not in val_metrics:
                cli.fail(f"config error: eval.best_metric={cfg.eval.best_metric!r} is not among the val metrics "
                         f"({', '.join(sorted(val_metrics))}); for a masks-only data set use pxap")
            improved = bool(val_metrics) and val_metrics[cfg.eval.best_metric] > best["value"]
            if improved:
                best = {"metric": cfg.eval.best_metric, "value": val_metrics[cfg.eval.best_metric], "epoch": epoch + 1}
            checkpoint(epochs_done, 0, step, best, also_best=improved)
            tracker.flush()
            if done:
                break
    if stop.signum is not None:  # arrived after the last step: the epoch's checkpoint is written
        logger.info(f"stopped by signal {stop.signum} after the last step; continue with --resume auto")
        sys.exit(128 + stop.signum)

    # Final report: the last model on val (choosing the box threshold) and on test at that threshold.
    if not val_metrics:  # resumed after the last epoch
        val_metrics = evaluate(model, val_loader, device, dtype, cfg)
    test_metrics = evaluate(model, test_loader, device, dtype, cfg, threshold=val_metrics.get("best_cam_threshold"))
    results = {"val": val_metrics, "test": test_metrics, "epoch": epochs_done, "step": step}
    tracker.jsonl({"epoch": epochs_done, "step": step, "split": "test", **test_metrics})
    tracker.scalars({f"z_test/{k}": v for k, v in test_metrics.items()}, step, description=FINAL_TEST)
    tracker.hparams(flatten(cfg), {f"z_test/{k}": f"test {dict(SUMMARY).get(k, k)}" for k in HPARAM_METRICS
                                   if k in test_metrics})
    if main_process:
        (run_dir / "results.json").write_text(json.dumps(results, indent=2))
        print(final_report(cfg, run_dir, results), flush=True)
    tracker.close()
    dist.cleanup()
    return results


if __name__ == "__main__":
    main()
